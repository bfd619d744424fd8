"""Orchestration: the config and its schema, the grid of cells, where each artifact lives, the
job graph Snakemake runs, the wrapper every step runs in, and what keeps a results folder whole
(integrity checks, the run lock). Imports no torch, transformers or lm-eval at import time, so
that parsing the Snakefile (dry runs, lint, every cluster job) stays light."""
