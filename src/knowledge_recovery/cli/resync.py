"""Rebuild a grid's MLflow runs from its results folder.

    python -m knowledge_recovery.cli.resync --configfile config.yaml [--dry-run]   (make resync)

Every step writes the record it logs into its manifest. This logs each finished step's record
that the store lacks or holds in another version (a run of an earlier execution, a run cut off
while logging, duplicates), then the grid's summary onto the parent run. The store is
MLFLOW_TRACKING_URI, else the results folder's SQLite file; pointing MLFLOW_TRACKING_URI at
another store copies the grid there. Run it after a tracking outage: a second call changes
nothing. Damaged artifacts are not logged (`make verify`, then `make run`, rebuilds them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from knowledge_recovery.artifacts import read_json
from knowledge_recovery.pipeline import integrity, runlock
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.tracking import mlflow_runs


def records(config: dict) -> tuple[list[dict], dict | None, dict[str, str]]:
    """The step records and the grid record of a results folder, and the jobs left out (why)."""
    steps, grid, left_out = [], None, {}
    for state in integrity.scan(config):
        job = state.job
        if state.status == "absent":
            left_out[job.name] = "not built yet"
        elif state.status == "damaged":
            left_out[job.name] = "damaged: " + "; ".join(state.problems)
        elif job.manifest is not None:
            rec = read_json(job.manifest).get(mlflow_runs.RECORD_KEY)
            if rec is None:
                left_out[job.name] = "built before steps kept their records: re-run the step"
            elif rec["step"] == "aggregate":
                grid = rec
            else:
                steps.append(rec)
    return steps, grid, left_out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, check_models=False)
    root = Layout(config).root
    if runlock.in_use(root):  # its steps are logging: two writers of one key would duplicate
        print(f"error: a run is using {root} ({runlock.owner(root)}); resync when it has ended",
              file=sys.stderr)
        return 2
    steps, grid, left_out = records(config)
    uri = mlflow_runs.tracking_uri(root)
    try:
        outcome = mlflow_runs.resync(root, config["experiment"], steps, grid, dry_run=args.dry_run)
    except Exception as err:  # noqa: BLE001 - one clear line; the traceback says little more
        print(f"error: the MLflow store at {uri} cannot be synced: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 2
    if Path(Layout(config).report).is_file() and not args.dry_run:
        mlflow_runs.log_report(root, config["experiment"], Layout(config).report)
    verb = "would be" if args.dry_run else "were"
    print(f"MLflow store {uri}, experiment '{config['experiment']}':")
    print(f"  {len(outcome['current'])} run(s) already current")
    for what in ("logged", "replaced"):
        print(f"  {len(outcome[what])} run(s) {verb} {what}"
              + "".join(f"\n    {k}" for k in outcome[what]))
    if outcome["not in this grid"]:
        print(f"  {len(outcome['not in this grid'])} step run(s) of jobs not in this config, "
              "left as they are")
    damaged = {k: v for k, v in left_out.items() if v != "not built yet"}
    unbuilt = len(left_out) - len(damaged)
    if unbuilt:
        print(f"  {unbuilt} job(s) not built yet: nothing to log for them")
    for name, why in damaged.items():
        print(f"  not logged: {name}: {why}")
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
