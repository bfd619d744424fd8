"""What the pruning methods (methods/magnitude.py, wanda.py, sparsegpt.py) share: masks from
scores, their config settings, ids and checks.

Patterns: `sparsity` in (0,1) prunes exactly round(sparsity * numel) weights of each layer;
`n:m` keeps n weights in every m consecutive inputs of a row (2:4 = 50% sparse).
Masks are keep-masks (True = kept).
"""
from __future__ import annotations

import torch


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



