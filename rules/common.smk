from knowledge_recovery.compression import needs_calibration
from knowledge_recovery.grid import by_id, cells, compression_spec, trained
from knowledge_recovery.paths import Layout, unit

paths = Layout(config)
MODELS = by_id(config["models"], key="name")
COMPRESSION = by_id(config["compression"])
TRAINED = trained(config)  # by train id: IDP selection variants of one entry share an adapter
TASKS = by_id(config["tasks"], key="name")
CELLS = cells(config)
CELL_BY_ID = {c.id: c for c in CELLS}
TRAIN_UNIT = unit("{train_id}", "{seed}")  # the train rule's pattern of a unit


wildcard_constraints:
    model=r"[^/]+",
    compression=r"[^/]+",
    train_id=r"[^/]+",
    seed=r"\d+",
    task=r"[^/]+",
    unit=r"[^/]+|[^/]+/seed\d+",


def compress_inputs(wildcards):
    """Methods that need input statistics also read the calibration text; the others do not."""
    inputs = {"checkpoint": paths.checkpoint(wildcards.model)}
    if needs_calibration(COMPRESSION[wildcards.compression]):
        inputs["text"] = paths.recovery_text
    return inputs


def calibration_settings(entry):
    if not needs_calibration(entry):
        return None
    return {**config["calibration"], "text": config["text"], "seed": config["seed"]}


def train_unit(wildcards):
    return unit(wildcards.train_id, wildcards.seed)


def train_inputs(wildcards):
    inputs = {
        "checkpoint": paths.checkpoint(wildcards.model, wildcards.compression),
        "text": paths.recovery_text,
    }
    if TRAINED[wildcards.train_id]["training"]["objective"] == "distill":
        inputs["teacher"] = paths.checkpoint(wildcards.model)
    return inputs


def cell_of(wildcards):
    return CELL_BY_ID[f"{wildcards.model}/{wildcards.compression}/{wildcards.unit}"]


def eval_inputs(wildcards):
    cell = cell_of(wildcards)
    inputs = {
        "checkpoint": paths.checkpoint(cell.model, cell.compression),
        "tasks": [paths.task_dir(t) for t in TASKS],
        "task_manifests": [paths.task_manifest(t) for t in TASKS],
    }
    if cell.train_unit:
        inputs["adapter"] = paths.adapter(cell.model, cell.compression, cell.train_unit)
        inputs["train_manifest"] = paths.train_manifest(cell.model, cell.compression,
                                                         cell.train_unit)
    return inputs


def eval_results(cell):
    return paths.eval_results(cell.model, cell.compression, cell.recovery_unit)


def train_manifests():
    return {c.id: paths.train_manifest(c.model, c.compression, c.train_unit)
            for c in CELLS if c.train_unit}


def packed_outputs():
    """Packed low-bit exports of the entries that ask for one, for every model."""
    return [paths.packed(m, c) for m in MODELS
            for c, entry in COMPRESSION.items() if entry.get("export_packed")]
