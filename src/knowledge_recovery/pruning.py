"""Pruning: magnitude, Wanda and SparseGPT, unstructured (exact sparsity) or N:M.

Patterns: `sparsity` in (0,1) prunes exactly round(sparsity * numel) weights of each layer;
`n:m` keeps n weights in every m consecutive inputs of a row (2:4 = 50% sparse).
Every function returns a keep-mask (True = kept); SparseGPT also returns updated weights.
"""
from __future__ import annotations

import torch

from .quantization import inverse_hessian_chol


def lowest_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k lowest scores of each row of a 2-D tensor, ties resolved by position:
    what a stable sort's first k would be, found in linear time (sorting was an eighth of Wanda's
    time and a fifth of SparseGPT's)."""
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


def magnitude(weight: torch.Tensor, pattern: dict) -> torch.Tensor:
    return make_mask(weight.abs(), pattern)


def wanda(weight: torch.Tensor, col_sq: torch.Tensor, pattern: dict) -> torch.Tensor:
    """Wanda (Sun et al. 2023): score |W_ij| * ||X_j||, compared within each output row."""
    return make_mask(weight.abs() * col_sq.sqrt()[None, :], pattern, per_row=True)


def saliency(w: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """OBS pruning saliency of each weight: w^2 / [H^-1]_jj^2."""
    return w.pow(2) / hinv_diag.pow(2)[None, :]


@torch.no_grad()
def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, pattern: dict, damping: float = 0.01,
              block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): choose the mask block by block by the OBS saliency
    w^2 / [H^-1]_jj^2 and update the remaining weights to compensate. Returns (weight, mask)."""
    rows, cols = weight.shape
    w = weight.float().clone()
    hinv = inverse_hessian_chol(hessian.float(), w, damping)
    mask = torch.ones_like(w, dtype=torch.bool)
    nm = pattern.get("n") is not None
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        w1, hinv1 = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err1 = torch.zeros_like(w1)
        if not nm:
            # Exact layer sparsity: each block prunes its share of round(sparsity * numel).
            k = round(pattern["sparsity"] * rows * b1) - round(pattern["sparsity"] * rows * b0)
            sal = saliency(w1, torch.diag(hinv1)).reshape(1, -1)
            mask[:, b0:b1] = ~lowest_per_row(sal, k).view_as(w1)
        diag = torch.diag(hinv1).tolist()
        for i in range(b1 - b0):
            col = b0 + i
            if nm and i % pattern["m"] == 0:
                sal = saliency(w1[:, i: i + pattern["m"]], torch.diag(hinv1)[i: i + pattern["m"]])
                mask[:, col: col + pattern["m"]] = nm_mask(sal, pattern["n"], pattern["m"])
            e = w1[:, i].masked_fill(mask[:, col], 0) / diag[i]  # the pruned weights' error
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)
            err1[:, i] = e
        w1.mul_(mask[:, b0:b1])  # pruned columns are ~0 after their update; make them exactly 0
        w[:, b0:b1] = w1
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return (w * mask).to(weight.dtype), mask

