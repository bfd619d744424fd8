"""Compression of a float HF model in memory, in place, by one `compression:` config entry.

Weights stay float ("fake quant"), so transformers, peft and lm-eval load the result unchanged;
masks and per-layer statistics are returned for the manifest. Each stage's method comes from the
registry (`methods/`). Data-free methods work layer by layer on the weights; methods that need
input statistics go block by block through `calibration.sequential_compress`. A joint entry
prunes, then quantizes with the mask kept.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from .calibration import sequential_compress
from .errors import ConfigError
from .registry import STATISTICS, compression_method, compression_methods, takers

# Keys any entry may set besides its method's settings.
COMMON_SETTINGS = frozenset({"method", "name", "export_packed", "deploy"})


def target_linears(model) -> dict[str, nn.Linear]:
    """The transformer's linear layers; embeddings and the output head stay dense."""
    head = model.get_output_embeddings()
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and mod is not head}


def linear_widths(model) -> set[int]:
    """Input widths of the linear layers compression works on."""
    return {mod.in_features for mod in target_linears(model).values()}


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


@torch.no_grad()
def compress_weight(weight: torch.Tensor, entry: dict, stats=None):
    """Compress one weight matrix by every stage of the entry. Returns (new weight, keep-mask or
    None, quantization grid (scale, zero point per group) or None)."""
    w, keep, grid = weight, None, None
    for stage in stages(entry):
        w, keep, stage_grid = compression_method(stage["method"]).apply(w, stage, stats, keep)
        grid = grid if stage_grid is None else stage_grid
        if keep is not None:
            w = w * keep  # the mask survives every later stage
    return w.to(weight.dtype), keep, grid


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """[rows, cols] bool -> [rows, ceil(cols / 8)] uint8, 8 weights a byte (lowest bit first):
    a 7B model's masks take 0.8 GB instead of 6.5 GB."""
    rows, cols = keep.shape
    bits = torch.nn.functional.pad(keep.to(torch.uint8), (0, -cols % 8)).view(rows, -1, 8)
    return (bits << torch.arange(8, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of `pack_mask`: the bool keep-mask of a layer with `cols` inputs."""
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(len(packed), -1)[:, :cols].bool()


def _return_freed_memory_to_the_os(activation_bytes: int) -> None:
    """glibc raises its mmap threshold after multi-MB buffers are freed, then keeps later ones
    in its heap: layer-by-layer compression frees such buffers (weights, Hessians) every layer,
    and the process grew block by block. A fixed threshold hands them back.
    `activation_bytes` (0 for none) sets it just above one sample's largest activation, so that
    activations, allocated and freed again for every sample, are reused from the heap (mmapping
    each was costly); methods that build a Hessian per layer pass 0: their width^2 matrices
    fragmented the heap above it. Figures: README, "Compression"."""
    threshold = min(max(2 * activation_bytes, 128 * 1024), 32 * 2**20)  # glibc's own bounds
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except OSError:  # not glibc
        pass


def compress(model, entry: dict, calibration: torch.Tensor | None = None, log=print):
    """Apply one `compression:` entry in place. Returns (masks packed by `pack_mask`,
    quantization grids `{layer}.weight_scale` / `{layer}.weight_zero_point` (RTN and GPTQ:
    what a packed export needs), statistics)."""
    layers = target_linears(model)
    need_h = statistic(entry) == "hessian"
    widest = max(max(m.in_features, m.out_features) for m in layers.values())
    tokens = calibration.shape[1] if calibration is not None and not need_h else 0
    _return_freed_memory_to_the_os(tokens * widest * next(model.parameters()).element_size())
    masks, grids, per_layer = {}, {}, {}

    def apply(name, layer, stats=None):
        w, keep, grid = compress_weight(layer.weight.data, entry, stats)
        layer.weight.data.copy_(w)
        if keep is not None:
            masks[f"{name}.weight"] = pack_mask(keep)
        if grid is not None:
            grids[f"{name}.weight_scale"], grids[f"{name}.weight_zero_point"] = grid
        zeros = int((layer.weight == 0).sum())
        per_layer[name] = {"numel": w.numel(), "zeros": zeros,
                           "bits_per_weight": bits_per_weight(entry, w.shape[1], zeros / w.numel())}

    if needs_calibration(entry):
        if calibration is None:
            raise ValueError(f"method {entry['method']!r} needs calibration data")
        names = {id(mod): name for name, mod in layers.items()}
        sequential_compress(model, calibration, lambda _n, mod, stats: apply(names[id(mod)], mod, stats),
                            need_hessian=need_h,
                            true_sequential=entry.get("true_sequential", False), log=log)
        # Calibration sees the decoder blocks only: a linear outside them has no statistics.
        missing = [n for n in layers if n not in per_layer]
        if missing:
            raise ValueError(f"linear layers outside the decoder blocks: {missing[:3]}")
    else:
        for name, layer in layers.items():
            apply(name, layer)
    return masks, grids, statistics(per_layer, model)


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


def statistics(per_layer: dict, model) -> dict:
    numel = sum(v["numel"] for v in per_layer.values())
    zeros = sum(v["zeros"] for v in per_layer.values())
    weight_bits = sum(v["numel"] * v["bits_per_weight"] for v in per_layer.values())
    other = sum(p.numel() for p in model.parameters()) - numel
    return {
        "compressed_params": numel,
        "other_params": other,
        "sparsity": zeros / max(numel, 1),
        "effective_bits_per_weight": weight_bits / max(numel, 1),
        "packed_bytes": int((weight_bits + other * 16) / 8),
        "per_layer_sparsity": {k: v["zeros"] / v["numel"] for k, v in per_layer.items()},
    }
