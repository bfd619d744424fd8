"""Time the pipeline targets of the spine: a fresh grid run, then a no-op re-run.

    .venv/bin/python bench/pipeline.py                       # smoke grid (tiny model)
    .venv/bin/python bench/pipeline.py --config config.yaml  # the default grid (~15 min)
    .venv/bin/python bench/pipeline.py --config config.yaml --keep /tmp/default-run  # keep it
    .venv/bin/python bench/pipeline.py --finished /tmp/default-run  # no-op `make run` there only

Runs in a fresh temporary folder, so nothing cached is reused. Prints wall time beside the CPU
time of all child processes (the machine is noisy: CPU time shows contention), the number of
jobs each run executed, and the per-rule wall/CPU times from Snakemake's benchmark files; the
tables also go to `--out` (docs/results/bench/pipeline-<experiment>.md, which docs/measured.md
includes: `make readme`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from knowledge_recovery import artifacts
from knowledge_recovery.pipeline import launch, plan
from knowledge_recovery.pipeline.launch import REPO


def run(workdir: Path, config: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(launch.grid_command(workdir, config), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"snakemake failed:\n{proc.stderr[-4000:]}")
    out = proc.stdout + proc.stderr
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", out)
    jobs = int(done[-1][0]) if done else 0
    if "Nothing to be done" in out:
        jobs = 0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "jobs": jobs}


def timed(argv: list[str], output: list | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (children included) of one command, which must succeed; its output
    appended to `output`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    if output is not None:
        output.append(proc.stdout + proc.stderr)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_run(workdir: Path, config: Path) -> dict:
    """A no-op `make run` on a finished grid, part by part (the Makefile's commands, with the
    grid in `workdir`): the YAML check, Snakemake, the report, the table."""
    where = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    py, said = sys.executable, []
    parts = {"config check": timed([py, "-m", "knowledge_recovery.pipeline.config", str(config)]),
             "snakemake": timed(launch.grid_command(workdir, config), said)}
    if "Nothing to be done" not in said[0]:
        sys.exit(f"the grid in {workdir} is not finished, or this version re-runs some of it:\n"
                 f"{said[0][-3000:]}")
    return {**parts,
            "report": timed([py, "-m", "knowledge_recovery.cli.report", "--if-finished",
                             "--configfile", str(config), "--", *where]),
            "show": timed([py, "-m", "knowledge_recovery.cli.show", "--configfile", str(config)])}


def noop_table(noop: dict) -> list[str]:
    lines = ["No-op `make run` on the finished grid (target: at most 8 s):", "",
             "| part | wall s | CPU s |", "|---|---:|---:|"]
    for part, (wall, cpu) in noop.items():
        lines.append(f"| {part} | {wall:.1f} | {cpu:.1f} |")
    return lines + [f"| total | {sum(w for w, _ in noop.values()):.1f} | "
                    f"{sum(c for _, c in noop.values()):.1f} |"]


def finished(folder: Path, rounds: int = 3) -> None:
    """The no-op `make run` on a grid an earlier `--keep` run finished (the median round of
    `rounds` by total wall time), printed and written to docs/results/bench/noop-<experiment>.md."""
    config = folder / "config.yaml"
    experiment = yaml.safe_load(config.read_text()).get("experiment", "default")
    runs = sorted((make_run(folder, config) for _ in range(rounds)),
                  key=lambda r: sum(w for w, _ in r.values()))
    text = "\n".join([f"`{' '.join(sys.argv)}`: {os.cpu_count()} cores, "
                      f"{time.strftime('%Y-%m-%d')}, commit {artifacts.git_commit()}; median of "
                      f"{rounds} rounds", "", *noop_table(runs[rounds // 2])]) + "\n"
    print(text)
    out = REPO / "docs/results/bench" / f"noop-{experiment}.md"
    out.write_text(text)
    print(f"written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "config" / "smoke.yaml"))
    parser.add_argument("--keep", metavar="DIR", help="run in this new folder and keep it (then "
                        "`python -m knowledge_recovery.cli.readme --configfile DIR/config.yaml`)")
    parser.add_argument("--out", help="where the tables go (default docs/results/bench/"
                        "pipeline-<experiment>.md, which docs/measured.md includes); '' for nowhere")
    parser.add_argument("--finished", metavar="DIR", help="only time a no-op `make run` on the "
                        "grid an earlier --keep run finished in DIR")
    args = parser.parse_args()
    if args.finished:
        return finished(Path(args.finished).resolve())
    config = yaml.safe_load(Path(args.config).read_text())
    if args.keep:
        Path(args.keep).mkdir(parents=True)  # new: nothing cached may be reused
    with contextlib.nullcontext(args.keep) if args.keep else \
            tempfile.TemporaryDirectory(prefix="kr-bench-") as tmp:
        workdir = Path(tmp).resolve()
        config["results_dir"] = str(workdir / "results")
        cfg_path = workdir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        first = run(workdir, cfg_path)
        again = run(workdir, cfg_path)
        timed([sys.executable, "-m", "knowledge_recovery.cli.report", "--configfile",
               str(cfg_path), "--", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(workdir)])  # as the first `make run` ends: the report made and attached
        noop = make_run(workdir, cfg_path)
        results = workdir / "results" / config.get("experiment", "default")
        lines = [f"`{' '.join(sys.argv)}`: {os.cpu_count()} cores, "
                 f"{time.strftime('%Y-%m-%d')}, commit {artifacts.git_commit()}", "",
                 "| run | wall s | CPU s | jobs |", "|---|---:|---:|---:|"]
        for name, r in (("fresh grid", first), ("no-op re-run", again)):
            lines.append(f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['jobs']} |")
        lines += ["", *noop_table(noop)]
        lines += ["", "| rule | jobs | wall s | CPU s | max RSS MB |", "|---|---:|---:|---:|---:|"]
        for rule, (n, wall, cpu, rss) in sorted(plan.measured(results).items()):
            lines.append(f"| {rule} | {n} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out != "":
            out = Path(args.out or REPO / "docs/results/bench"
                       / f"pipeline-{config.get('experiment', 'default')}.md")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            print(f"written to {out}")
        for table in ("results.md", "comparisons.md"):  # what the run computed, for the record
            print(f"\n{table}:\n{(results / 'summary' / table).read_text()}")


if __name__ == "__main__":
    main()
