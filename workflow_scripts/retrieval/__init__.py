"""Retrieval: hard-negative mining, FlagEmbedding fine-tunes, teacher scores, MAP@k evaluation (see workflow_scripts/README.md)."""
