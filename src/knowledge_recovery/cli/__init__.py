"""Command-line entry points: `python -m knowledge_recovery.cli.<name>` (the Makefile's targets)."""
