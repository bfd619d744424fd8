"""GPTQ (Frantar et al. 2022): quantize column by column, compensating through the Hessian."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

from knowledge_recovery.compression import entries
from knowledge_recovery.registry import (CompressionMethod, no_grad, register_compression_method,
                                         setting)

if TYPE_CHECKING:  # annotations only: method modules import torch when they run
    import torch


@no_grad
def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None,
         symmetric: bool = False, damping: float = 0.01, act_order: bool = False,
         block_size: int = 128, keep: torch.Tensor | None = None, return_grid: bool = False):
    """GPTQ (Frantar et al. 2022): quantize column by column, pushing each column's error onto
    the columns not yet quantized through the inverse Hessian of the layer's inputs.

    With act_order, columns go in order of decreasing Hessian diagonal; group parameters then
    come from the original contiguous groups ("static groups"), so each stored group still
    holds at most 2^bits values. `keep` is a mask from earlier pruning: pruned weights stay 0.
    With return_grid, also (scale, zero point) of each group, [rows, groups], as quantize_rtn.
    """
    import torch

    from knowledge_recovery.compression import quantization

    rows, cols = weight.shape
    group = quantization.check_group(cols, group_size)
    w, h = weight.float().clone(), hessian.float()
    perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    if act_order:
        static = [quantization.qparams(w[:, g: g + group], bits, symmetric)
                  for g in range(0, cols, group)]
        w, h = w[:, perm], h[perm][:, perm]
        keep = None if keep is None else keep[:, perm]
    hinv = quantization.inverse_hessian_chol(h, w, damping)
    params, grid = None, static if act_order else []
    q_all = torch.zeros_like(w)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        w1, hinv1 = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err1 = torch.zeros_like(w1)
        diag = torch.diag(hinv1).tolist()
        for i in range(b1 - b0):
            col = b0 + i
            if act_order:
                params = static[int(perm[col]) // group]
            elif col % group == 0:
                params = quantization.qparams(
                    torch.cat([w1[:, i: i + group], w[:, b1: col + group]], 1), bits, symmetric)
                grid.append(params)
            q = quantization.fake_quant(w1[:, i: i + 1], *params).flatten()
            if keep is not None:
                q = q * keep[:, col]
            q_all[:, col] = q
            e = (w1[:, i] - q) / diag[i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)
            err1[:, i] = e
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    if act_order:
        q_all = q_all[:, torch.argsort(perm)]
    if not return_grid:
        return q_all.to(weight.dtype)
    scale, zero = (torch.cat([p[k] for p in grid], 1) for k in (0, 1))
    return q_all.to(weight.dtype), (scale, zero)


def _apply(w, stage, stats, keep):
    w, grid = gptq(w, stats.hessian, stage.bits, stage.group_size, stage.symmetric,
                   stage.damping, stage.act_order, keep=keep, return_grid=True)
    return w, keep, grid


@dataclass(frozen=True, kw_only=True)
class GPTQSettings(entries.QuantizationSettings):
    damping: float = entries.damping_setting()
    act_order: bool = setting(False, help="quantize columns in order of decreasing Hessian "
                              "diagonal (groups keep their original columns)")
    true_sequential: bool = entries.true_sequential_setting()

    def id(self) -> str:
        return super().id() + ("-act" if self.act_order else "")


register_compression_method(CompressionMethod(
    name="gptq", family="quantization", statistic="hessian", settings=GPTQSettings,
    apply=_apply, packable=True))
