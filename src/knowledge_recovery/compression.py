"""Compression methods: each takes a float HF model in memory and compresses its transformer
linear layers in place. Weights stay float ("fake quant"), so transformers, peft and lm-eval
load the result unchanged; masks and per-layer statistics are returned for the manifest.
"""
from __future__ import annotations

import torch
from torch import nn


def target_linears(model) -> dict[str, nn.Linear]:
    """The transformer's linear layers; embeddings and the output head stay dense."""
    head = model.get_output_embeddings()
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and mod is not head}


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask that zeroes exactly round(sparsity * numel) smallest-magnitude weights."""
    n_zero = int(round(sparsity * weight.numel()))
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    if n_zero:
        # A stable sort makes ties (and so the mask) deterministic.
        order = torch.sort(weight.abs().flatten().float(), stable=True).indices
        mask[order[:n_zero]] = False
    return mask.view_as(weight)


@torch.no_grad()
def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int | None,
                 symmetric: bool = False) -> torch.Tensor:
    """Round-to-nearest, group-wise along the input dimension; returns dequantized weights."""
    rows, cols = weight.shape
    group = cols if group_size is None else group_size
    if cols % group:
        raise ValueError(f"group_size {group} does not divide the layer width {cols}")
    w = weight.float().reshape(rows, cols // group, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-12)
        q = torch.clamp(torch.round(w / scale), -qmax - 1, qmax)
        deq = q * scale
    else:
        qmax = 2 ** bits - 1
        lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scale = ((hi - lo) / qmax).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
        deq = (q - zero) * scale
    return deq.reshape(rows, cols).to(weight.dtype)


def compress(model, entry: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Apply one `compression:` entry in place. Returns (masks, statistics)."""
    method = entry["method"]
    layers = target_linears(model)
    masks, per_layer = {}, {}
    for name, layer in layers.items():
        w = layer.weight.data
        if method == "magnitude":
            mask = magnitude_mask(w, entry["sparsity"])
            w.mul_(mask)
            masks[f"{name}.weight"] = mask
        elif method == "rtn":
            w.copy_(quantize_rtn(w, entry["bits"], entry["group_size"], entry["symmetric"]))
        elif method != "dense":
            raise ValueError(f"unknown compression method {method!r}")
        zeros = int((w == 0).sum())
        per_layer[name] = {"numel": w.numel(), "zeros": zeros,
                           "bits_per_weight": bits_per_weight(entry, w.shape[1], zeros / w.numel())}
    return masks, statistics(per_layer, model)


def bits_per_weight(entry: dict, width: int, sparsity: float) -> float:
    """Storage cost of one weight if the layer were packed (16-bit baseline)."""
    if entry["method"] == "rtn":
        # Per group: a float16 scale, plus a float16 zero point when asymmetric.
        group = entry["group_size"] or width
        return entry["bits"] + 16 * (1 if entry["symmetric"] else 2) / group
    if entry["method"] == "magnitude":
        return 16 * (1 - sparsity) + 1  # 16-bit kept values plus a 1-bit mask
    return 16.0


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
