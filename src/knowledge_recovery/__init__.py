"""What compression does to an LLM's knowledge, and what brings it back.

Layers, each a subpackage; imports go down this list, never up:
- `cli`: command-line entry points.
- `pipeline`: config, grid, paths, the job graph, the step wrapper, integrity (no torch at import).
- `analysis`: statistics, summary tables and plots, displacement, representations.
- `evaluation`, `deployment`, `tracking`: scoring with lm-eval, exporting, MLflow.
- `compression`, `recovery`: the methods (one module each, in `methods/`) and what applies them.
- `models`: loading, checkpoints, model structure, timing.
- shared by all: `registry` (method records), `errors`, `artifacts` (files a step writes), `text`.
"""
