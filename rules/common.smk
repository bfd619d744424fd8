import functools
import json
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

from knowledge_recovery.compression.entries import needs_calibration
from knowledge_recovery.evaluation.task_formats import source_files
from knowledge_recovery.pipeline.grid import compression_spec, evaluation_settings
from knowledge_recovery.pipeline import plan
from knowledge_recovery.pipeline.jobs import DIRECTORIES, Jobs
from knowledge_recovery.pipeline.paths import unit

JOBS = Jobs(config)  # what each job reads (the same graph `integrity` checks)
paths = JOBS.paths
MODELS = JOBS.models
COMPRESSION = JOBS.compression
TRAINED = JOBS.trained  # by train id: IDP selection variants of one entry share an adapter
TASKS = JOBS.tasks
CELLS = JOBS.cells
CELL_BY_ID = {c.id: c for c in CELLS}
TRAIN_UNIT = unit("{train_id}", "{seed}")  # the train rule's pattern of a unit
# `snakemake --report`: summary outputs shown, by output key: (category, caption, label)
REPORTED = {
    "plot": ("Plots", "mean_acc", "mean accuracy per cell"),
    "accuracy_vs_compression_plot": ("Plots", "accuracy_vs_compression", "accuracy vs bits"),
    "recovery_ratio_plot": ("Plots", "recovery_ratio", "recovery ratio per task"),
    "pareto_plot": ("Plots", "pareto", "accuracy vs extra parameters"),
    "training_plot": ("Plots", "training", "validation loss while training"),
    "overview_csv": ("Tables", "overview", "overview"),
    "csv": ("Tables", "results", "every cell x task"),
    "comparisons_csv": ("Comparisons", "comparisons", "paired comparisons"),
    "claims_markdown": ("Comparisons", "claims", "the paper's claims, tested"),
    "displacement_markdown": ("Comparisons", "displacement", "forgotten or displaced"),
    "cka_plot": ("Plots", "cka", "representation vs dense per layer"),
    "latency_plot": ("Plots", "accuracy_vs_latency", "accuracy vs latency"),
    "deployment_markdown": ("Tables", "deployment", "deployed models"),
}


wildcard_constraints:
    model=r"[^/]+",
    compression=r"[^/]+",
    train_id=r"[^/]+",
    seed=r"\d+",
    task=r"[^/]+",
    text=r"[^/]+",
    unit=r"[^/]+|[^/]+/seed\d+",


@functools.cache
def job_estimates():
    """`make plan`'s estimate of every job of the grid, by job name (computed once, when the
    first job's resources are asked for)."""
    return {e.job: e for e in plan.estimate(config)}


def planned(rule, key, **fixed):
    """A rule's resources. With `resource_safety_factor` set (profiles/slurm sets it), each job
    asks for `make plan`'s estimate of its wall time and host memory times the factor
    (`plan.job_resources`); without, the rule's `fixed` requests. `key`: the job's key, the
    pattern of its log's path."""
    if config["resource_safety_factor"] is None:
        return fixed

    def sized(resource):
        return lambda wildcards, attempt: plan.job_resources(
            job_estimates()[f"{rule} {key.format(**wildcards)}"], config, attempt)[resource]

    return {"runtime": sized("runtime"), "mem_mb": sized("mem_mb")}


def outputs(files):
    """A rule's outputs as `Jobs` gives them, its folders marked as directories."""
    return {name: directory(path) if name in DIRECTORIES else path for name, path in files.items()}


def reported(files):
    """The summary outputs, those in REPORTED marked for the report with their captions."""
    return {key: report(path, caption=f"../report/{REPORTED[key][1]}.rst",
                        category=REPORTED[key][0], labels={"output": REPORTED[key][2]})
            if key in REPORTED else path for key, path in files.items()}


def task_sources(wildcards):
    """The local files a task entry reads (a folder: its files), so that replacing one
    prepares the task again; none for probes and hub tasks."""
    path = TASKS[wildcards.task].get("path")
    return [str(p) for p in source_files(Path(path))] if path else []


def text_inputs(wildcards):
    return JOBS.text_inputs(wildcards.text)


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


def represent_inputs(wildcards):
    return JOBS.represent_inputs(cell_of(wildcards))


# The deploy step's Python: its own environment (rules/deploy.smk)
DEPLOY_PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else f"{workflow.basedir}/.venv-openvino/bin/python"
)


def deploy_latency_inputs(wildcards):
    return JOBS.deploy_latency_inputs(wildcards.model, "openvino")


def deploy_prompt_inputs(wildcards):
    return JOBS.deploy_prompt_inputs(cell_of(wildcards))


