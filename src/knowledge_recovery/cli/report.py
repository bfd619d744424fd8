"""The grid's Snakemake report, written into the results folder and attached to the parent
MLflow run (`make run` ends with it; `make report` alone):

    python -m knowledge_recovery.cli.report --configfile config.yaml [-- extra snakemake arguments]

The report (`snakemake --report`) holds the captioned tables, plots and readings of
`summary/`, with the job graph and runtimes; it is built from a finished run's files. With
`--if-finished` (`make run`), a report newer than the summary's manifest, already attached to
MLflow, is left as it is: a re-run that changed nothing re-made nothing the report shows (the
aggregate step rewrites the manifest whenever any result changes).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.tracking import mlflow_runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--if-finished", action="store_true",
                        help="without a finished run (a dry run), say so and succeed")
    parser.add_argument("snakemake_args", nargs="*", help="after --: passed to snakemake")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, check_models=False)
    layout = Layout(config)
    if not Path(layout.summary["manifest"]).is_file():
        print(f"{'note' if args.if_finished else 'error'}: no finished run in {layout.root} "
              f"(no {layout.summary['manifest']}): no report", file=sys.stderr)
        return 0 if args.if_finished else 2
    report, attached = Path(layout.report), Path(layout.report + ".attached")
    if args.if_finished and _up_to_date(report, Path(layout.summary["manifest"]), attached):
        print(f"report: {report} (up to date)")
        return 0
    attached.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", args.configfile,
                          "--report", layout.report, *args.snakemake_args])
    if out.returncode:
        print(f"error: snakemake --report failed (exit {out.returncode})", file=sys.stderr)
        return out.returncode
    parent = mlflow_runs.log_report(layout.root, config["experiment"], layout.report)
    if parent:  # else (a tracking outage) the next run makes and attaches it again
        attached.write_text(f"{parent}\n")
    print(f"report: {layout.report}" + (f" (attached to MLflow run {parent})" if parent else ""))
    return 0


def _up_to_date(report: Path, manifest: Path, attached: Path) -> bool:
    """The report was made after the summary it shows, and attached to the grid's MLflow run."""
    return (report.is_file() and attached.is_file()
            and report.stat().st_mtime >= manifest.stat().st_mtime
            and attached.stat().st_mtime >= report.stat().st_mtime)


if __name__ == "__main__":
    raise SystemExit(main())
