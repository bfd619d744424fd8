from knowledge_recovery.compression import needs_calibration
from knowledge_recovery.config import (by_id, cells, checkpoint_path, compression_spec,
                                       experiment_dir, training_spec)

RES = experiment_dir(config)
MODELS = by_id(config["models"], key="name")
COMPRESSION = by_id(config["compression"])
RECOVERY = by_id(config["recovery"])
# Adapters to train, by train id (IDP selection variants of one entry share one adapter).
TRAINED = {r["train_id"]: training_spec(r) for r in config["recovery"] if r["method"] != "none"}
TASKS = by_id(config["tasks"], key="name")
CELLS = cells(config)
CELL_BY_ID = {c.id: c for c in CELLS}


wildcard_constraints:
    model=r"[^/]+",
    compression=r"[^/]+",
    recovery=r"[^/]+",
    seed=r"\d+",
    task=r"[^/]+",
    unit=r"none|[^/]+/seed\d+",


def checkpoint_dir(model, compression):
    return checkpoint_path(config, model, compression)


def compress_inputs(wildcards):
    """Data-aware methods also read the calibration text; data-free ones do not depend on it."""
    inputs = {"checkpoint": checkpoint_dir(wildcards.model, "dense")}
    if needs_calibration(COMPRESSION[wildcards.compression]):
        inputs["text"] = f"{RES}/data/recovery_text.txt"
    return inputs


def calibration_settings(entry):
    if not needs_calibration(entry):
        return None
    return {**config["calibration"], "text": config["text"], "seed": config["seed"]}


def adapter_prefix(model, compression, recovery, seed):
    return f"{RES}/adapters/{model}/{compression}/{recovery}/seed{seed}"


def train_inputs(wildcards):
    inputs = {
        "checkpoint": checkpoint_dir(wildcards.model, wildcards.compression),
        "text": f"{RES}/data/recovery_text.txt",
    }
    if TRAINED[wildcards.recovery]["training"]["objective"] == "distill":
        inputs["teacher"] = checkpoint_dir(wildcards.model, "dense")
    return inputs


def resume_dir(wildcards):
    """Resumable training state: outside the rule's outputs, so a killed job keeps it."""
    return f"{RES}/train_state/{wildcards.model}/{wildcards.compression}/{wildcards.recovery}/seed{wildcards.seed}"


def cell_of(wildcards):
    return CELL_BY_ID[f"{wildcards.model}/{wildcards.compression}/{wildcards.unit}"]


def eval_inputs(wildcards):
    cell = cell_of(wildcards)
    inputs = {
        "checkpoint": checkpoint_dir(cell.model, cell.compression),
        "tasks": [f"{RES}/tasks/{t}/lm_eval" for t in TASKS],
        "task_manifests": [f"{RES}/tasks/{t}/manifest.json" for t in TASKS],
    }
    if cell.seed is not None:
        prefix = adapter_prefix(cell.model, cell.compression, cell.settings["train_id"], cell.seed)
        inputs["adapter"] = f"{prefix}/adapter"
        inputs["train_manifest"] = f"{prefix}/manifest.json"
    return inputs


def eval_results(cell):
    return f"{RES}/eval/{cell.id}/results.json"


def train_manifests():
    return {
        c.id: f"{adapter_prefix(c.model, c.compression, c.settings['train_id'], c.seed)}/manifest.json"
        for c in CELLS
        if c.seed is not None
    }


def packed_outputs():
    """Packed low-bit exports of the entries that ask for one, for every model."""
    return [f"{RES}/models/{m}/{c}/packed" for m in MODELS
            for c, entry in COMPRESSION.items() if entry.get("export_packed")]


def aggregate_outputs():
    return {
        "csv": f"{RES}/summary/results.csv",
        "markdown": f"{RES}/summary/results.md",
        "plot": f"{RES}/summary/mean_acc.png",
    }


def log_path(rule_name, name):
    return f"{RES}/logs/{rule_name}/{name}.log"


def bench_path(rule_name, name):
    return f"{RES}/benchmarks/{rule_name}/{name}.tsv"
