from knowledge_recovery.compression import needs_calibration
from knowledge_recovery.grid import compression_spec
from knowledge_recovery.jobs import Jobs
from knowledge_recovery.paths import unit

JOBS = Jobs(config)  # what each job reads (the same graph `integrity` checks)
paths = JOBS.paths
MODELS = JOBS.models
COMPRESSION = JOBS.compression
TRAINED = JOBS.trained  # by train id: IDP selection variants of one entry share an adapter
TASKS = JOBS.tasks
CELLS = JOBS.cells
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
    return JOBS.compress_inputs(wildcards.model, wildcards.compression)


def calibration_settings(entry):
    if not needs_calibration(entry):
        return None
    return {**config["calibration"], "text": config["text"], "seed": config["seed"]}


def train_unit(wildcards):
    return unit(wildcards.train_id, wildcards.seed)


def train_inputs(wildcards):
    return JOBS.train_inputs(wildcards.model, wildcards.compression, wildcards.train_id)


def cell_of(wildcards):
    return CELL_BY_ID[f"{wildcards.model}/{wildcards.compression}/{wildcards.unit}"]


def eval_inputs(wildcards):
    return JOBS.eval_inputs(cell_of(wildcards))
