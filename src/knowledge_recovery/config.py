"""Config: schema validation with defaults, preflight checks, and the grid of cells.

Every error raised here names the config key at fault, and is raised before any job runs.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A config problem, with the key it is about."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key '{key}': {message}")
        self.key = key


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def validate_schema(config: dict) -> dict:
    """Validate against the JSON schema, filling defaults in place (snakemake.utils.validate)."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except WorkflowError as err:
        cause = err.__context__  # snakemake raises its WorkflowError while handling this
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        # The deepest error is the useful one ("sparsity: 1.5 is not < 1"), not "allOf failed".
        best = jsonschema.exceptions.best_match([cause, *cause.context]) if cause.context else cause
        raise ConfigError(_key(best.absolute_path), best.message) from None
    return config


# ---------------------------------------------------------------- ids
def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def compression_id(entry: dict) -> str:
    if entry.get("name"):
        return entry["name"]
    method = entry["method"]
    if method == "dense":
        return "dense"
    if method == "magnitude":
        return f"magnitude-s{_num(entry['sparsity'])}"
    if method == "rtn":
        group = "row" if entry.get("group_size") is None else f"g{entry['group_size']}"
        sym = "-sym" if entry.get("symmetric") else ""
        return f"rtn-w{entry['bits']}-{group}{sym}"
    raise ConfigError("compression.method", f"no id rule for method {method!r}")


def recovery_id(entry: dict) -> str:
    if entry.get("name"):
        return entry["name"]
    method = entry["method"]
    if method == "none":
        return "none"
    if method == "prompt_tuning":
        return f"prompt-n{entry['num_virtual_tokens']}"
    if method == "lora":
        return f"lora-r{entry['r']}"
    raise ConfigError("recovery.method", f"no id rule for method {method!r}")


# ---------------------------------------------------------------- grid
@dataclass(frozen=True)
class Cell:
    """One evaluated model: model x compression x recovery (x seed for trained recoveries)."""

    model: str
    compression: str
    recovery: str
    seed: int | None = None
    settings: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def recovery_unit(self) -> str:
        """The recovery path component: 'none' or '<recovery>/seed<k>'."""
        return self.recovery if self.seed is None else f"{self.recovery}/seed{self.seed}"

    @property
    def id(self) -> str:
        return f"{self.model}/{self.compression}/{self.recovery_unit}"

    @property
    def axes(self) -> dict:
        return {"model": self.model, "compression": self.compression,
                "recovery": self.recovery, "seed": "" if self.seed is None else str(self.seed)}


def preflight(config: dict, base_dir: str | os.PathLike = ".") -> dict:
    """Checks the schema cannot express. Returns the config with derived fields added."""
    base = Path(base_dir)
    _unique([m["name"] for m in config["models"]], "models", "name")
    for i, m in enumerate(config["models"]):
        if m["source"] == "local" and not (base / m["path"]).is_dir():
            raise ConfigError(f"models[{i}].path", f"no such model folder: {m['path']}")

    # The dense row is the baseline every table compares against: always present.
    if not any(c["method"] == "dense" for c in config["compression"]):
        config["compression"].insert(0, {"method": "dense"})
    for i, c in enumerate(config["compression"]):
        if c["method"] == "dense" and len(c) > 1 + ("name" in c):
            raise ConfigError(f"compression[{i}]", "method 'dense' takes no settings")
        c["id"] = compression_id(c)
    _unique([c["id"] for c in config["compression"]], "compression", "id (set 'name' to tell them apart)")

    for i, r in enumerate(config["recovery"]):
        r["id"] = recovery_id(r)
        if r["method"] != "none":
            merged = dict(config["training"])
            merged.update(r.get("training", {}))
            r["training"] = merged
        elif "training" in r:
            raise ConfigError(f"recovery[{i}].training", "method 'none' trains nothing")
    _unique([r["id"] for r in config["recovery"]], "recovery", "id (set 'name' to tell them apart)")

    if config["text"]["source"] == "files":
        for j, p in enumerate(config["text"]["paths"]):
            if not (base / p).is_file():
                raise ConfigError(f"text.paths[{j}]", f"no such file: {p}")

    _unique([t["name"] for t in config["tasks"]], "tasks", "name")
    for i, t in enumerate(config["tasks"]):
        if t["type"] == "local":
            path = base / t["path"]
            if not path.is_file():
                raise ConfigError(f"tasks[{i}].path", f"no such task file: {t['path']}")
            if path.suffix not in (".jsonl", ".json", ".csv", ".tsv"):
                raise ConfigError(f"tasks[{i}].path", f"unsupported file type {path.suffix!r}")
        if t["type"] != "probes" and "relations" in t:
            raise ConfigError(f"tasks[{i}].relations", "only 'probes' tasks have relations")
    return config


def _unique(values, key, what):
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(f"{key}[{i}]", f"duplicate {what}: {v!r}")
        seen.add(v)


def load_config(config: dict | str | os.PathLike, base_dir=".") -> dict:
    """Validate (schema + defaults) and preflight a config dict or YAML file."""
    if not isinstance(config, dict):
        with open(config) as fh:
            config = yaml.safe_load(fh) or {}
    config = copy.deepcopy(config)
    validate_schema(config)
    return preflight(config, base_dir)


def cells(config: dict) -> list[Cell]:
    """Expand the grid. Recovery is trained on compressed models (and on dense if recover_dense)."""
    out = []
    for m in config["models"]:
        for c in config["compression"]:
            for r in config["recovery"]:
                if r["method"] == "none":
                    out.append(Cell(m["name"], c["id"], r["id"], None, r))
                elif c["method"] != "dense" or config["recover_dense"]:
                    out.extend(Cell(m["name"], c["id"], r["id"], s, r) for s in config["seeds"])
    return out


def task_names(entry: dict) -> list[str]:
    """lm-eval task names of one `tasks:` entry (a probes entry yields one task per relation)."""
    if entry["type"] == "probes":
        return [f"{entry['name']}_{rel}" for rel in entry["relations"]]
    return [entry["name"]]


def by_id(entries: list[dict], key: str = "id") -> dict[str, dict]:
    return {e[key]: e for e in entries}
