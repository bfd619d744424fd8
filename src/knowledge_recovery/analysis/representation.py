"""Where a recovery moves the model's representation, measured on a fixed sample of evaluation
inputs: per layer, the similarity of the input tokens' hidden states to the dense model's
(linear CKA), the attention mass the input's tokens put on prompt tokens (for methods that put
learned tokens or keys before the input), and the latency of a forward pass beside the dense
model's.

Nothing here names a recovery method: hidden states and attention weights are read by hooks on
the underlying transformer's layers, whatever wraps it (peft, IDP), and the positions before
the input's own (prompt tokens, prefix keys) are found from the shapes.
"""
from __future__ import annotations

import contextlib
import random
import time

import torch

from knowledge_recovery.models.structure import decoder_layers, eager_attention


def sample_inputs(manager, names: list[str], count: int, seed: int) -> list[dict]:
    """`count` distinct evaluation inputs (the contexts lm-eval builds, before any answer),
    spread evenly over the tasks `names` (groups: their leaf tasks) of an lm-eval TaskManager,
    drawn with `seed`: [{"task", "doc_id", "text"}] in a fixed order."""
    tasks = sorted(manager.load(names)["tasks"].values(), key=lambda t: t.config.task)
    pools = []
    for task in tasks:
        task.set_config(key="num_fewshot", value=0)  # as evaluated
        task.build_all_requests(limit=None)
        seen = dict.fromkeys((i.doc_id, i.arguments[0]) for i in task.instances
                             if isinstance(i.arguments[0], str) and i.arguments[0].strip())
        pool = [{"task": task.config.task, "doc_id": d, "text": text} for d, text in seen]
        random.Random(f"{seed}:{task.config.task}").shuffle(pool)
        pools.append(pool)
    out = []
    while len(out) < count and any(pools):  # round robin: every task equally, while it lasts
        for pool in pools:
            if pool and len(out) < count:
                out.append(pool.pop(0))
    return out


def transformer(model):
    """The Hugging Face model inside any wrapper (a PeftModel, IDP's DynamicPromptModel)."""
    from transformers import PreTrainedModel

    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


@contextlib.contextmanager
def captured(model):
    """Within: every forward of `model` records, by layer (0: the input embeddings, i: the
    output of decoder layer i), the hidden states and the attention weights (eager attention,
    the only kind that returns them). A later call of a layer replaces an earlier one: IDP's
    selection runs its first layers before the real forward."""
    base = transformer(model)
    layers = decoder_layers(base)
    hidden, attention, hooks = {}, {}, []

    def keep(store, i, value):
        store[i] = None if value is None else value.detach()

    hooks.append(base.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: keep(hidden, 0, out)))
    for i, layer in enumerate(layers, start=1):
        hooks.append(layer.register_forward_hook(
            lambda mod, args, out, i=i: keep(hidden, i, out[0] if isinstance(out, tuple) else out)))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda mod, args, out, i=i: keep(attention, i, out[1] if isinstance(out, tuple)
                                              and len(out) > 1 else None)))
    try:
        with eager_attention(base):
            yield hidden, attention
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def trace(model, inputs: list[torch.Tensor], batch_size: int
          ) -> tuple[list[torch.Tensor], list[float | None]]:
    """Run the inputs (each 1 x n token ids) in right-padded batches. Returns, per layer, the
    hidden states of the input tokens of all inputs stacked (tokens x width, float32, on the
    CPU), each input's first token left out: in a causal LM it carries the attention sink's
    outsize activations, which would dominate CKA and change merely because a prompt now comes
    before it. And per decoder layer, the mean attention mass the input's tokens put on positions
    before their own (prompt tokens, prefix keys; None where there are none), over heads, tokens
    and inputs."""
    states: dict[int, list] = {}
    mass: dict[int, list] = {}
    with captured(model) as (hidden, attention):
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            width = max(ids.shape[1] for ids in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long, device=batch[0].device)
            mask = torch.zeros_like(ids)
            for row, one in enumerate(batch):
                ids[row, :one.shape[1]] = one[0]
                mask[row, :one.shape[1]] = 1
            model(input_ids=ids, attention_mask=mask)
            for layer, h in hidden.items():
                h = h[:, -width:]  # the input's positions (prompt tokens come first)
                states.setdefault(layer, []).extend(
                    h[row, 1:one.shape[1]].float().cpu() for row, one in enumerate(batch))
            for layer, w in attention.items():
                extra = w.shape[-1] - width if w is not None else 0
                for row, one in enumerate(batch):
                    n = one.shape[1]
                    mass.setdefault(layer, []).append(
                        float(w[row, :, -width:][:, :n, :extra].float().sum(-1).mean())
                        if extra > 0 else None)
    layers = sorted(states)
    per_layer_mass = [None if any(m is None for m in mass.get(layer, [None]))
                      else sum(mass[layer]) / len(mass[layer]) for layer in layers[1:]]
    return [torch.cat(states[layer]) for layer in layers], per_layer_mass


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same rows (Kornblith et al. 2019): 1 when one
    is a rotation and scaling of the other, near 0 when unrelated."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = torch.linalg.matrix_norm(x.T @ y) ** 2
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


@torch.no_grad()
def latency(models: dict, inputs: list[torch.Tensor], rounds: int) -> dict:
    """Forward passes over every input (a batch each), the models taking turns round by round
    (so that load on the machine falls on all alike): per model, wall and CPU milliseconds per
    input of each round."""
    for model in models.values():  # warm-up: first calls allocate and pick kernels
        model(input_ids=inputs[0], attention_mask=torch.ones_like(inputs[0]))
    out = {name: {"wall_ms": [], "cpu_ms": []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for ids in inputs:
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
            out[name]["wall_ms"].append(1000 * (time.perf_counter() - wall) / len(inputs))
            out[name]["cpu_ms"].append(1000 * (time.process_time() - cpu) / len(inputs))
    return out


def timing_batches(inputs: list[torch.Tensor], batch_size: int, count: int) -> list[torch.Tensor]:
    """`count` batches of `batch_size` inputs, taken in order from `inputs` (round again where
    there are too few), each input cut to the batch's shortest (its last tokens): no padding,
    so every position is real work for the model at every batch size."""
    batches = []
    for b in range(count):
        group = [inputs[(b * batch_size + i) % len(inputs)] for i in range(batch_size)]
        shortest = min(ids.shape[1] for ids in group)
        batches.append(torch.cat([ids[:, -shortest:] for ids in group]))
    return batches


def analyse(dense, model, tokenizer, texts: list[str], settings: dict) -> dict:
    """The representation record of one cell: per layer CKA with the dense model and attention
    mass on prompt positions over every input, and the latency of both at each of
    `timing_batch_sizes` on `timing_inputs` batches, measured side by side. `settings`: the
    config's `displacement` section."""
    import statistics

    inputs = [tokenizer(t, return_tensors="pt").input_ids[:, -settings["max_tokens"]:]
              for t in texts]
    inputs = [ids.to(model.device) for ids in inputs if ids.shape[1] > 1]
    reference, _ = trace(dense, inputs, settings["batch_size"])
    states, mass = trace(model, inputs, settings["batch_size"])
    if len(states) != len(reference):
        raise ValueError(f"the model has {len(states) - 1} layers, the dense model "
                         f"{len(reference) - 1}: they cannot be compared layer by layer")
    rounds = settings["timing_rounds"]
    timed = {}
    for size in settings["timing_batch_sizes"]:
        timing = latency({"dense": dense, "cell": model},
                         timing_batches(inputs, size, settings["timing_inputs"]), rounds)
        ratios = [c / d for c, d in zip(timing["cell"]["wall_ms"], timing["dense"]["wall_ms"])]
        timed[str(size)] = {**timing, "rounds": rounds, "batch_size": size,
                            "cell_over_dense": statistics.median(ratios),
                            "cell_ms": statistics.median(timing["cell"]["wall_ms"]),
                            "dense_ms": statistics.median(timing["dense"]["wall_ms"])}
    return {"inputs": len(inputs), "tokens": int(states[0].shape[0]),
            "layers": list(range(len(states))),  # 0: embeddings
            "cka": [linear_cka(a, b) for a, b in zip(reference, states)],
            "attention_to_prompt": mass if any(m is not None for m in mass) else None,
            # by batch size; the tables' latency is at the first listed size
            "latency": timed}
