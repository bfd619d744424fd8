"""Compression: what a `compression:` entry says (`entries`, torch-free), applying it to a model
(`apply`, with `calibration` for methods that need input statistics), the pruning and
quantization families' shared code, packed export, and one module per method in `methods/`."""
