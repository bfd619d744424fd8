"""The grid: normalised entries (ids, train ids, merged training settings), the cells to
evaluate, and the specs each Snakemake rule compares to decide what to re-run."""
from __future__ import annotations

from dataclasses import dataclass, field

from knowledge_recovery.compression import entries as compression
from knowledge_recovery.evaluation.tasks import task_names
from knowledge_recovery.pipeline.paths import unit
from knowledge_recovery.recovery import entries as recovery
from knowledge_recovery.registry import compression_method, recovery_method

# Bookkeeping keys: they name an entry and do not change what is trained.
ID_KEYS = {"name", "id", "train_id"}


def normalise(config: dict) -> dict:
    """Derive, once, in place, what the rest of the workflow reads: the dense row (the baseline
    every table compares against: always present), each entry's id, and for trained recovery
    entries their merged training settings and the id of the adapter they evaluate."""
    if not any(compression_method(c["method"]).family == "none" for c in config["compression"]):
        config["compression"].insert(0, {"method": "dense"})
    for c in config["compression"]:
        c["id"] = compression.entry_id(c)
    for r in config["recovery"]:
        r["id"] = recovery.entry_id(r)
        if recovery_method(r["method"]).trains:
            r["training"] = {**config["training"], **r.get("training", {})}
            r["train_id"] = recovery.train_id(r)
    return config


def training_spec(entry: dict) -> dict:
    """What the train step depends on: the entry without its evaluation-only settings."""
    skip = ID_KEYS | recovery.eval_only_settings(entry)
    return {k: v for k, v in entry.items() if k not in skip}


def compression_spec(entry: dict) -> dict:
    """What the compress step depends on: asking for a packed export or a deployment does not
    change it."""
    return {k: v for k, v in entry.items() if k not in ("export_packed", "deploy")}


def evaluation_settings(config: dict, model: str) -> dict:
    """The `evaluation:` settings of one model's cells: dtype `model` (the default) is the
    model's own dtype, in which its checkpoints are written."""
    settings = dict(config["evaluation"])
    if settings["dtype"] == "model":
        settings["dtype"] = next(m["dtype"] for m in config["models"] if m["name"] == model)
    return settings


def trained(config: dict) -> dict[str, dict]:
    """Adapters to train, by train id, with their training specs."""
    return {r["train_id"]: training_spec(r) for r in config["recovery"]
            if recovery_method(r["method"]).trains}


@dataclass(frozen=True)
class Cell:
    """One evaluated model: model x compression x recovery (x seed for trained recoveries)."""

    model: str
    compression: str
    recovery: str
    seed: int | None = None
    settings: dict = field(default_factory=dict, compare=False, hash=False)
    # Facts of its methods (out of repr, which Snakemake's params trigger compares): whether its
    # recovery trains an adapter, whether its compression is the dense baseline.
    trains: bool = field(default=False, compare=False, repr=False)
    baseline: bool = field(default=False, compare=False, repr=False)

    @property
    def recovery_unit(self) -> str:
        return unit(self.recovery, self.seed)

    @property
    def train_unit(self) -> str | None:
        """The unit of the adapter this cell evaluates, None if nothing is trained."""
        return None if self.seed is None else unit(self.settings["train_id"], self.seed)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.compression}/{self.recovery_unit}"

    @property
    def axes(self) -> dict:
        return {"model": self.model, "compression": self.compression,
                "recovery": self.recovery, "seed": "" if self.seed is None else str(self.seed)}


def cells(config: dict) -> list[Cell]:
    """Expand the grid. Recovery is trained on compressed models (and on dense if recover_dense)."""
    out = []
    for m in config["models"]:
        for c in config["compression"]:
            baseline = compression_method(c["method"]).family == "none"
            for r in config["recovery"]:
                if not recovery_method(r["method"]).trains:
                    out.append(Cell(m["name"], c["id"], r["id"], None, r, baseline=baseline))
                elif not baseline or config["recover_dense"]:
                    out.extend(Cell(m["name"], c["id"], r["id"], s, r, trains=True,
                                    baseline=baseline) for s in config["seeds"])
    return out


def harness_tasks(entries: list[dict]) -> list[dict]:
    """What `evaluation.evaluate_cell` scores for `tasks:` entries: each lm-eval task with the
    entry's row limit."""
    return [{"name": n, "limit": t.get("limit")} for t in entries for n in task_names(t)]


def by_id(entries: list[dict], key: str = "id") -> dict[str, dict]:
    return {e[key]: e for e in entries}
