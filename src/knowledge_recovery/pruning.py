"""Pruning: magnitude, Wanda and SparseGPT, unstructured (exact sparsity) or N:M.

Patterns: `sparsity` in (0,1) prunes exactly round(sparsity * numel) weights of each layer;
`n:m` keeps n weights in every m consecutive inputs of a row (2:4 = 50% sparse).
Every function returns a keep-mask (True = kept); SparseGPT also returns updated weights.
"""
from __future__ import annotations

import torch

from .quantization import inverse_hessian_chol


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k lowest scores, ties resolved by position: what a stable sort's
    first k would be, found in linear time (a sort was a fifth of SparseGPT's time)."""
    flat = score.flatten().float()
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if k >= len(flat):
        return torch.arange(len(flat), device=flat.device)
    kth = flat.kthvalue(k).values
    below = (flat < kth).nonzero().flatten()
    ties = (flat == kth).nonzero().flatten()[: k - len(below)]
    return torch.cat([below, ties])


def unstructured_mask(score: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Prune the lowest-scoring weights: exactly round(sparsity * numel) of the layer, or of
    each row when per_row (Wanda compares weights within an output row)."""
    mask = torch.ones_like(score, dtype=torch.bool)
    if per_row:
        k = int(round(sparsity * score.shape[1]))
        idx = torch.sort(score.float(), dim=1, stable=True).indices[:, :k]
        return mask.scatter_(1, idx, False)
    mask.view(-1)[_lowest(score, int(round(sparsity * score.numel())))] = False
    return mask


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
            block_mask = torch.ones_like(w1, dtype=torch.bool)
            block_mask.view(-1)[_lowest(saliency(w1, torch.diag(hinv1)), k)] = False
            mask[:, b0:b1] = block_mask
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

