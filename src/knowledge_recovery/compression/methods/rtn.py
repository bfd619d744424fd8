"""Round-to-nearest: each group of weights on its min-max grid. Data-free."""
from __future__ import annotations

from knowledge_recovery.compression import entries
from knowledge_recovery.registry import CompressionMethod, register_compression_method


def _apply(w, stage, stats, keep):
    from knowledge_recovery.compression import quantization

    w, grid = quantization.quantize_rtn(w, stage.bits, stage.group_size, stage.symmetric,
                                        return_grid=True)
    return w, keep, grid


register_compression_method(CompressionMethod(
    name="rtn", family="quantization", statistic="none", settings=entries.QuantizationSettings,
    apply=_apply, packable=True))
