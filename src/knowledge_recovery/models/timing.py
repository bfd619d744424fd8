"""Prefill and decode timing of `generate` (the deploy_latency step, bench/latency.py,
bench/deploy.py).

Prefill: one `generate` call that makes 1 token; decode: (time to make K+1 tokens - prefill) / K.
After one warm-up call each, every variant is timed once per round, in turn, so that the
machine's drifts hit all of them; medians over rounds, wall and CPU time (CPU counts every
thread).
"""
from __future__ import annotations

import statistics
import time

import torch


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def generation_times(variants: dict, x: torch.Tensor, new_tokens: int, rounds: int,
                     pad_token_id) -> dict:
    """{name: {"prefill": (wall, cpu), "decode": (wall, cpu) per token}} in seconds, for each
    model of `variants` on the batch of token ids `x`."""
    mask = torch.ones_like(x)

    def gen(model, new):
        return model.generate(input_ids=x, attention_mask=mask, max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=pad_token_id)

    times = {name: {"prefill": [], "full": []} for name in variants}
    with torch.no_grad():
        for model in variants.values():  # warm-up: compilation, caches, first allocations
            gen(model, 2)
        for _ in range(rounds):
            for name, model in variants.items():
                times[name]["prefill"].append(timed(lambda m=model: gen(m, 1)))
                times[name]["full"].append(timed(lambda m=model: gen(m, new_tokens + 1)))
    out = {}
    for name, t in times.items():
        pre = tuple(statistics.median(s[i] for s in t["prefill"]) for i in (0, 1))
        full = tuple(statistics.median(s[i] for s in t["full"]) for i in (0, 1))
        out[name] = {"prefill": pre,
                     "decode": tuple((full[i] - pre[i]) / new_tokens for i in (0, 1))}
    return out
