"""The jobs of a grid and the files each reads and writes: one job graph.

The rules take their inputs and outputs from here (`rules/*.smk`: outputs given the wildcards
as "{model}" patterns, folders marked `directory()` by `DIRECTORIES`), and `graph` lists every
job from the same functions, with the grid's values; `integrity` walks it to find what was
built from a damaged artifact. A test checks its outputs against Snakemake's list of the
workflow's outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from knowledge_recovery.compression.entries import needs_calibration, quant_stage
from knowledge_recovery.deployment.openvino import deploys_with_prompt
from knowledge_recovery.pipeline.grid import Cell, by_id, cells, trained
from knowledge_recovery.pipeline.paths import RECOVERY_TEXT, Layout
from knowledge_recovery.recovery.entries import training_texts
from knowledge_recovery.registry import compression_method
from knowledge_recovery.text import text_id


# Output names that are folders: the rules mark them `directory()`.
DIRECTORIES = frozenset({"checkpoint", "tasks", "packed", "adapter", "deployed"})


@dataclass(frozen=True)
class Job:
    name: str                  # "<rule> <key>", as in the logs folder
    outputs: tuple[str, ...]   # everything the rule writes
    manifest: str              # the output that records the others' sizes and hashes
    inputs: tuple[str, ...]    # outputs of other jobs that this one reads


class Deployment(NamedTuple):
    model: str
    compression: str
    target: str
    unit: str | None = None  # a recovery cell's (paths.unit), deployed as a prompt cache


class Jobs:
    """What each job of a normalised config reads."""

    def __init__(self, config: dict):
        self.config = config
        self.paths = Layout(config)
        self.models = by_id(config["models"], key="name")
        self.compression = by_id(config["compression"])
        self.trained = trained(config)
        self.tasks = by_id(config["tasks"], key="name")
        self.cells = cells(config)
        # every text a job reads, by id: the grid's `text`, and the entries' own (IDP curated)
        self.texts = {RECOVERY_TEXT: config["text"]}
        for entry in self.trained.values():
            self.texts.update((text_id(s), s) for s in training_texts(entry) or [])

    # Each rule's outputs, by the names its script reads, from its wildcards.

    def text_outputs(self, text: str) -> dict:
        return {"text": self.paths.text(text), "manifest": self.paths.text_manifest(text)}

    def task_outputs(self, task: str) -> dict:
        return {"tasks": self.paths.task_dir(task), "manifest": self.paths.task_manifest(task)}

    def download_outputs(self, model: str) -> dict:
        return {"checkpoint": self.paths.checkpoint(model),
                "manifest": self.paths.model_manifest(model, "dense")}

    def compress_outputs(self, model: str, compression: str) -> dict:
        p = self.paths
        return {"checkpoint": p.checkpoint(model, compression), "masks": p.masks(model, compression),
                "grids": p.quant_grids(model, compression),
                "manifest": p.model_manifest(model, compression)}

    def pack_outputs(self, model: str, compression: str) -> dict:
        return {"packed": self.paths.packed(model, compression),
                "manifest": self.paths.packed_manifest(model, compression)}

    def train_outputs(self, model: str, compression: str, unit: str) -> dict:
        return {"adapter": self.paths.adapter(model, compression, unit),
                "manifest": self.paths.train_manifest(model, compression, unit)}

    def export_outputs(self, model: str, compression: str, target: str) -> dict:
        p = self.paths
        return {"deployed": p.deployed(model, compression, target),
                "samples": p.deployed_samples(model, compression, target),
                "manifest": p.deploy_manifest(model, compression, target)}

    def deploy_prompt_outputs(self, model: str, compression: str, target: str, unit: str) -> dict:
        p = self.paths
        return {"prompt": p.deployed_prompt(model, compression, target, unit),
                "samples": p.deployed_samples(model, compression, target, unit),
                "manifest": p.deploy_manifest(model, compression, target, unit)}

    def latency_outputs(self, model: str, target: str) -> dict:
        return {"latency": self.paths.deploy_latency(model, target)}

    def eval_outputs(self, model: str, compression: str, unit: str) -> dict:
        return {"results": self.paths.eval_results(model, compression, unit),
                "samples": self.paths.eval_samples(model, compression, unit)}

    def sample_inputs_outputs(self) -> dict:
        return {"inputs": self.paths.displacement_inputs}

    def represent_outputs(self, model: str, compression: str, unit: str) -> dict:
        return {"representation": self.paths.representation(model, compression, unit)}

    def aggregate_outputs(self) -> dict:
        return dict(self.paths.summary)

    # Each rule's inputs (outputs of other jobs), from its wildcards.

    def text_inputs(self, text: str) -> dict:
        """A text cleaned of the grid's questions reads the grid's task documents."""
        if not self.texts[text].get("decontaminate"):
            return {}
        return {"tasks": [self.paths.task_dir(t) for t in self.tasks]}

    def compress_inputs(self, model: str, compression: str) -> dict:
        """Methods that need input statistics also read the calibration text; the others not."""
        inputs = {"checkpoint": self.paths.checkpoint(model)}
        if needs_calibration(self.compression[compression]):
            inputs["text"] = self.paths.recovery_text
        return inputs

    def train_inputs(self, model: str, compression: str, train_id: str) -> dict:
        entry = self.trained[train_id]
        own = training_texts(entry)
        inputs = {"checkpoint": self.paths.checkpoint(model, compression),
                  **({"texts": [self.paths.text(text_id(s)) for s in own]} if own
                     else {"text": self.paths.recovery_text})}
        if entry["training"]["objective"] == "distill":
            inputs["teacher"] = self.paths.checkpoint(model)
        return inputs

    def pack_inputs(self, model: str, compression: str) -> dict:
        return {"checkpoint": self.paths.checkpoint(model, compression),
                "grids": self.paths.quant_grids(model, compression)}

    def eval_inputs(self, cell: Cell) -> dict:
        inputs = {"checkpoint": self.paths.checkpoint(cell.model, cell.compression),
                  "tasks": [self.paths.task_dir(t) for t in self.tasks],
                  "task_manifests": [self.paths.task_manifest(t) for t in self.tasks]}
        if cell.train_unit:
            inputs["adapter"] = self.paths.adapter(cell.model, cell.compression, cell.train_unit)
            inputs["train_manifest"] = self.train_manifest(cell)
        return inputs

    def eval_results(self, cell: Cell) -> str:
        return self.eval_outputs(cell.model, cell.compression, cell.recovery_unit)["results"]

    def eval_samples(self, cell: Cell) -> str:
        return self.eval_outputs(cell.model, cell.compression, cell.recovery_unit)["samples"]

    def train_manifest(self, cell: Cell) -> str:
        return self.paths.train_manifest(cell.model, cell.compression, cell.train_unit)

    def train_manifests(self) -> dict[str, str]:
        """By cell id, for the cells that evaluate a trained adapter."""
        return {c.id: self.train_manifest(c) for c in self.cells if c.train_unit}

    def model_manifests(self) -> dict[tuple[str, str], str]:
        """By (model, compression) of the cells: the manifest of the model they evaluate."""
        return {(c.model, c.compression): self.paths.model_manifest(c.model, c.compression)
                for c in self.cells}

    def represented(self) -> list[Cell]:
        """The cells traced beside the dense model (`displacement:`): every cell but the dense
        model itself, and but evaluation-only variants (they share their entry's weights)."""
        if not self.config["displacement"]["enabled"]:
            return []
        return [c for c in self.cells
                if not (c.baseline and not c.trains)
                and c.settings.get("train_id", c.settings["id"]) == c.settings["id"]]

    def sample_inputs_inputs(self) -> dict:
        return {"tasks": [self.paths.task_dir(t) for t in self.tasks],
                "task_manifests": [self.paths.task_manifest(t) for t in self.tasks]}

    def represent_inputs(self, cell: Cell) -> dict:
        inputs = {"checkpoint": self.paths.checkpoint(cell.model, cell.compression),
                  "dense": self.paths.checkpoint(cell.model),
                  "inputs": self.paths.displacement_inputs}
        if cell.train_unit:
            inputs["adapter"] = self.paths.adapter(cell.model, cell.compression, cell.train_unit)
            inputs["train_manifest"] = self.train_manifest(cell)
        return inputs

    def representation(self, cell: Cell) -> str:
        return self.represent_outputs(cell.model, cell.compression,
                                      cell.recovery_unit)["representation"]

    def aggregate_inputs(self) -> dict:
        return {"results": [self.eval_results(c) for c in self.cells],
                "samples": [self.eval_samples(c) for c in self.cells],
                "train_manifests": list(self.train_manifests().values()),
                "model_manifests": list(self.model_manifests().values()),
                "representations": [self.representation(c) for c in self.represented()],
                "deployments": self.deploy_outputs(), "deployed_samples": self.deployed_samples(),
                "deploy_latency": [self.paths.deploy_latency(*r) for r in self.latency_runs()]}

    def packed_outputs(self) -> list[str]:
        """Packed low-bit exports of the entries that ask for one, for every model."""
        return [self.paths.packed(m, c) for m in self.models
                for c, entry in self.compression.items() if entry.get("export_packed")]

    def deployments(self) -> list[Deployment]:
        """The exports of the compression entries that ask for one (`deploy:`), then the
        recovery cells on them that deploy as a prompt cache."""
        exports = [Deployment(m, c, entry["deploy"]) for m in self.models
                   for c, entry in self.compression.items() if entry.get("deploy")]
        prompts = [Deployment(c.model, c.compression, self.compression[c.compression]["deploy"],
                              c.recovery_unit) for c in self.cells if c.train_unit
                   and self.compression[c.compression].get("deploy")
                   and deploys_with_prompt(c.settings)]
        return exports + prompts

    def deploy_inputs(self, model: str, compression: str) -> dict:
        return {"checkpoint": self.paths.checkpoint(model, compression),
                "text": self.paths.recovery_text,
                "tasks": [self.paths.task_dir(t) for t in self.tasks],
                "task_manifests": [self.paths.task_manifest(t) for t in self.tasks]}

    def deploy_prompt_inputs(self, cell: Cell) -> dict:
        """A recovery cell's deployment: its compressed cell's export, checked first, and the
        adapter whose prompt cache goes in front of it."""
        target = self.compression[cell.compression]["deploy"]
        return {**self.deploy_inputs(cell.model, cell.compression),
                "deployed": self.paths.deployed(cell.model, cell.compression, target),
                "deploy_manifest": self.paths.deploy_manifest(cell.model, cell.compression, target),
                "adapter": self.paths.adapter(cell.model, cell.compression, cell.train_unit),
                "train_manifest": self.train_manifest(cell)}

    def latency_runs(self) -> list[tuple[str, str]]:
        """(model, target) of the models with deployments: one deploy_latency job each."""
        return sorted({(d.model, d.target) for d in self.deployments()})

    def _deployments_of(self, model: str, target: str) -> list[Deployment]:
        return [d for d in self.deployments() if d.model == model and d.target == target]

    def deploy_latency_inputs(self, model: str, target: str) -> dict:
        return {"checkpoint": self.paths.checkpoint(model), "text": self.paths.recovery_text,
                "manifests": [self.paths.deploy_manifest(*d)
                              for d in self._deployments_of(model, target)]}

    def latency_deployments(self, model: str, target: str) -> list[dict]:
        """What the deploy_latency job times beside the dense model: each deployment of `model`
        (the outputs of the jobs whose manifests are its inputs), labelled, with its export
        folder, its prompt cache (a recovery cell) or None, and whether it is quantized."""
        return [{"label": c if unit_ is None else f"{c} + {unit_}",
                 "export": self.paths.deployed(m, c, target),
                 "prompt": None if unit_ is None else self.paths.deployed_prompt(m, c, target, unit_),
                 "quantized": quant_stage(self.compression[c]) is not None}
                for m, c, _, unit_ in self._deployments_of(model, target)]

    def deploy_outputs(self) -> list[str]:
        return [self.paths.deploy_manifest(*d) for d in self.deployments()]

    def deployed_samples(self) -> list[str]:
        return [self.paths.deployed_samples(*d) for d in self.deployments()]

    def graph(self) -> list[Job]:
        """Every job of the grid, upstream before downstream, from the functions the rules
        read: each job's outputs, its manifest (the `manifest` output, else its first) and the
        outputs of other jobs it reads."""
        out = []

        def job(rule: str, key: str, outputs: dict, inputs: dict | None = None) -> None:
            out.append(Job(f"{rule} {key}", tuple(outputs.values()),
                           outputs.get("manifest", next(iter(outputs.values()))),
                           tuple(_flat(inputs or {}))))

        for t in self.texts:
            job("download_text", t, self.text_outputs(t))
        for t in self.tasks:
            job("prepare_task", t, self.task_outputs(t))  # its sources are the user's files
        for m in self.models:
            for c, entry in self.compression.items():
                if compression_method(entry["method"]).family == "none":
                    job("download_model", m, self.download_outputs(m))
                    continue
                job("compress", f"{m}/{c}", self.compress_outputs(m, c), self.compress_inputs(m, c))
                if entry.get("export_packed"):
                    job("pack", f"{m}/{c}", self.pack_outputs(m, c), self.pack_inputs(m, c))
        by_cell = {c.id: c for c in self.cells}
        units = {(c.model, c.compression, c.train_unit): c for c in self.cells if c.train_unit}
        for (m, c, unit_), cell in units.items():
            job("train", f"{m}/{c}/{unit_}", self.train_outputs(m, c, unit_),
                self.train_inputs(m, c, cell.settings["train_id"]))
        for m, c, target, unit_ in self.deployments():  # exports first, then prompt cells
            if unit_ is None:
                job("deploy", f"{m}/{c}", self.export_outputs(m, c, target), self.deploy_inputs(m, c))
            else:
                cell = by_cell[f"{m}/{c}/{unit_}"]
                job("deploy_prompt", cell.id, self.deploy_prompt_outputs(m, c, target, unit_),
                    self.deploy_prompt_inputs(cell))
        for m, target in self.latency_runs():
            job("deploy_latency", m, self.latency_outputs(m, target),
                self.deploy_latency_inputs(m, target))
        for cell in self.cells:
            job("evaluate", cell.id, self.eval_outputs(cell.model, cell.compression,
                                                      cell.recovery_unit), self.eval_inputs(cell))
        if self.represented():
            job("sample_inputs", "displacement", self.sample_inputs_outputs(),
                self.sample_inputs_inputs())
        for cell in self.represented():
            job("represent", cell.id, self.represent_outputs(cell.model, cell.compression,
                                                            cell.recovery_unit),
                self.represent_inputs(cell))
        job("aggregate", "aggregate", self.aggregate_outputs(), self.aggregate_inputs())
        return out


def _flat(inputs: dict) -> list[str]:
    return [p for v in inputs.values() for p in (v if isinstance(v, list) else [v])]
