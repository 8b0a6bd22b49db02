"""Execution: GPU allocation, out-of-memory retries, code digests (see workflow_scripts/README.md)."""
