"""Inference latency of dense, compressed, and compressed + each recovery method, side by side.

    .venv/bin/python bench/latency.py [--dense DIR --compressed DIR] [--rounds 5]

Prefill and decode as knowledge_recovery.models.timing measures them (alternating rounds, medians,
wall and CPU),
batch 1 and 8 of the same real text (--seq-len tokens each).
Adapters are untrained: latency does not depend on the values of their weights.
Also reported: IDP's selection overhead (attention selection vs the same pool with a fixed prompt,
i.e. a single prompt of length n through the same code) and IDP against LoRA, beside the paper's
claims (60% lower latency and 21x fewer parameters than LoRA, on 7B models on GPUs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from knowledge_recovery.models.timing import generation_times

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "results/default/models/smollm2-135m"


def variants(args):
    from knowledge_recovery.models import checkpoints
    from knowledge_recovery.recovery import adapters

    n = args.tokens
    entries = {
        f"prompt-n{n}": {"method": "prompt_tuning", "num_virtual_tokens": n},
        f"prefix-n{n}": {"method": "prefix_tuning", "num_virtual_tokens": n},
        f"lora-r{args.rank}": {"method": "lora", "r": args.rank, "alpha": 16, "dropout": 0.0,
                               "target_modules": ["q_proj", "v_proj"]},
        f"idp-m{args.pool}-n{n}": {"method": "idp", "pool_size": args.pool, "num_virtual_tokens": n,
                                   "score_layers": args.score_layers, "scheme": "joint",
                                   "balance_weight": 0.0},
    }
    out = {"dense": checkpoints.load_checkpoint(args.dense)[0].eval(),
           "compressed": checkpoints.load_checkpoint(args.compressed)[0].eval()}
    for name, entry in entries.items():
        out[f"+{name}"] = adapters.attach(checkpoints.load_checkpoint(args.compressed)[0], entry).eval()
        if entry["method"] == "idp":  # the same pool, one fixed prompt: no selection
            fixed = adapters.attach(checkpoints.load_checkpoint(args.compressed)[0], entry).eval()
            fixed.selection = 0
            out[f"+{name} fixed"] = fixed
    # adapters' parameters only (the base models are unchanged and not counted)
    return {k: (m, adapters.trainable_parameters(m) if k.startswith("+") else 0)
            for k, m in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dense", default=str(DEFAULT / "dense/checkpoint"))
    parser.add_argument("--compressed", default=str(DEFAULT / "rtn-w4-g64/checkpoint"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20, help="prompt/prefix length n")
    parser.add_argument("--pool", type=int, default=4, help="IDP pool size m")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--score-layers", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from knowledge_recovery.models import checkpoints
    from knowledge_recovery.text import python_reference

    torch.set_num_threads(args.threads)
    tok = checkpoints.load_checkpoint(args.dense)[1]
    ids = tok(python_reference()[:200000], return_attention_mask=False)["input_ids"]
    models_ = variants(args)
    k = args.new_tokens
    print(f"device cpu, {args.threads} threads; input {args.seq_len} tokens; decode {k} tokens; "
          f"median of {args.rounds} rounds; compressed = {args.compressed}")
    summary = {}
    for batch in args.batches:
        x = torch.tensor(ids[: batch * args.seq_len]).view(batch, args.seq_len)
        times = generation_times({name: m for name, (m, _) in models_.items()}, x, k,
                                 args.rounds, tok.eos_token_id)
        print(f"\nbatch {batch}")
        print(f"{'variant':<22}{'params':>9}{'prefill ms':>12}{'CPU ms':>9}{'decode ms/tok':>15}"
              f"{'CPU ms':>9}{'prefill x':>11}{'decode x':>10}")
        base = None
        for name, (_, params) in models_.items():
            pre, dec = times[name]["prefill"], times[name]["decode"]
            if name == "compressed":
                base = {"pre": pre[0], "dec": dec[0]}
            summary[(batch, name)] = (pre[0], dec[0], params)
            ratio = (f"{pre[0] / base['pre']:>11.2f}{dec[0] / base['dec']:>10.2f}" if base else "")
            print(f"{name:<22}{params:>9,}{pre[0] * 1e3:>12.1f}{pre[1] * 1e3:>9.1f}"
                  f"{dec[0] * 1e3:>15.2f}{dec[1] * 1e3:>9.2f}{ratio}")
    idp = f"+idp-m{args.pool}-n{args.tokens}"
    lora = f"+lora-r{args.rank}"
    print("\nIDP selection overhead (attention selection / fixed prompt, prefill; target <= 1.10):")
    for batch in args.batches:
        sel, fixed = summary[(batch, idp)], summary[(batch, idp + " fixed")]
        print(f"  batch {batch}: {sel[0] / fixed[0]:.3f}")
    print("IDP / LoRA (paper: IDP 0.4x the latency, 1/21 the parameters; 7B models, GPU):")
    for batch in args.batches:
        i, l = summary[(batch, idp)], summary[(batch, lora)]
        print(f"  batch {batch}: prefill {i[0] / l[0]:.2f}x, decode {i[1] / l[1]:.2f}x, "
              f"parameters 1/{l[2] / i[2]:.1f}")


if __name__ == "__main__":
    main()
