"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||, compared within each output row."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

from knowledge_recovery.compression import entries
from knowledge_recovery.registry import CompressionMethod, register_compression_method

if TYPE_CHECKING:  # annotations only: method modules import torch when they run
    import torch


def wanda(weight: torch.Tensor, col_sq: torch.Tensor, pattern: dict) -> torch.Tensor:
    """Keep-mask from the scores |W_ij| * ||X_j|| (col_sq: squared input column norms)."""
    from knowledge_recovery.compression import pruning

    return pruning.make_mask(weight.abs() * col_sq.sqrt()[None, :], pattern, per_row=True)


def _apply(w, stage, stats, keep):
    keep = wanda(w, stats.col_sq, stage.mask_pattern)
    return w * keep, keep, None


@dataclass(frozen=True, kw_only=True)
class WandaSettings(entries.PruningSettings):
    true_sequential: bool = entries.true_sequential_setting()


register_compression_method(CompressionMethod(
    name="wanda", family="pruning", statistic="col_norms",
    settings=WandaSettings, apply=_apply))
