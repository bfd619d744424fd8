"""The MLflow screenshot in the docs, from a finished grid's own store, in headless chromium.

    .venv/bin/python docs/screenshot.py --configfile config/idp.yaml

Serves the results folder's store (`mlflow_server.serve`, a free port, stopped after), opens
the runs table at the URL `make run` prints (cli.show.runs_url: the evaluate runs, best first,
with their columns), and writes docs/img/mlflow-<experiment>-runs.png (1600 x 1000). Needs
chromium.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from knowledge_recovery.cli.show import runs_url, screenshot
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.tracking.mlflow_runs import CELLS_VIEW, VIEW, VIEW_TAG
from knowledge_recovery.tracking.mlflow_server import serve

DOCS = Path(__file__).resolve().parent


def main(argv=None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, check_models=False)
    name = config["experiment"]
    out = DOCS / "img"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, \
            serve(Layout(config).root, workers=1, log=Path(scratch) / "server.log") as server:
        client = mlflow.MlflowClient(server.uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            sys.exit(f"no experiment {name!r} in {Layout(config).root}: run the grid first")
        # the view as this code defines it (a store's next logging step would set it too)
        client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, VIEW)
        # the URL `make run` prints: the evaluate runs, best first, with their columns
        print("wrote", screenshot(runs_url(server.uri, experiment.experiment_id, CELLS_VIEW),
                                  out / f"mlflow-{name}-runs.png", Path(scratch) / "profile"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
