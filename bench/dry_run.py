"""How long `snakemake -n` takes to list every job of a grid (target: config/paper.yaml < 10 s).

    .venv/bin/python bench/dry_run.py [--config config/paper.yaml] [--repeats 3]

Runs in a fresh temporary folder (no results: every job is listed). The first run may also fill
the cache of lm-eval's task names (~10 s once per lm-eval version; `--cold` empties it first, in a
temporary cache folder). Prints wall and CPU time of each run and the number of jobs listed.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(workdir: Path, config: Path, env: dict) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile",
                           str(REPO / "Snakefile"), "--workflow-profile",
                           str(REPO / "profiles" / "default"), "--directory", str(workdir),
                           "--configfile", str(config)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"snakemake -n failed:\n{proc.stderr[-4000:]}")
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, int(total[1]) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "paper.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="start without lm-eval's task cache")
    args = parser.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            env["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        print(f"snakemake -n on {args.config} (fresh folder)")
        print(f"{'run':>4} {'wall s':>7} {'CPU s':>7} {'jobs':>6}")
        for i in range(args.repeats):
            wall, cpu, jobs = dry_run(Path(tmp) / f"run{i}", Path(args.config).resolve(), env)
            print(f"{i + 1:>4} {wall:7.2f} {cpu:7.2f} {jobs:>6}")


if __name__ == "__main__":
    main()
