"""What the pruning methods (methods/magnitude.py, wanda.py, sparsegpt.py) share: masks from
scores, their config settings, ids and checks.

Patterns: `sparsity` in (0,1) prunes exactly round(sparsity * numel) weights of each layer;
`n:m` keeps n weights in every m consecutive inputs of a row (2:4 = 50% sparse).
Masks are keep-masks (True = kept).
"""
from __future__ import annotations

import torch

from .errors import ConfigError
from .registry import compression_method


def lowest_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k lowest scores of each row of a 2-D tensor, ties resolved by position:
    what a stable sort's first k would be, found in linear time instead of a sort."""
    score = score.float()
    rows, cols = score.shape
    if k <= 0 or k >= cols:
        return torch.full_like(score, k > 0, dtype=torch.bool)
    kth = score.kthvalue(k, dim=1, keepdim=True).values
    lowest = score <= kth
    tied = (lowest.sum(1) > k).nonzero().flatten()
    if len(tied):  # rows where the k-th value repeats: keep only its first occurrences
        s, t = score[tied], kth[tied]
        ties = s == t
        need = k - (s < t).sum(1, keepdim=True)
        lowest[tied] = (s < t) | (ties & (ties.cumsum(1) <= need))
    return lowest


def unstructured_mask(score: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Prune the lowest-scoring weights: exactly round(sparsity * numel) of the layer, or of
    each row when per_row (Wanda compares weights within an output row)."""
    if per_row:
        return ~lowest_per_row(score, int(round(sparsity * score.shape[1])))
    flat = score.reshape(1, -1)
    return ~lowest_per_row(flat, int(round(sparsity * flat.shape[1]))).view_as(score)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest-scoring weights in every group of m consecutive inputs."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M group size {m} does not divide the layer width {cols}")
    groups = score.float().reshape(rows, cols // m, m)
    idx = torch.sort(groups, dim=2, stable=True).indices[:, :, : m - n]
    return torch.ones_like(groups, dtype=torch.bool).scatter_(2, idx, False).reshape(rows, cols)


def make_mask(score: torch.Tensor, pattern: dict, per_row: bool = False) -> torch.Tensor:
    if pattern.get("n") is not None:
        return nm_mask(score, pattern["n"], pattern["m"])
    return unstructured_mask(score, pattern["sparsity"], per_row)


def pattern_of(entry: dict) -> dict:
    """An entry's pattern as make_mask takes it: {"n", "m"} or {"sparsity"}."""
    if entry.get("pattern"):
        n, m = (int(x) for x in entry["pattern"].split(":"))
        return {"n": n, "m": m}
    return {"sparsity": entry["sparsity"]}


# What every pruning method takes; a pruned cell may also be quantized by a `quantize` entry.
SETTINGS = frozenset({"sparsity", "pattern", "quantize"})


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
