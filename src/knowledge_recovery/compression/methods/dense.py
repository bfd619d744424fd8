"""The uncompressed baseline: every table compares against it."""
from __future__ import annotations

from knowledge_recovery.compression.entries import CompressionSettings
from knowledge_recovery.registry import CompressionMethod, register_compression_method

register_compression_method(CompressionMethod(
    name="dense", family="none", statistic="none", settings=CompressionSettings,
    apply=lambda w, stage, stats, keep: (w, keep, None)))
