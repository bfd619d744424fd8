"""Magnitude pruning: drop the weights of smallest absolute value. Data-free."""
from __future__ import annotations

from typing import TYPE_CHECKING

from knowledge_recovery.compression import entries
from knowledge_recovery.registry import CompressionMethod, register_compression_method

if TYPE_CHECKING:  # annotations only: method modules import torch when they run
    import torch


def magnitude(weight: torch.Tensor, pattern: dict) -> torch.Tensor:
    """Keep-mask of the largest weights by |W|."""
    from knowledge_recovery.compression import pruning

    return pruning.make_mask(weight.abs(), pattern)


def _apply(w, stage, stats, keep):
    keep = magnitude(w, stage.mask_pattern)
    return w * keep, keep, None


register_compression_method(CompressionMethod(
    name="magnitude", family="pruning", statistic="none", settings=entries.PruningSettings,
    apply=_apply))
