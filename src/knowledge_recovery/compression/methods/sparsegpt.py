"""SparseGPT (Frantar & Alistarh 2023): prune by OBS saliency and update the kept weights."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

from knowledge_recovery.compression import entries
from knowledge_recovery.registry import CompressionMethod, no_grad, register_compression_method

if TYPE_CHECKING:  # annotations only: method modules import torch when they run
    import torch


def saliency(w: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """OBS pruning saliency of each weight: w^2 / [H^-1]_jj^2."""
    return w.pow(2) / hinv_diag.pow(2)[None, :]


@no_grad
def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, pattern: dict, damping: float = 0.01,
              block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): choose the mask block by block by the OBS saliency
    w^2 / [H^-1]_jj^2 and update the remaining weights to compensate. Returns (weight, mask)."""
    import torch

    from knowledge_recovery.compression import pruning
    from knowledge_recovery.compression.quantization import inverse_hessian_chol

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
            mask[:, b0:b1] = ~pruning.lowest_per_row(sal, k).view_as(w1)
        diag = torch.diag(hinv1).tolist()
        for i in range(b1 - b0):
            col = b0 + i
            if nm and i % pattern["m"] == 0:
                sal = saliency(w1[:, i: i + pattern["m"]], torch.diag(hinv1)[i: i + pattern["m"]])
                mask[:, col: col + pattern["m"]] = pruning.nm_mask(sal, pattern["n"], pattern["m"])
            e = w1[:, i].masked_fill(mask[:, col], 0) / diag[i]  # the pruned weights' error
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)
            err1[:, i] = e
        w1.mul_(mask[:, b0:b1])  # pruned columns are ~0 after their update; make them exactly 0
        w[:, b0:b1] = w1
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return (w * mask).to(weight.dtype), mask


def _apply(w, stage, stats, keep):
    w, keep = sparsegpt(w, stats.hessian, stage.mask_pattern, stage.damping)
    return w, keep, None


@dataclass(frozen=True, kw_only=True)
class SparseGPTSettings(entries.PruningSettings):
    damping: float = entries.damping_setting()
    true_sequential: bool = entries.true_sequential_setting()


register_compression_method(CompressionMethod(
    name="sparsegpt", family="pruning", statistic="hessian",
    settings=SparseGPTSettings, apply=_apply))
