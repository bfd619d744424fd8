"""AWQ (Lin et al. 2023): activation-aware channel scales before round-to-nearest."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

from knowledge_recovery.compression import entries
from knowledge_recovery.registry import CompressionMethod, no_grad, register_compression_method

if TYPE_CHECKING:  # annotations only: method modules import torch when they run
    import torch


@no_grad
def awq(weight: torch.Tensor, hessian: torch.Tensor, act_scale: torch.Tensor, bits: int,
        group_size: int | None, symmetric: bool = False, grid: int = 20,
        return_scale: bool = False):
    """AWQ (Lin et al. 2023): scale input channel j by s_j = a_j^alpha before round-to-nearest
    (a_j: the channel's activation magnitude), so salient channels lose less, and pick alpha in
    [0, 1) minimising the layer's output error on calibration data, tr(dW H dW^T).

    Returns Q(W diag(s)) diag(s)^-1: the weights the packed model computes with once 1/s is
    folded into the layer's input. Scales are searched per linear layer (the reference shares
    one per group of layers that read the same input, so as to fold them into the preceding
    norm; with dequantized storage a per-layer search is at least as accurate and needs no map
    of the architecture). The reference's extra weight-clipping search is not done."""
    from knowledge_recovery.compression import quantization

    w = weight.float()
    h = hessian.float()
    a = act_scale.float().clamp(min=1e-8)
    best, best_err = None, float("inf")
    for k in range(grid):  # alpha = 0 is plain round-to-nearest, so AWQ is never worse than it
        s = a.pow(k / grid)
        s = s / (s.max() * s.min()).sqrt()
        q = quantization.quantize_rtn(w * s, bits, group_size, symmetric) / s
        d = q - w
        err = float(((d @ h) * d).sum())
        if err < best_err:
            best, best_err = (q, s), err
    q, s = best
    return (q.to(weight.dtype), s) if return_scale else q.to(weight.dtype)


def _apply(w, stage, stats, keep):
    # the scale of input channel j is its root-mean-square activation
    w = awq(w, stats.hessian, (stats.col_sq / stats.tokens).sqrt(), stage.bits,
            stage.group_size, stage.symmetric)
    return w, keep, None


@dataclass(frozen=True, kw_only=True)
class AWQSettings(entries.QuantizationSettings):
    true_sequential: bool = entries.true_sequential_setting()


# Not packable: its per-input-channel scales have no place in the pack-quantized format.
register_compression_method(CompressionMethod(
    name="awq", family="quantization", statistic="hessian", settings=AWQSettings, apply=_apply))
