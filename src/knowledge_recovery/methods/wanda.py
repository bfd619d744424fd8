"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||, compared within each output row."""
from __future__ import annotations

import torch

from .. import pruning
from ..registry import CompressionMethod, register_compression_method


def wanda(weight: torch.Tensor, col_sq: torch.Tensor, pattern: dict) -> torch.Tensor:
    """Keep-mask from the scores |W_ij| * ||X_j|| (col_sq: squared input column norms)."""
    return pruning.make_mask(weight.abs() * col_sq.sqrt()[None, :], pattern, per_row=True)


def _apply(w, stage, stats, keep):
    keep = wanda(w, stats.col_sq, pruning.pattern_of(stage))
    return w * keep, keep, None


register_compression_method(CompressionMethod(
    name="wanda", family="pruning", statistic="col_norms",
    settings=pruning.SETTINGS | {"true_sequential"}, id_format=pruning.prune_id, apply=_apply,
    check=pruning.check_pattern))
