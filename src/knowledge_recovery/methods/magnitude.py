"""Magnitude pruning: drop the weights of smallest absolute value. Data-free."""
from __future__ import annotations

import torch

from .. import pruning
from ..registry import CompressionMethod, register_compression_method


def magnitude(weight: torch.Tensor, pattern: dict) -> torch.Tensor:
    """Keep-mask of the largest weights by |W|."""
    return pruning.make_mask(weight.abs(), pattern)


def _apply(w, stage, stats, keep):
    keep = magnitude(w, pruning.pattern_of(stage))
    return w * keep, keep, None


register_compression_method(CompressionMethod(
    name="magnitude", family="pruning", statistic="none", settings=pruning.SETTINGS,
    id_format=pruning.prune_id, apply=_apply, check=pruning.check_pattern))
