"""Training step time of each recovery method on a real compressed model (target: <= 3.5 s a step
at batch 8 x 128 on the 2-core CPU, SmolLM2-135M).

    .venv/bin/python bench/training.py [--checkpoint DIR] [--precisions float32 bfloat16]

One step = forward, backward, clipping and AdamW update on a batch of real text. The methods are
timed in turn, once per round; medians over rounds (wall and CPU time; CPU counts every thread).
Each step's floating-point work is counted (torch's FlopCounterMode) and set against the best
float32 matmul rate of this machine, measured in the same run: a step cannot take less than
its GFLOP divided by that rate, whatever the training code does.
"""
from __future__ import annotations

import argparse
import statistics
import time
import timeit
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
ENTRIES = {
    "prompt-n20": {"method": "prompt_tuning", "num_virtual_tokens": 20},
    "prefix-n20": {"method": "prefix_tuning", "num_virtual_tokens": 20},
    "lora-r8": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05,
                "target_modules": ["q_proj", "v_proj"]},
    "idp-m4-n20-joint": {"method": "idp", "pool_size": 4, "num_virtual_tokens": 20,
                         "score_layers": [0, 1], "scheme": "joint", "balance_weight": 0.01},
    "idp-m4-n20-routed": {"method": "idp", "pool_size": 4, "num_virtual_tokens": 20,
                          "score_layers": [0, 1], "scheme": "routed", "balance_weight": 0.01},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint",
                        default=str(REPO / "results/default/models/smollm2-135m/rtn-w4-g64/checkpoint"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(ENTRIES))
    parser.add_argument("--precisions", nargs="*", default=["float32"],
                        choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from knowledge_recovery.models import checkpoints
    from knowledge_recovery.recovery import adapters, training
    from knowledge_recovery.text import python_reference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = checkpoints.load_checkpoint(args.checkpoint)[1]
    blocks = training.token_blocks(tok, python_reference()[:400000], args.seq_len)
    runs = {}
    for name in args.methods:
        for precision in args.precisions:
            model = adapters.attach(checkpoints.load_checkpoint(args.checkpoint)[0], ENTRIES[name])
            params = [p for p in model.parameters() if p.requires_grad]
            runs[(name, precision)] = (model, params, torch.optim.AdamW(params, lr=1e-3))

    def step(model, params, opt, precision, batch):
        model.train()
        with training._autocast(model, precision):
            loss = training.lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def matmul_rate() -> float:
        """Best float32 GFLOP/s of a large square matmul on these threads."""
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        a @ b
        best = min(timeit.repeat(lambda: a @ b, number=1, repeat=5))
        return 2 * 2048 ** 3 / best / 1e9

    flops = {}
    batch = blocks[:args.batch_size]
    for key, (model, params, opt) in runs.items():
        with FlopCounterMode(display=False) as counter:
            step(model, params, opt, key[1], batch)
        flops[key] = counter.get_total_flops() / 1e9
    rate = matmul_rate()

    times = {key: [] for key in runs}
    for r in range(args.rounds + 1):  # round 0 warms up
        batch = blocks[torch.randint(len(blocks), (args.batch_size,))]
        for (name, precision), (model, params, opt) in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step(model, params, opt, precision, batch)
            if r:
                times[(name, precision)].append((time.perf_counter() - t0, time.process_time() - c0))
    print(f"checkpoint {args.checkpoint}; batch {args.batch_size} x {args.seq_len}; "
          f"{args.threads} threads; median of {args.rounds} rounds; best float32 matmul rate "
          f"here {rate:.0f} GFLOP/s")
    print(f"{'method':<20}{'precision':<11}{'params':>10}{'step s':>9}{'CPU s':>8}{'GFLOP':>8}"
          f"{'GFLOP/s':>9}{'floor s':>9}")
    for (name, precision), (model, *_) in runs.items():
        wall = statistics.median(t[0] for t in times[(name, precision)])
        cpu = statistics.median(t[1] for t in times[(name, precision)])
        work = flops[(name, precision)]
        print(f"{name:<20}{precision:<11}{adapters.trainable_parameters(model):>10,}"
              f"{wall:>9.2f}{cpu:>8.2f}{work:>8.0f}{work / wall:>9.0f}{work / rate:>9.2f}")


if __name__ == "__main__":
    main()
