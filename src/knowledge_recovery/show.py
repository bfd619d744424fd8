"""Print a finished grid's results table and how to browse it in MLflow.

    python -m knowledge_recovery.show --configfile config.yaml
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import experiment_dir, load_config
from .tracking import tracking_uri


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    root = Path(experiment_dir(config))
    table = root / "summary" / "results.md"
    if not table.exists():
        print(f"No results yet: {table} is missing. Run the workflow first.")
        return 1
    print(table.read_text())
    print(f"Outputs: {root}/ (summary/ has results.csv, results.md, mean_acc.png)")
    print(f"Browse in MLflow:  {Path('.venv/bin/mlflow')} ui --backend-store-uri "
          f"{tracking_uri(root)} --host 127.0.0.1 --port 5000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
