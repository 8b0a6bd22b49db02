"""Generated data: synthetic rows, dedup, soft labels, label correction, answers and votes (see workflow_scripts/README.md)."""
