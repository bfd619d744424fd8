"""What a `compression:` entry says, without torch: its stages, id, the statistic it needs, the
checks of its settings and its storage cost. The pipeline reads these to build the grid; applying
an entry to a model is `apply.py`.

Pruning patterns: `sparsity` in (0,1) prunes exactly round(sparsity * numel) weights of each
layer; `n:m` keeps n weights in every m consecutive inputs of a row (2:4 = 50% sparse).
"""
from __future__ import annotations

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.registry import STATISTICS, compression_method, compression_methods, takers

# Keys any entry may set besides its method's settings.
COMMON_SETTINGS = frozenset({"method", "name", "export_packed", "deploy"})


def pattern_of(entry: dict) -> dict:
    """An entry's pattern as make_mask takes it: {"n", "m"} or {"sparsity"}."""
    if entry.get("pattern"):
        n, m = (int(x) for x in entry["pattern"].split(":"))
        return {"n": n, "m": m}
    return {"sparsity": entry["sparsity"]}


# What every pruning method takes; a pruned cell may also be quantized by a `quantize` entry.
PRUNING_SETTINGS = frozenset({"sparsity", "pattern", "quantize"})


def prune_id(entry: dict) -> str:
    level = entry["pattern"].replace(":", "to") if entry.get("pattern") else f"s{_num(entry['sparsity'])}"
    quant = entry.get("quantize")
    joint = f"+{compression_method(quant['method']).id_format(quant)}" if quant else ""
    return f"{entry['method']}-{level}{joint}"


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_pattern(entry: dict, key: str) -> None:
    """Exactly one of sparsity or pattern; N < M; quantization groups hold whole N:M groups."""
    if ("sparsity" in entry) == ("pattern" in entry):
        raise ConfigError(key, f"method {entry['method']!r} needs exactly one of 'sparsity' or 'pattern'")
    if "pattern" in entry:
        n, m = (int(x) for x in entry["pattern"].split(":"))
        if n >= m:
            raise ConfigError(f"{key}.pattern", f"N:M needs N < M, got {entry['pattern']!r}")
        group = (entry.get("quantize") or {}).get("group_size")
        if group and group % m:
            raise ConfigError(f"{key}.quantize.group_size",
                              f"{group} does not hold whole {entry['pattern']} groups (M={m})")


# What every quantization method takes.
QUANTIZATION_SETTINGS = frozenset({"bits", "group_size", "symmetric"})


def quant_id(entry: dict) -> str:
    group = "row" if entry.get("group_size") is None else f"g{entry['group_size']}"
    flags = ("-sym" if entry.get("symmetric") else "") + ("-act" if entry.get("act_order") else "")
    return f"{entry['method']}-w{entry['bits']}-{group}{flags}"


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
    return entry.get("name") or compression_method(entry["method"]).id_format(entry)


def check_settings(entry: dict, key: str) -> None:
    """Every key of an entry, as the user wrote it (before defaults), is a setting of its method;
    a joint entry's `quantize` likewise."""
    methods = compression_methods()
    record = methods[entry["method"]]
    for name in sorted(set(entry) - record.settings - COMMON_SETTINGS):
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
        check = stage and compression_method(stage["method"]).check
        if check:
            check(stage, where)


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
