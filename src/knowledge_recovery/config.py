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


def _quant_id(e: dict) -> str:
    group = "row" if e.get("group_size") is None else f"g{e['group_size']}"
    flags = ("-sym" if e.get("symmetric") else "") + ("-act" if e.get("act_order") else "")
    return f"{e['method']}-w{e['bits']}-{group}{flags}"


def _prune_id(e: dict) -> str:
    level = e["pattern"].replace(":", "to") if e.get("pattern") else f"s{_num(e['sparsity'])}"
    joint = f"+{_quant_id(e['quantize'])}" if e.get("quantize") else ""
    return f"{e['method']}-{level}{joint}"


# How a compression or recovery entry is named in paths and MLflow, from its key settings.
# Entries that differ only in other settings need an explicit `name`.
ID_FORMATS = {
    "dense": lambda e: "dense",
    "magnitude": _prune_id,
    "wanda": _prune_id,
    "sparsegpt": _prune_id,
    "rtn": _quant_id,
    "gptq": _quant_id,
    "awq": _quant_id,
    "none": lambda e: "none",
    "prompt_tuning": lambda e: f"prompt-n{e['num_virtual_tokens']}",
    "prefix_tuning": lambda e: f"prefix-n{e['num_virtual_tokens']}",
    "lora": lambda e: f"lora-r{e['r']}",
    "idp": lambda e: (f"idp-m{e['pool_size']}-n{e['num_virtual_tokens']}-{e['scheme']}"
                      + ("" if e.get("selection", "attention") == "attention" else f"-{e['selection']}")),
}

# Settings each recovery method takes (besides method, name, training).
RECOVERY_KEYS = {
    "none": set(),
    "prompt_tuning": {"num_virtual_tokens", "max_params"},
    "prefix_tuning": {"num_virtual_tokens", "prefix_init", "max_params"},
    "lora": {"r", "alpha", "dropout", "target_modules", "max_params"},
    "idp": {"num_virtual_tokens", "pool_size", "score_layers", "scheme", "balance_weight",
            "selection", "max_params"},
}
# Chosen at evaluation, not training: entries that differ only in these share one adapter.
EVAL_ONLY_KEYS = {"selection", "name", "id", "train_id"}


def entry_id(entry: dict) -> str:
    return entry.get("name") or ID_FORMATS[entry["method"]](entry)


def train_id(entry: dict) -> str:
    """Id of the adapter a recovery entry evaluates (IDP selection variants share one)."""
    return entry.get("name") or ID_FORMATS[entry["method"]]({**entry, "selection": "attention"})


def training_spec(entry: dict) -> dict:
    """What the train step depends on: the entry without its evaluation-only settings."""
    return {k: v for k, v in entry.items() if k not in EVAL_ONLY_KEYS}


def compression_spec(entry: dict) -> dict:
    """What the compress step depends on: asking for a packed export does not change it."""
    return {k: v for k, v in entry.items() if k != "export_packed"}


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


def preflight(config: dict, base_dir: str | os.PathLike = ".", check_models: bool = True) -> dict:
    """Checks the schema cannot express. Returns the config with derived fields added.
    `check_models=False` skips the checks that build models (they import torch, transformers
    and peft: ~7 s), for processes that only need the derived fields."""
    base = Path(base_dir)
    _unique([m["name"] for m in config["models"]], "models", "name")
    for i, m in enumerate(config["models"]):
        if m["source"] == "local" and not (base / m["path"]).is_dir():
            raise ConfigError(f"models[{i}].path", f"no such model folder: {m['path']}")

    # The dense row is the baseline every table compares against: always present.
    if not any(c["method"] == "dense" for c in config["compression"]):
        config["compression"].insert(0, {"method": "dense"})
    for i, c in enumerate(config["compression"]):
        check_compression(c, f"compression[{i}]")
        c["id"] = entry_id(c)
    _unique([c["id"] for c in config["compression"]], "compression", "id (set 'name' to tell them apart)")

    trained: dict[str, tuple[int, dict]] = {}
    for i, r in enumerate(config["recovery"]):
        key = f"recovery[{i}]"
        stray = set(r) - RECOVERY_KEYS[r["method"]] - {"method", "name", "training"}
        if stray:
            raise ConfigError(f"{key}.{sorted(stray)[0]}", f"not a setting of method {r['method']!r}")
        r["id"] = entry_id(r)
        _unique([e["id"] for e in config["recovery"][: i + 1]], "recovery",
                "id (set 'name' to tell them apart)")
        if r["method"] == "none":
            if "training" in r:
                raise ConfigError(f"{key}.training", "method 'none' trains nothing")
            continue
        merged = dict(config["training"])
        merged.update(r.get("training", {}))
        r["training"] = merged
        r["train_id"] = train_id(r)
        first = trained.setdefault(r["train_id"], (i, training_spec(r)))
        if first[1] != training_spec(r):
            raise ConfigError(key, f"trains adapter {r['train_id']!r} like recovery[{first[0]}] but "
                              "with other settings: give one of them a 'name'")
    if check_models:
        check_on_known_models(config, base)

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


PRUNING_KEYS = {"sparsity", "pattern", "quantize"}
QUANT_KEYS = {"bits", "group_size", "symmetric", "act_order"}


def check_compression(c: dict, key: str) -> None:
    """Settings that contradict each other or the method."""
    method = c["method"]
    given = set(c) - {"method", "name"}
    if c.get("export_packed"):
        from .packing import unpackable_reason

        reason = unpackable_reason(c)
        if reason:
            raise ConfigError(f"{key}.export_packed", reason)
    if method == "dense" and given:
        raise ConfigError(key, f"method 'dense' takes no settings, got {sorted(given)}")
    if method in ("magnitude", "wanda", "sparsegpt"):
        if ("sparsity" in c) == ("pattern" in c):
            raise ConfigError(key, f"method {method!r} needs exactly one of 'sparsity' or 'pattern'")
        stray = given & QUANT_KEYS
        if stray:
            raise ConfigError(f"{key}.{sorted(stray)[0]}",
                              "quantization settings of a pruning method belong under 'quantize'")
        if "pattern" in c:
            n, m = (int(x) for x in c["pattern"].split(":"))
            if n >= m:
                raise ConfigError(f"{key}.pattern", f"N:M needs N < M, got {c['pattern']!r}")
            group = (c.get("quantize") or {}).get("group_size")
            if group and group % m:
                raise ConfigError(f"{key}.quantize.group_size",
                                  f"{group} does not hold whole {c['pattern']} groups (M={m})")
    if method in ("rtn", "gptq", "awq"):
        stray = given & PRUNING_KEYS
        if stray:
            raise ConfigError(f"{key}.{sorted(stray)[0]}", f"not a setting of method {method!r}")
    for stage, where in ((c, key), (c.get("quantize") or {}, f"{key}.quantize")):
        if stage.get("method") in ("rtn", "awq") and stage.get("act_order"):
            raise ConfigError(f"{where}.act_order", "act_order applies to 'gptq' only")


def check_widths(c: dict, key: str, widths, model_name: str) -> None:
    """Group sizes and N:M groups must divide the input width of every compressed linear."""
    sizes = [(c.get("group_size"), "group_size"),
             ((c.get("quantize") or {}).get("group_size"), "quantize.group_size"),
             (int(c["pattern"].split(":")[1]) if c.get("pattern") else None, "pattern")]
    for width in sorted(widths):
        for size, what in sizes:
            if size and width % size:
                raise ConfigError(f"{key}.{what}", f"{size} does not divide the layer width "
                                  f"{width} of model {model_name!r}")


def experiment_dir(config: dict) -> str:
    """Everything one config produces lives here: `<results_dir>/<experiment>`."""
    return f"{config['results_dir']}/{config['experiment']}"


def checkpoint_path(config: dict, model_name: str, compression: str = "dense") -> str:
    """A model's checkpoint folder: dense ones come from download, every other one from compress."""
    return f"{experiment_dir(config)}/models/{model_name}/{compression}/checkpoint"


def known_model_config(model: dict, base: Path, downloaded: Path | None = None):
    """The transformers config of a model whose shape is known before any job runs: tiny random
    models, local folders, hub models with config.json in the HF cache, and any model the
    download step has fetched already (a resumed run). Else None: the compress and train steps
    run the same checks on those before they start work."""
    if model["source"] == "tiny-random":
        from .models import tiny_config

        return tiny_config(model)
    folders = [base / downloaded] if downloaded is not None else []
    if model["source"] == "local":
        folders.append(base / model["path"])
    if model["source"] == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model["repo"], "config.json",
                                        revision=model.get("revision", "main"))
        if isinstance(cached, str):
            folders.append(Path(cached).parent)
    for folder in folders:
        if (folder / "config.json").is_file():
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(folder)
    return None


def empty_model(model_cfg):
    """The model of a config on the meta device: its modules and shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_cfg)


def check_on_known_models(config: dict, base: Path) -> None:
    """On every model whose shape is known: each compression entry fits its layer widths; each
    trained recovery entry attaches (LoRA targets match, IDP score layers exist, budgets hold)."""
    from .compression import linear_widths

    for m in config["models"]:
        model_cfg = known_model_config(m, base, Path(checkpoint_path(config, m["name"])))
        if model_cfg is None:
            continue
        widths = linear_widths(empty_model(model_cfg))
        for i, c in enumerate(config["compression"]):
            check_widths(c, f"compression[{i}]", widths, m["name"])
        for i, r in enumerate(config["recovery"]):
            if r["method"] != "none":
                check_recovery_entry(r, f"recovery[{i}]", model_cfg, m["name"])


def check_recovery_entry(entry: dict, key: str, model_cfg, model_name: str) -> int:
    """Build one entry on an empty (meta) model of this config; returns its parameter count."""
    from .recovery import attach_checked, trainable_parameters

    return trainable_parameters(attach_checked(empty_model(model_cfg), entry, key, model_name,
                                               init=False))


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
