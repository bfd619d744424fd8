"""Print a finished grid's results table and how to browse it in MLflow.

    python -m knowledge_recovery.cli.show --configfile config.yaml
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.tracking.mlflow_runs import CELLS_VIEW, tracking_uri


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, check_models=False)
    layout = Layout(config)
    table = Path(layout.summary["markdown"])
    if not table.exists():
        print(f"No results yet: {table} is missing. Run the workflow first.")
        return 1
    print(table.read_text())
    for more in ("comparisons_markdown", "displacement_markdown"):
        if Path(layout.summary[more]).exists():
            print(Path(layout.summary[more]).read_text())
    print(f"Outputs: {layout.root}/ (summary: {', '.join(layout.summary.values())})")
    print(f"Browse in MLflow:  {Path('.venv/bin/mlflow')} ui --backend-store-uri "
          f"{tracking_uri(layout.root)} --host 127.0.0.1 --port 5000")
    experiment = _experiment_id(layout.root, config["experiment"])
    if experiment is not None:
        print(f"then open the runs table: "
              f"{runs_url('http://127.0.0.1:5000', experiment, CELLS_VIEW)}")
    return 0


def runs_url(base: str, experiment: str, view: str | None = None) -> str:
    """The runs table of an experiment in MLflow's model-training view: MLflow 3 (3.17) opens
    its GenAI view unless the URL says `workflowType=machine_learning` or the browser chose
    "Model training" once (the experiment's `mlflow.experimentKind` tag does not switch it).
    `view`: a view the experiment keeps (`tracking.mlflow_runs.CELLS_VIEW`: the evaluate runs,
    best first, with their axes, accuracy interval and cost as columns)."""
    shared = f"viewStateShareKey={view}&" if view else ""
    return f"{base}/#/experiments/{experiment}/runs?{shared}workflowType=machine_learning"


def screenshot(url: str, out: Path, profile: Path, browser: str | None = None,
               size: tuple[int, int] = (1600, 1000)) -> Path:
    """`url` as headless chromium renders it, its JavaScript run, to the PNG `out` (the docs'
    MLflow pictures and the browser test's take the same picture)."""
    import shutil
    import subprocess

    browser = browser or next(filter(None, map(shutil.which, (
        "chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        raise FileNotFoundError("no chromium to take the screenshot with (apt-get install chromium)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                    "--virtual-time-budget=30000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=300)
    return Path(out)


def _experiment_id(root, name: str) -> str | None:
    uri = tracking_uri(root)
    try:
        if uri.startswith("sqlite:///"):  # the local store: one query, without importing MLflow
            import sqlite3

            with contextlib.closing(sqlite3.connect(f"file:{uri[10:]}?mode=ro", uri=True)) as db:
                found = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND "
                                   "lifecycle_stage = 'active'", (name,)).fetchone()
            return str(found[0]) if found else None
        import mlflow

        found = mlflow.MlflowClient(uri).get_experiment_by_name(name)
        return found.experiment_id if found else None
    except Exception:  # noqa: BLE001 - a store that cannot be read: the command above still works
        return None


if __name__ == "__main__":
    raise SystemExit(main())
