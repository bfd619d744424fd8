"""What the quantization methods (methods/rtn.py, gptq.py, awq.py) share: the min-max group
quantizer and round-to-nearest, the damped inverse Hessian, their settings and ids.

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


def check_group(cols: int, group_size: int | None) -> int:
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
    group = check_group(cols, group_size)
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
