"""The command line that runs this checkout's workflow on one grid, for the tools that start a
grid themselves (`make gpu-check`, bench/pipeline.py, the tests)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # the checkout: Snakefile, profiles/, config/


def snakemake(profile: str | None = "default") -> list[str]:
    """`snakemake` with this checkout's Snakefile and (unless None) one of its profiles."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            *(["--workflow-profile", str(REPO / "profiles" / profile)] if profile else [])]


def grid_command(folder, configfile, *args: str, profile: str | None = "default") -> list[str]:
    """The grid of `configfile`, run in `folder` (where its results_dir is), with `args` after;
    a target must follow an option, as --configfile takes every word up to the next one."""
    return [*snakemake(profile), "--directory", str(folder), "--configfile", str(configfile),
            *args]
