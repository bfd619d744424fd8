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

from knowledge_recovery.compression.calibration import sequential_compress
from knowledge_recovery.compression.entries import bits_per_weight, needs_calibration, stages, statistic
from knowledge_recovery.registry import compression_method


def target_linears(model) -> dict[str, nn.Linear]:
    """The transformer's linear layers; embeddings and the output head stay dense."""
    head = model.get_output_embeddings()
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and mod is not head}


def linear_widths(model) -> set[int]:
    """Input widths of the linear layers compression works on."""
    return {mod.in_features for mod in target_linears(model).values()}


@torch.no_grad()
def compress_weight(weight: torch.Tensor, entry: dict, stats=None):
    """Compress one weight matrix by every stage of the entry. Returns (new weight, keep-mask or
    None, quantization grid (scale, zero point per group) or None)."""
    w, keep, grid = weight, None, None
    for stage in stages(entry):
        record = compression_method(stage["method"])
        w, keep, stage_grid = record.apply(w, record.parse(stage), stats, keep)
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
    fragmented the heap above it. Figures: docs/measured.md, "Compression"."""
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
