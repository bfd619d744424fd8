"""Method registries: one record per compression or recovery method.

Each method's module in `compression/methods/` or `recovery/methods/` registers its record when
imported, the way peft's tuners call `register_peft_method`; every module there is imported on
the first look-up. Everything else (dispatch, ids, settings checks, packing, evaluation) reads the records,
so adding a method touches its module, its record and the config schema, and nothing else.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

# Statistics of a linear layer's inputs that calibration gathers for a compression method.
STATISTICS = ("none", "col_norms", "hessian")  # the Hessian comes with the column norms


@dataclass(frozen=True)
class CompressionMethod:
    name: str
    family: str  # "none" (the dense baseline), "pruning" or "quantization"
    statistic: str  # one of STATISTICS
    settings: frozenset  # keys an entry may set, besides method, name and export_packed
    id_format: Callable[[dict], str]  # the entry's id in paths and MLflow
    apply: Callable  # (weight, stage, stats, keep) -> (weight, keep-mask or None, grid or None)
    packable: bool = False  # its grid (scale per group) fits compressed-tensors' pack format
    check: Callable | None = None  # (entry with defaults, config key) -> None; raises ConfigError


@dataclass(frozen=True)
class RecoveryMethod:
    name: str
    settings: frozenset  # keys an entry may set, besides method, name (and max_params, training)
    id_format: Callable[[dict], str]
    build: Callable | None = None  # (base, entry, seed, init) -> model; None: trains nothing
    save: Callable | None = None  # (model, folder) -> None
    load: Callable | None = None  # (base, folder) -> model, for inference
    fit_setting: str = "method"  # the setting to blame when the method does not fit a model
    # Settings chosen at evaluation, with the value training assumes: entries that differ only
    # in these share one trained adapter.
    eval_only: dict = field(default_factory=dict)
    padding_aware: bool = False  # lm-eval must pass it an attention mask (see evaluation/harness.py)
    # (model, entry) -> evaluation.lm.ContextScorer, or None to score each (context, answer)
    # whole; unset: ContextScorer.for_model
    context_scorer: Callable | None = None
    evaluate: Callable | None = None  # (model, entry, run) -> results; run(log_samples) runs lm-eval
    # (model, entry) -> None: set a loaded adapter up for one lm-eval run of the entry (for
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
    # (entry with defaults, config key) -> None: settings that contradict each other; raises
    # ConfigError naming the key
    check: Callable | None = None
    # (model, entry, tokenizer, texts, cfg, seed, log=, teacher=, resume_path=) -> (best state,
    # history), `texts` the entry's training texts (`recovery.training_texts`); unset:
    # `training.train` on the one text
    train: Callable | None = None

    @property
    def trains(self) -> bool:
        return self.build is not None


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
    return sorted(r.name for r in records.values() if setting in r.settings)


def compression_method(name: str) -> CompressionMethod:
    return compression_methods()[name]


def recovery_method(name: str) -> RecoveryMethod:
    return recovery_methods()[name]
