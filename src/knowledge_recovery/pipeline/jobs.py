"""The jobs of a grid and the files each reads and writes.

The rules take their inputs from here (`rules/common.smk`), and `integrity` walks the same graph
to find what was built from a damaged artifact. Outputs are the rules' own, named through
`paths.Layout`; a test checks them against Snakemake's list of the workflow's outputs.
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


@dataclass(frozen=True)
class Job:
    name: str                  # "<rule> <key>", as in the logs folder
    outputs: tuple[str, ...]   # everything the rule writes
    manifest: str | None       # the output that records the others' sizes and hashes
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

    def eval_inputs(self, cell: Cell) -> dict:
        inputs = {"checkpoint": self.paths.checkpoint(cell.model, cell.compression),
                  "tasks": [self.paths.task_dir(t) for t in self.tasks],
                  "task_manifests": [self.paths.task_manifest(t) for t in self.tasks]}
        if cell.train_unit:
            inputs["adapter"] = self.paths.adapter(cell.model, cell.compression, cell.train_unit)
            inputs["train_manifest"] = self.train_manifest(cell)
        return inputs

    def eval_results(self, cell: Cell) -> str:
        return self.paths.eval_results(cell.model, cell.compression, cell.recovery_unit)

    def eval_samples(self, cell: Cell) -> str:
        return self.paths.eval_samples(cell.model, cell.compression, cell.recovery_unit)

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
                if not (c.train_unit is None and self._is_baseline(c))
                and c.settings.get("train_id", c.settings["id"]) == c.settings["id"]]

    def _is_baseline(self, cell: Cell) -> bool:
        return compression_method(self.compression[cell.compression]["method"]).family == "none"

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
        return self.paths.representation(cell.model, cell.compression, cell.recovery_unit)

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
        """Every job of the grid, upstream before downstream."""
        p = self.paths
        out = [Job(f"download_text {t}", (p.text(t), p.text_manifest(t)), p.text_manifest(t), ())
               for t in self.texts]
        out += [Job(f"prepare_task {t}", (p.task_dir(t), p.task_manifest(t)), p.task_manifest(t), ())
                for t in self.tasks]
        for m in self.models:
            for c, entry in self.compression.items():
                manifest = p.model_manifest(m, c)
                if compression_method(entry["method"]).family == "none":
                    out.append(Job(f"download_model {m}", (p.checkpoint(m), manifest), manifest, ()))
                    continue
                out.append(Job(f"compress {m}/{c}", (p.checkpoint(m, c), p.masks(m, c),
                                                     p.quant_grids(m, c), manifest), manifest,
                               tuple(_flat(self.compress_inputs(m, c)))))
                if entry.get("export_packed"):
                    out.append(Job(f"pack {m}/{c}", (p.packed(m, c), p.packed_manifest(m, c)),
                                   p.packed_manifest(m, c), (p.checkpoint(m, c), p.quant_grids(m, c))))
        by_cell = {c.id: c for c in self.cells}
        units = {(c.model, c.compression, c.train_unit): c for c in self.cells if c.train_unit}
        for (m, c, unit_), cell in units.items():
            manifest = p.train_manifest(m, c, unit_)
            out.append(Job(f"train {m}/{c}/{unit_}", (p.adapter(m, c, unit_), manifest), manifest,
                           tuple(_flat(self.train_inputs(m, c, cell.settings["train_id"])))))
        for m, c, target, unit_ in self.deployments():  # exports first, then prompt cells
            manifest = p.deploy_manifest(m, c, target, unit_)
            if unit_ is None:
                out.append(Job(f"deploy {m}/{c}", (p.deployed(m, c, target),
                                                   p.deployed_samples(m, c, target), manifest),
                               manifest, tuple(_flat(self.deploy_inputs(m, c)))))
            else:
                cell = by_cell[f"{m}/{c}/{unit_}"]
                out.append(Job(f"deploy_prompt {cell.id}", (p.deployed_prompt(m, c, target, unit_),
                                                            p.deployed_samples(m, c, target, unit_),
                                                            manifest), manifest,
                               tuple(_flat(self.deploy_prompt_inputs(cell)))))
        for m, target in self.latency_runs():
            path = p.deploy_latency(m, target)
            out.append(Job(f"deploy_latency {m}", (path,), path,
                           tuple(_flat(self.deploy_latency_inputs(m, target)))))
        for cell in self.cells:
            results = self.eval_results(cell)
            out.append(Job(f"evaluate {cell.id}", (results, self.eval_samples(cell)), results,
                           tuple(_flat(self.eval_inputs(cell)))))
        if self.represented():
            inputs = self.paths.displacement_inputs
            out.append(Job("sample_inputs displacement", (inputs,), inputs,
                           tuple(_flat(self.sample_inputs_inputs()))))
        for cell in self.represented():
            path = self.representation(cell)
            out.append(Job(f"represent {cell.id}", (path,), path,
                           tuple(_flat(self.represent_inputs(cell)))))
        out.append(Job("aggregate aggregate", tuple(p.summary.values()), p.summary["manifest"],
                       tuple(_flat(self.aggregate_inputs()))))
        return out


def _flat(inputs: dict) -> list[str]:
    return [p for v in inputs.values() for p in (v if isinstance(v, list) else [v])]
