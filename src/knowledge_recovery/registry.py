"""Method registries: one record per compression or recovery method, and the typed settings
each method declares.

Each method's module in `compression/methods/` or `recovery/methods/` declares its settings as a
dataclass of `setting` fields (type, default, help text, schema checks; `Settings.check` for
settings that contradict each other, `Settings.id` for its id) and registers its record when
imported, the way peft's tuners call `register_peft_method`; every module there is imported on
the first look-up. Everything else (dispatch, ids, settings checks, packing, evaluation, the
config schema's method parts: `pipeline/schema.py`) reads the records, so adding a method is its
module and its tests.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

# Statistics of a linear layer's inputs that calibration gathers for a compression method.
STATISTICS = ("none", "col_norms", "hessian")  # the Hessian comes with the column norms


def setting(default: Any = dataclasses.MISSING, *, help: str, entry_level: bool = False,
            **schema) -> Any:
    """A field of a method's settings. No default: the entry must give it. A default of None:
    the entry may leave it out (nothing is filled in). `schema`: JSON-schema keywords beyond what
    the type says (minimum, pattern; `$ref` replaces the type's schema). `entry_level`: it
    applies to a whole compression entry, not to a joint entry's `quantize` stage."""
    meta = {"help": help, "schema": schema, "entry_level": entry_level}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """An entry's settings, typed: a method subclasses this (or its family's subclass) and adds
    its own `setting` fields. Built from an entry by `settings_of`; keys of the entry that are
    not fields (ids, merged training settings) are left out."""

    method: str

    def id(self) -> str:
        """The entry's id in paths and MLflow (unless the entry gives a `name`)."""
        return self.method

    def check(self, key: str) -> None:
        """Raise ConfigError (naming `key`.<setting>) for settings that contradict each other."""


def setting_fields(settings: type[Settings]) -> list[dataclasses.Field]:
    """The settings an entry of this class may give (all fields but `method`)."""
    return [f for f in dataclasses.fields(settings) if f.name != "method"]


def settings_of(settings: type[Settings], entry: dict) -> Settings:
    return settings(method=entry["method"],
                    **{f.name: entry[f.name] for f in setting_fields(settings) if f.name in entry})


def default_of(f: dataclasses.Field) -> Any:
    """A field's default, `dataclasses.MISSING` if the entry must give it."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def type_schema(annotation) -> dict:
    """JSON schema of a settings type: bool, int, float, str, Literal, list[...], X | None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"settings type {annotation}: one type or one type | None")
        return type_schema(inner[0])
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
    if annotation in simple:
        return {"type": simple[annotation]}
    raise TypeError(f"settings type {annotation}: no JSON schema for it")


def field_schema(settings: type[Settings], f: dataclasses.Field) -> dict:
    """A setting's schema (without default and description): its type's, widened to null when
    None is a value other than the default (`group_size: null` is one group per row), plus the
    keywords it was declared with."""
    extra = dict(f.metadata.get("schema", {}))
    if "$ref" in extra:
        return extra
    hint = typing.get_type_hints(settings)[f.name]
    out = type_schema(hint)
    nullable = type(None) in typing.get_args(hint) and default_of(f) is not None
    if nullable and "type" in out:
        out["type"] = [out["type"], "null"]
    return {**out, **extra}


@dataclass(frozen=True)
class CompressionMethod:
    name: str
    family: str  # "none" (the dense baseline), "pruning" or "quantization"
    statistic: str  # one of STATISTICS
    # its settings: a subclass of compression.entries' PruningSettings or QuantizationSettings
    # (or CompressionSettings for the dense baseline)
    settings: type
    apply: Callable  # (weight, stage's Settings, stats, keep) -> (weight, keep-mask or None, grid or None)
    packable: bool = False  # its grid (scale per group) fits compressed-tensors' pack format

    def parse(self, entry: dict) -> Settings:
        return settings_of(self.settings, entry)

    @property
    def setting_names(self) -> frozenset:
        return frozenset(f.name for f in setting_fields(self.settings))


@dataclass(frozen=True)
class RecoveryMethod:
    name: str
    # its settings: a subclass of recovery.entries' TrainedSettings (or RecoverySettings for a
    # method that trains nothing)
    settings: type
    build: Callable | None = None  # (base, Settings, seed, init) -> model; None: trains nothing
    save: Callable | None = None  # (model, folder) -> None
    load: Callable | None = None  # (base, folder) -> model, for inference
    fit_setting: str = "method"  # the setting to blame when the method does not fit a model
    # Settings chosen at evaluation, with the value training assumes: entries that differ only
    # in these share one trained adapter.
    eval_only: dict = field(default_factory=dict)
    padding_aware: bool = False  # lm-eval must pass it an attention mask (see evaluation/harness.py)
    # (model, Settings) -> evaluation.lm.ContextScorer, or None to score each (context, answer)
    # whole; unset: ContextScorer.for_model
    context_scorer: Callable | None = None
    evaluate: Callable | None = None  # (model, Settings, run) -> results; run(log_samples) runs lm-eval
    # (model, Settings) -> None: set a loaded adapter up for one lm-eval run of the entry (for
    # lm-eval's command line, which runs the model as it is: `evaluation/lm.py`)
    prepare_evaluation: Callable | None = None
    # Where it acts: "input" (learned tokens or keys/values before the input; the weights are
    # left alone) or "weights" (the model's weights or activations are changed). The study's
    # question is whether "input" recovers what compression lost as well as "weights" does.
    side: str | None = None
    # (model) -> [(keys, values)] per layer, each (1, kv heads, n, head dim): the keys and values
    # the method puts before every input, the same for all inputs. Set: the method deploys as
    # that cache in front of the unchanged exported model (deployment/openvino.py).
    prompt_cache: Callable | None = None
    # (model, Settings, tokenizer, texts, cfg, seed, log=, teacher=, resume_path=) -> (best state,
    # history), `texts` the entry's training texts (`recovery.training_texts`); unset:
    # `training.train` on the one text
    train: Callable | None = None

    @property
    def trains(self) -> bool:
        return self.build is not None

    def parse(self, entry: dict) -> Settings:
        return settings_of(self.settings, entry)

    @property
    def setting_names(self) -> frozenset:
        return frozenset(f.name for f in setting_fields(self.settings))


_COMPRESSION: dict[str, CompressionMethod] = {}
_RECOVERY: dict[str, RecoveryMethod] = {}
_loaded = False


def _add(table: dict, record) -> None:
    if record.name in table:
        raise ValueError(f"method {record.name!r} is registered twice")
    table[record.name] = record


def register_compression_method(record: CompressionMethod) -> CompressionMethod:
    if record.statistic not in STATISTICS:
        raise ValueError(f"{record.name}: statistic must be one of {STATISTICS}")
    _add(_COMPRESSION, record)
    return record


def register_recovery_method(record: RecoveryMethod) -> RecoveryMethod:
    _add(_RECOVERY, record)
    return record


def _load_methods() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for package in ("knowledge_recovery.compression.methods",
                        "knowledge_recovery.recovery.methods"):
            methods = importlib.import_module(package)
            for info in pkgutil.iter_modules(methods.__path__):
                importlib.import_module(f"{package}.{info.name}")


def compression_methods() -> dict[str, CompressionMethod]:
    _load_methods()
    return _COMPRESSION


def recovery_methods() -> dict[str, RecoveryMethod]:
    _load_methods()
    return _RECOVERY


def no_grad(fn):
    """`torch.no_grad()` for a method's function, importing torch at the first call: every method
    module is imported on the first look-up, also by the pipeline, which does without torch."""

    @functools.wraps(fn)
    def without_grad(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_grad


def takers(records: dict, setting: str) -> list[str]:
    """Names of the methods among `records` that take `setting` (for error messages)."""
    return sorted(r.name for r in records.values() if setting in r.setting_names)


def compression_method(name: str) -> CompressionMethod:
    return compression_methods()[name]


def recovery_method(name: str) -> RecoveryMethod:
    return recovery_methods()[name]
