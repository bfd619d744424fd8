"""Print a finished grid's results table and how to browse it in MLflow.

    python -m knowledge_recovery.show --configfile config.yaml
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import load_config
from .paths import Layout
from .tracking import tracking_uri


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
    if experiment is not None:  # MLflow 3 opens an experiment on its GenAI overview, not the runs
        print(f"then open the runs table: http://127.0.0.1:5000/#/experiments/{experiment}/runs")
    return 0


def _experiment_id(root, name: str) -> str | None:
    try:
        import mlflow

        found = mlflow.MlflowClient(tracking_uri(root)).get_experiment_by_name(name)
        return found.experiment_id if found else None
    except Exception:  # noqa: BLE001 - a store that cannot be read: the command above still works
        return None


if __name__ == "__main__":
    raise SystemExit(main())
