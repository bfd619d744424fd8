"""`make gpu-check`: does the suite compute on this machine's GPU what it computes on a CPU?

    python -m knowledge_recovery.cli.gpu_check [--out results/gpu-check] [--device cuda|cpu]

Runs the smoke grid (tiny Llama and tiny Gemma-3: compression, IDP and LoRA training,
evaluation, representation) twice: in float32 on the CPU (the GPU hidden), and in bfloat16 and
float16 on the GPU. Prints each run's time per rule and, per cell, how closely each
half-precision cell answers as its float32 twin (`analysis.agreement`: the largest per-answer
log-likelihood gap, the share of questions answered alike, against the tolerances measured on
the CPU). Exits 1 if any cell is beyond them. Without a GPU it says so and exits 0 without
running. `--device cpu` runs the half-precision grid on the CPU too (what the half-precision
test checks), to try the command where no GPU is.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from knowledge_recovery.pipeline import launch
from knowledge_recovery.pipeline.launch import REPO

ARCHITECTURES = {"llama": 2, "gemma3": 4}  # the smoke models and their layers
HALF = ("bfloat16", "float16")


def grid(dtypes, experiment: str) -> dict:
    """The smoke grid with each architecture in each of `dtypes` (model `<arch>-<dtype>`)."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    llama = config["models"][0]
    config["models"] = [{**llama, "name": f"{arch}-{dtype}", "architecture": arch, "dtype": dtype,
                         "num_layers": layers}
                        for arch, layers in ARCHITECTURES.items() for dtype in dtypes]
    config["recovery"] = [r for r in config["recovery"] if r.get("selection") != "oracle"]
    config["tasks"][0]["per_relation"] = 30
    config["experiment"] = experiment
    return config


def run(folder: Path, config: dict, hide_gpu: bool) -> float:
    """One grid, to its end, in `folder`; its wall seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config['experiment']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if hide_gpu else {})}
    start = time.perf_counter()
    proc = subprocess.run(launch.grid_command(folder, path), capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        sys.exit(f"the {config['experiment']} grid failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return time.perf_counter() - start


def compare(folder: Path, half: dict, full: dict) -> list[tuple[str, object]]:
    """(cell, Agreement) for every half-precision cell against its float32 twin."""
    from knowledge_recovery.analysis.agreement import agreement, selects_per_input
    from knowledge_recovery.artifacts import read_json_gz
    from knowledge_recovery.pipeline.config import load_config
    from knowledge_recovery.pipeline.jobs import Jobs

    here = os.getcwd()
    os.chdir(folder)  # the layout's paths are relative to the grid's folder
    try:
        jobs = {name: Jobs(load_config(config, base_dir=folder, check_models=False))
                for name, config in (("half", half), ("full", full))}
        out = []
        for cell in jobs["half"].cells:
            dtype = cell.model.split("-", 1)[1]
            twin = cell.model.replace(dtype, "float32")
            mine = read_json_gz(jobs["half"].paths.eval_samples(cell.model, cell.compression,
                                                                cell.recovery_unit))
            theirs = read_json_gz(jobs["full"].paths.eval_samples(twin, cell.compression,
                                                                  cell.recovery_unit))
            out.append((cell.id, agreement(mine, theirs, dtype, cell.compression != "dense",
                                           selects=selects_per_input(cell))))
        return out
    finally:
        os.chdir(here)


def main(argv=None) -> int:
    import torch

    from knowledge_recovery.pipeline import plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu-check", help="the grids' folder")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="where the half-precision grid runs (cpu: to try the command)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no GPU here (torch.cuda.is_available() is False): nothing was run.")
        return 0
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    folder = Path(args.out).resolve()
    full, half = grid(["float32"], "float32"), grid(HALF, "half")
    walls = {"float32 on the CPU": run(folder, full, hide_gpu=True),
             f"bfloat16 and float16 on {device}": run(folder, half, hide_gpu=args.device == "cpu")}
    print(f"gpu-check on {device}, torch {torch.__version__}\n")
    print("| run | wall s | rule | jobs | wall s | CPU s |\n|:--|--:|:--|--:|--:|--:|")
    for (name, wall), experiment in zip(walls.items(), ("float32", "half")):
        for rule, (jobs, s, cpu, _) in sorted(plan.measured(folder / "results" / experiment).items()):
            print(f"| {name} | {wall:.0f} | {rule} | {jobs} | {s:.1f} | {cpu:.1f} |")
    found = compare(folder, half, full)
    print("\n| cell | questions | alike | largest gap (nats) | tolerance | ok |\n|:--|--:|--:|--:|--:|:--|")
    for cell, a in found:
        print(f"| {cell} | {a.questions} | {a.alike} | {a.max_gap:.4f} | {a.tolerance} | "
              f"{'yes' if a.ok else 'NO'} |")
    bad = [cell for cell, a in found if not a.ok]
    print(f"\n{len(found) - len(bad)} of {len(found)} cells agree with float32"
          + (f"; beyond tolerance: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
