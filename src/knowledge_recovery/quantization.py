"""Weight-only quantization: a min-max group quantizer, round-to-nearest, and GPTQ.

All functions return dequantized float weights ("fake quant"): the values a packed low-bit
checkpoint would decode to.
"""
from __future__ import annotations

import torch


def qparams(w: torch.Tensor, bits: int, symmetric: bool):
    """Per-row min-max scale and integer zero point of a [rows, cols] block."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
        return scale, torch.zeros_like(scale), -qmax - 1, qmax
    qmax = 2 ** bits - 1
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    return scale, torch.round(-lo / scale), 0, qmax


def fake_quant(x: torch.Tensor, scale, zero, qmin, qmax) -> torch.Tensor:
    """Quantize and dequantize. Zero is always exactly representable (pruned weights stay 0)."""
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def _check_group(cols: int, group_size: int | None) -> int:
    group = cols if group_size is None else group_size
    if cols % group:
        raise ValueError(f"group_size {group} does not divide the layer width {cols}")
    return group


@torch.no_grad()
def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int | None,
                 symmetric: bool = False, return_grid: bool = False):
    """Round-to-nearest, group-wise along the input dimension. With return_grid, also the
    grid: (scale, zero point), each [rows, groups], what a packed checkpoint stores."""
    rows, cols = weight.shape
    group = _check_group(cols, group_size)
    w = weight.float().reshape(rows * (cols // group), group)
    params = qparams(w, bits, symmetric)
    q = fake_quant(w, *params).reshape(rows, cols).to(weight.dtype)
    if not return_grid:
        return q
    return q, (params[0].reshape(rows, -1), params[1].reshape(rows, -1))


def inverse_hessian_chol(hessian: torch.Tensor, weight: torch.Tensor, damping: float):
    """Upper Cholesky factor of the damped inverse Hessian; dead inputs zeroed in the weight."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    weight[:, dead] = 0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(len(h), device=h.device)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


@torch.no_grad()
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
    rows, cols = weight.shape
    group = _check_group(cols, group_size)
    w, h = weight.float().clone(), hessian.float()
    perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    if act_order:
        static = [qparams(w[:, g: g + group], bits, symmetric) for g in range(0, cols, group)]
        w, h = w[:, perm], h[perm][:, perm]
        keep = None if keep is None else keep[:, perm]
    hinv = inverse_hessian_chol(h, w, damping)
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
                params = qparams(torch.cat([w1[:, i: i + group], w[:, b1: col + group]], 1), bits,
                                 symmetric)
                grid.append(params)
            q = fake_quant(w1[:, i: i + 1], *params).flatten()
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


@torch.no_grad()
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
    w = weight.float()
    h = hessian.float()
    a = act_scale.float().clamp(min=1e-8)
    best, best_err = None, float("inf")
    for k in range(grid):  # alpha = 0 is plain round-to-nearest, so AWQ is never worse than it
        s = a.pow(k / grid)
        s = s / (s.max() * s.min()).sqrt()
        q = quantize_rtn(w * s, bits, group_size, symmetric) / s
        d = q - w
        err = float(((d @ h) * d).sum())
        if err < best_err:
            best, best_err = (q, s), err
    q, s = best
    return (q.to(weight.dtype), s) if return_scale else q.to(weight.dtype)
