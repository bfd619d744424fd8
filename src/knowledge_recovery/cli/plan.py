"""Estimate a grid before launching it: jobs, compute, memory, wall time, disk, MLflow runs.

    python -m knowledge_recovery.cli.plan --configfile config/paper.yaml --profile profiles/slurm
    make plan CONFIG=config/paper.yaml

Per rule: the number of jobs, the compute (PFLOP), the sum and the longest of their wall times
at the config's `plan:` throughput, the largest accelerator and host memory, the disk written;
then the totals, what each cluster job asks for where the profile sizes resources per job
(`resource_safety_factor`), and every job over a limit the profile fixes. `--measured DIR`: beside a
finished grid's measured times (its benchmark files) and size, to check the estimates.
`--device`, `--tflops`: another machine than the config's `plan:` says.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from knowledge_recovery.pipeline import plan
from knowledge_recovery.pipeline.config import load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--profile", help="a Snakemake profile folder: flag jobs over its limits")
    parser.add_argument("--device", choices=sorted(plan.DEVICES))
    parser.add_argument("--tflops", type=float)
    parser.add_argument("--measured", metavar="RESULTS", help="a finished grid's results folder "
                        "(<results_dir>/<experiment>) to compare with")
    parser.add_argument("--jobs", action="store_true", help="also list every job's estimate")
    parser.add_argument("--out", help="also write the plan (and the comparison) to this file")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, check_models=False)
    if args.device:
        config["plan"] = {**config["plan"], "device": args.device, "tflops": None, "startup_s": None}
    if args.tflops:
        config["plan"] = {**config["plan"], "tflops": args.tflops}
    limits, factor = plan.profile_settings(Path(args.profile) if args.profile else None)
    if factor and not config["resource_safety_factor"]:  # what the profile's runs would use
        config["resource_safety_factor"] = factor
    estimates = plan.estimate(config)
    plan.flag(estimates, limits, config)
    text = plan.markdown(estimates, config)
    if args.measured:
        text += "\n" + plan.compare_measured(estimates, Path(args.measured))
    print(text)
    if args.out:
        Path(args.out).write_text(f"`make plan CONFIG={args.configfile}"
                                  + (f" PLAN_ARGS='--profile {args.profile}'" if args.profile else "")
                                  + "`\n\n" + text)
    if args.jobs:
        for e in estimates:
            print(f"{e.job}: {e.flops / 1e12:.1f} TFLOP, {e.wall_s / 60:.1f} min, accelerator "
                  f"{e.accel_gb:.1f} GB, host {e.host_gb:.1f} GB, disk {e.disk_gb:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
