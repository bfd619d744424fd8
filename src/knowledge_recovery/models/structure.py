"""Where things are in a causal LM of any architecture: its decoder blocks, and attention that
returns its weights."""
from __future__ import annotations

import contextlib

from torch import nn


def decoder_layers(model) -> nn.ModuleList:
    """The stack of transformer blocks (any architecture: the ModuleList of num_hidden_layers)."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"no list of {n} decoder layers found in {type(model).__name__}")


@contextlib.contextmanager
def eager_attention(model):
    """Run `model` with eager attention, the only kind that returns attention weights (to the
    attention modules' forward hooks), and restore its own kind after."""
    old = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = old
