"""The MLflow screenshot in the docs, from a finished grid's own store, in headless chromium.

    .venv/bin/python docs/screenshot.py --configfile config/idp.yaml

Starts `mlflow ui` on the results folder's store (a free port, stopped after), opens the runs
table at the URL `make run` prints (cli.show.runs_url: the evaluate runs, best first, with their
columns), and writes docs/img/mlflow-<experiment>-runs.png (1600 x 1000). Needs chromium.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from knowledge_recovery.cli.show import runs_url
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.tracking.mlflow_runs import CELLS_VIEW, VIEW, VIEW_TAG, tracking_uri
from knowledge_recovery.tracking.mlflow_server import free_port, wait_until_up

DOCS = Path(__file__).resolve().parent


def shoot(browser: str, url: str, out: Path, profile: Path) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", "--window-size=1600,1000",
                    "--virtual-time-budget=30000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=300)
    print(f"wrote {out}")


def main(argv=None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    args = parser.parse_args(argv)
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome"))), None)
    if browser is None:
        sys.exit("no chromium (apt-get install chromium)")
    config = load_config(args.configfile, check_models=False)
    store = tracking_uri(Layout(config).root)
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(config["experiment"])
    if experiment is None:
        sys.exit(f"no experiment {config['experiment']!r} in {store}: run the grid first")
    # the view as this code defines it (a store's next logging step would set it too)
    client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, VIEW)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    out = DOCS / "img"
    out.mkdir(exist_ok=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, proc=ui)
        name = config["experiment"]
        with tempfile.TemporaryDirectory() as profile:
            # the URL `make run` prints: the evaluate runs, best first, with their columns
            shoot(browser, runs_url(base, experiment.experiment_id, CELLS_VIEW),
                  out / f"mlflow-{name}-runs.png", Path(profile))
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
