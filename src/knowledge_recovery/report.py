"""The grid's Snakemake report, written into the results folder and attached to the parent
MLflow run (`make run` ends with it; `make report` alone):

    python -m knowledge_recovery.report --configfile config.yaml [-- extra snakemake arguments]

The report (`snakemake --report`) holds the captioned tables, plots and readings of
`summary/`, with the job graph and runtimes; it is built from a finished run's files.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import tracking
from .config import load_config
from .paths import Layout


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
    out = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", args.configfile,
                          "--report", layout.report, *args.snakemake_args])
    if out.returncode:
        print(f"error: snakemake --report failed (exit {out.returncode})", file=sys.stderr)
        return out.returncode
    parent = tracking.log_report(layout.root, config["experiment"], layout.report)
    print(f"report: {layout.report}" + (f" (attached to MLflow run {parent})" if parent else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
