"""What a `compression:` entry says, without torch: its stages, id, the statistic it needs, the
checks of its settings and its storage cost. The pipeline reads these to build the grid; applying
an entry to a model is `apply.py`.

Pruning patterns: `sparsity` in (0,1) prunes exactly round(sparsity * numel) weights of each
layer; `n:m` keeps n weights in every m consecutive inputs of a row (2:4 = 50% sparse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.registry import (STATISTICS, Settings, compression_method,
                                         compression_methods, setting, takers)

NAME = {"$ref": "#/$defs/name"}


@dataclass(frozen=True, kw_only=True)
class CompressionSettings(Settings):
    """What any compression entry may set besides its method's settings (the dense baseline's
    settings)."""

    name: str | None = setting(None, help="overrides the id derived from the settings",
                               entry_level=True, **NAME)
    deploy: Literal["openvino"] | None = setting(
        None, entry_level=True,
        help="also export this compressed model to a real low-bit runtime "
             "(models/<model>/<id>/openvino, in its own environment: .venv-openvino or "
             "envs/openvino.yaml), with its own grid, checked against the evaluated model "
             "(deployment:)")
    export_packed: bool | None = setting(
        None, entry_level=True,
        help="also write models/<model>/<id>/packed: a real low-bit checkpoint in "
             "compressed-tensors' pack-quantized format (symmetric rtn or gptq stage only), "
             "checked to decode to the evaluated weights")


def true_sequential_setting():
    # one calibration pass per block, as in the Wanda and SparseGPT reference code; for
    # quantization as accurate as true-sequential on SmolLM2 at 4 bits, and faster
    # (docs/measured.md, "Compression"; bench/compression.py)
    return setting(False, entry_level=True, help="data-aware methods: linears of a block see "
                   "the outputs of those already compressed")


def damping_setting():
    return setting(0.01, help="Hessian damping, as a fraction of the mean diagonal",
                   exclusiveMinimum=0, maximum=1)


@dataclass(frozen=True, kw_only=True)
class PruningSettings(CompressionSettings):
    """What every pruning method takes; a pruned cell may also be quantized by `quantize`."""

    sparsity: float | None = setting(None, help="fraction of each layer's weights set to zero",
                                     exclusiveMinimum=0, exclusiveMaximum=1)
    pattern: str | None = setting(None, help="'N:M' keeps N weights in every M consecutive "
                                  "inputs", pattern="^[1-9][0-9]*:[1-9][0-9]*$")
    quantize: dict | None = setting(None, entry_level=True, help="quantize after pruning in "
                                    "the same cell, keeping the mask",
                                    **{"$ref": "#/$defs/quantization"})

    @property
    def mask_pattern(self) -> dict:
        """The pattern as make_mask takes it: {"n", "m"} or {"sparsity"}."""
        if self.pattern:
            n, m = (int(x) for x in self.pattern.split(":"))
            return {"n": n, "m": m}
        return {"sparsity": self.sparsity}

    def id(self) -> str:
        level = self.pattern.replace(":", "to") if self.pattern else f"s{_num(self.sparsity)}"
        quant = self.quantize
        joint = f"+{compression_method(quant['method']).parse(quant).id()}" if quant else ""
        return f"{self.method}-{level}{joint}"

    def check(self, key: str) -> None:
        """Exactly one of sparsity or pattern; N < M; quantization groups hold whole N:M groups."""
        if (self.sparsity is None) == (self.pattern is None):
            raise ConfigError(key, f"method {self.method!r} needs exactly one of 'sparsity' or "
                              "'pattern'")
        if self.pattern:
            n, m = self.mask_pattern["n"], self.mask_pattern["m"]
            if n >= m:
                raise ConfigError(f"{key}.pattern", f"N:M needs N < M, got {self.pattern!r}")
            group = (self.quantize or {}).get("group_size")
            if group and group % m:
                raise ConfigError(f"{key}.quantize.group_size",
                                  f"{group} does not hold whole {self.pattern} groups (M={m})")


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True, kw_only=True)
class QuantizationSettings(CompressionSettings):
    """What every quantization method takes."""

    bits: Literal[2, 3, 4, 8] = setting(help="bits per weight")
    group_size: int | None = setting(128, minimum=1, help="quantization group size along the "
                                     "input dimension; null means one group per row")
    symmetric: bool = setting(False, help="a grid symmetric around zero, without zero point")

    def id(self) -> str:
        group = "row" if self.group_size is None else f"g{self.group_size}"
        return f"{self.method}-w{self.bits}-{group}" + ("-sym" if self.symmetric else "")


def stages(entry: dict) -> list[dict]:
    """A joint entry is two stages: its pruning, then its `quantize` sub-entry."""
    first = {k: v for k, v in entry.items() if k != "quantize"}
    return [first] + ([entry["quantize"]] if entry.get("quantize") else [])


def quant_stage(entry: dict) -> dict | None:
    """The quantization stage of a compression entry (a joint entry's `quantize`), if any."""
    return next((s for s in stages(entry)
                 if compression_method(s["method"]).family == "quantization"), None)


def statistic(entry: dict) -> str:
    """The richest input statistic any stage needs: none, col_norms or hessian."""
    return max((compression_method(s["method"]).statistic for s in stages(entry)),
               key=STATISTICS.index)


def needs_calibration(entry: dict) -> bool:
    return statistic(entry) != "none"


def entry_id(entry: dict) -> str:
    return entry.get("name") or compression_method(entry["method"]).parse(entry).id()


def check_settings(entry: dict, key: str) -> None:
    """Every key of an entry, as the user wrote it (before defaults), is a setting of its method;
    a joint entry's `quantize` likewise."""
    methods = compression_methods()
    record = methods[entry["method"]]
    for name in sorted(set(entry) - record.setting_names - {"method"}):
        others = takers(methods, name)
        if record.family == "pruning" and any(methods[t].family == "quantization" for t in others):
            raise ConfigError(f"{key}.{name}",
                              "quantization settings of a pruning method belong under 'quantize'")
        raise ConfigError(f"{key}.{name}", f"not a setting of method {entry['method']!r}"
                          + (f" (it is one of {', '.join(others)})" if others else ""))
    if entry.get("quantize"):
        check_settings(entry["quantize"], f"{key}.quantize")


def check_entry(entry: dict, key: str) -> None:
    """Settings that contradict each other or the method, on the entry with its defaults."""
    for stage, where in ((entry, key), (entry.get("quantize"), f"{key}.quantize")):
        if stage:
            compression_method(stage["method"]).parse(stage).check(where)


def check_widths(entry: dict, key: str, widths, model_name: str) -> None:
    """Group sizes and N:M groups must divide the input width of every compressed linear."""
    sizes = [(entry.get("group_size"), "group_size"),
             ((entry.get("quantize") or {}).get("group_size"), "quantize.group_size"),
             (int(entry["pattern"].split(":")[1]) if entry.get("pattern") else None, "pattern")]
    for width in sorted(widths):
        for size, what in sizes:
            if size and width % size:
                raise ConfigError(f"{key}.{what}", f"{size} does not divide the layer width "
                                  f"{width} of model {model_name!r}")


def bits_per_weight(entry: dict, width: int, sparsity: float) -> float:
    """Storage cost of one weight if the layer were packed (16-bit baseline): quantized values
    plus per-group float16 scale (and zero point when asymmetric); pruned layers add a 1-bit mask
    and store only the kept values."""
    bits = 16.0
    quant = quant_stage(entry)
    if quant:
        group = quant["group_size"] or width
        bits = quant["bits"] + 16 * (1 if quant["symmetric"] else 2) / group
    if any(compression_method(s["method"]).family == "pruning" for s in stages(entry)):
        return bits * (1 - sparsity) + 1
    return bits


def unpackable_reason(entry: dict) -> str | None:
    """Why the entry's checkpoint cannot be exported packed, or None when it can."""
    packable = " or ".join(sorted(m.name for m in compression_methods().values() if m.packable))
    quant = quant_stage(entry)
    if quant is None:
        return f"packed export needs a quantization stage ({packable})"
    if not compression_methods()[quant["method"]].packable:
        return f"packed export supports {packable}, not {quant['method']!r}"
    if not quant.get("symmetric"):
        return ("packed export needs symmetric: true (transformers cannot load asymmetric "
                "pack-quantized checkpoints: vllm-project/llm-compressor#1618)")
    return None
