"""Layer-by-layer (sequential) calibration for compression methods that need input statistics.

Only one decoder block's weights and activations are worked on at a time: the calibration inputs
of block i are the outputs of the already-compressed blocks before it, as in the SparseGPT and
GPTQ papers. `compress_linear(name, layer, stats)` decides what happens to each linear layer.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from knowledge_recovery.models.checkpoints import compute_device
from knowledge_recovery.models.structure import decoder_layers


def calibration_batch(tokenizer, text: str, n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """n_samples random windows of seq_len tokens from the text (seeded)."""
    ids = torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"])
    if len(ids) <= seq_len:
        raise ValueError(f"calibration text gives {len(ids)} tokens, need more than {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


class InputStats:
    """Running statistics of one linear layer's inputs: X^T X (for GPTQ/SparseGPT) and squared
    column norms (for Wanda), accumulated in float32 over all calibration tokens."""

    def __init__(self, width: int, need_hessian: bool, device=None):
        self.tokens = 0
        self.col_sq = torch.zeros(width, device=device)
        self.hessian = torch.zeros(width, width, device=device) if need_hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        if self.hessian is not None:
            # Running mean of 2 X^T X / n, as in the GPTQ reference implementation.
            self.hessian *= self.tokens / (self.tokens + n)
            xs = x * (2.0 / (self.tokens + n)) ** 0.5
            self.hessian += xs.T @ xs
        self.col_sq += x.pow(2).sum(0)
        self.tokens += n


def to_device(tree, device):
    """Move every tensor in nested tuples/lists/dicts (a block's args and kwargs)."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(t, device) for t in tree)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree


class _Stop(Exception):
    pass


@torch.no_grad()
def _block_arguments(model, layers, batch):
    """Each sample's input to block 0, and, for every block, the other arguments the model's own
    forward gives it (models that mix sliding-window and full attention, such as Gemma-3, pass
    each layer its own mask and rotary embeddings). While recording, every block is a
    pass-through and the forward stops at the last one: this costs the embeddings and masks, not
    a forward pass. Returns (hidden states, per block a list of (args after the hidden state,
    kwargs) per sample)."""
    hidden, per_block = [], [[] for _ in layers]

    def recorder(index):
        def forward(*args, **kwargs):
            if not args:
                raise ValueError(f"{type(layers[index]).__name__} is not given its hidden state "
                                 "as the first positional argument; calibration needs that")
            if index == 0:
                hidden.append(args[0])
            per_block[index].append((args[1:], kwargs))
            if index + 1 == len(layers):
                raise _Stop
            return args[0]
        return forward

    saved = [layer.__dict__.get("forward") for layer in layers]  # e.g. accelerate's hooks
    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        for sample in batch:
            try:
                model(input_ids=sample[None].to(model.device), use_cache=False)
            except _Stop:
                pass
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    if any(len(block) != len(batch) for block in per_block):
        raise ValueError("the model's forward did not call every decoder block once per sample")
    return hidden, per_block


def _calibrate(layer, inputs, modules: dict, names: list[str], need_hessian: bool, device,
               first_group_only: bool = False):
    """One pass of the block over the calibration inputs with the linears `names` hooked.
    Linears that read the same tensor (q/k/v, gate/up) form a group and share one InputStats,
    accumulated once. Returns (groups in forward order, their statistics).

    Each sample's forward stops as soon as its statistics are in: at the input of the last
    hooked linear (its matmul is not needed), or with
    `first_group_only` (true-sequential: later groups are re-calibrated after the first is
    compressed) at the first group's input once the first sample has shown the grouping."""
    groups, stats, group_of, group_of_input, alive = [], [], {}, {}, []

    def rec(name, x):
        if name not in group_of:  # first sample: group the linears by the tensor they read
            alive.append(x)  # held, so no later tensor can reuse its id
            g = group_of_input.setdefault(id(x), len(groups))
            if g == len(groups):
                groups.append([])
                wanted = g == 0 or not first_group_only
                stats.append(InputStats(x.shape[-1], need_hessian, device) if wanted else None)
            groups[g].append(name)
            group_of[name] = g
        g = group_of[name]
        if groups[g][0] == name and stats[g] is not None:
            stats[g].add(x)
        if len(group_of) == len(names) and (name == groups[-1][-1] or first_group_only and g == 0):
            raise _Stop  # every statistic of this sample is in

    hooks = [modules[n].register_forward_pre_hook(lambda _m, inp, n=n: rec(n, inp[0]))
             for n in names]
    try:
        for args, kwargs in inputs:
            try:
                layer(*args, **kwargs)
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return groups, stats


@torch.no_grad()
def sequential_compress(model, batch: torch.Tensor, compress_linear: Callable,
                        need_hessian: bool, true_sequential: bool = False, device=None,
                        log=print) -> None:
    """Compress every linear layer of every block in order.

    The model stays where it is (CPU for a 7B model); each block, its inputs and its statistics
    move to `device` (CUDA when available) only while that block is compressed."""
    device = torch.device(device) if device else compute_device()
    layers = decoder_layers(model)
    hidden, per_block = _block_arguments(model, layers, batch)
    hidden = to_device(hidden, device)
    home = next(layers[0].parameters()).device
    for index, layer in enumerate(layers):
        layer.to(device)
        # this block's inputs: the previous (compressed) block's outputs, with the arguments the
        # model's forward gives this very block
        others, per_block[index] = to_device(per_block[index], device), None
        inputs = [((h,) + tuple(args), kwargs) for h, (args, kwargs) in zip(hidden, others)]
        modules = dict(layer.named_modules())
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        # One pass gives every group's statistics on the uncompressed block's activations (as
        # llmcompressor does). True-sequential re-calibrates each later group on the outputs of
        # the groups compressed before it: a pass per group.
        groups, stats = _calibrate(layer, inputs, modules, linears, need_hessian, device,
                                   first_group_only=true_sequential)
        for g, group in enumerate(groups):
            if true_sequential and g:
                stats[g] = _calibrate(layer, inputs, modules, group[:1], need_hessian,
                                      device)[1][0]
            for n in group:
                compress_linear(f"{index}.{n}", modules[n], stats[g])
        # This block's outputs feed the next. Each sample's input is dropped as soon as its
        # output exists: one set of activations is held. The last block's outputs feed nothing.
        for i, (args, kwargs) in enumerate(inputs if index + 1 < len(layers) else []):
            out = layer(*args, **kwargs)
            hidden[i], inputs[i] = (out[0] if isinstance(out, tuple) else out), None
        del inputs, others
        layer.to(home)
        log(f"block {index + 1}/{len(layers)} compressed")
