"""Latency of the deployed models (OpenVINO) beside PyTorch, side by side in one run.

    make run CONFIG=config/deploy.yaml
    .venv-openvino/bin/python bench/deploy.py --config config/deploy.yaml [--rounds 5]

Runs in the deploy environment. Variants: the dense model in PyTorch float32 (what the grid
evaluates), then every deployed model of the config's results folder on OpenVINO (a recovery
cell: its prompt cache in front of its compressed model's export) with the exact runtime
settings the deploy step checked and scored it with (deployment.EXACT_RUNTIME), and the first
quantized one again with OpenVINO's CPU defaults (int8 dynamic activation quantization, u8
KV cache, bf16 where the CPU has it: faster, but not the model the table scores). Prefill and
decode as bench/timing.py measures them (alternating rounds, medians, wall and CPU), batch 1 and
8 of the same real text; ratios to PyTorch dense.
"""
from __future__ import annotations

import argparse

import torch
from timing import generation_times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="config/deploy.yaml")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from optimum.intel import OVModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import yaml

    from knowledge_recovery import deployment
    from knowledge_recovery.jobs import Jobs
    from knowledge_recovery.paths import Layout
    from knowledge_recovery.text import python_reference

    torch.set_num_threads(args.threads)
    # the config as the finished run read it (defaults filled in): the deploy environment has no
    # Snakemake to validate the file with
    raw = yaml.safe_load(open(args.config))
    run = Layout({"results_dir": raw.get("results_dir", "results"), "experiment": raw["experiment"]})
    jobs = Jobs(yaml.safe_load(open(run.summary["config"])))
    deployed = jobs.deployments()
    if not deployed:
        raise SystemExit(f"{args.config} deploys no model (deploy: openvino on a compression entry)")
    model_name = deployed[0][0]
    dense_dir = jobs.paths.checkpoint(model_name)
    tok = AutoTokenizer.from_pretrained(dense_dir)
    exact = {**deployment.EXACT_RUNTIME, "INFERENCE_NUM_THREADS": str(args.threads)}
    variants = {"pytorch dense fp32": AutoModelForCausalLM.from_pretrained(
        dense_dir, dtype=torch.float32).eval()}
    deployed = [d for d in deployed if d.model == model_name]
    exports = [d for d in deployed if d.unit is None]
    for m, c, target, unit_ in deployed:
        # a recovery cell: its compressed cell's export, started from its prompt cache
        model = OVModelForCausalLM.from_pretrained(jobs.paths.deployed(m, c, target),
                                                   ov_config=exact)
        if unit_ is None:
            variants[f"openvino {c}"] = model
        else:
            variants[f"openvino {c} + {unit_}"] = deployment.with_prompt(
                model, deployment.load_prompt(jobs.paths.deployed_prompt(m, c, target, unit_)))
    quantized = [d.compression for d in exports
                 if deployment.quantized_stage(jobs.compression[d.compression])]
    if quantized:
        variants[f"openvino {quantized[0]} (runtime defaults)"] = OVModelForCausalLM.from_pretrained(
            jobs.paths.deployed(model_name, quantized[0], "openvino"),
            ov_config={"INFERENCE_NUM_THREADS": str(args.threads), "CACHE_DIR": ""})
    ids = tok(python_reference()[:200000], return_attention_mask=False)["input_ids"]
    k = args.new_tokens
    print(f"model {model_name}; cpu, {args.threads} threads; input {args.seq_len} tokens (after "
          f"the prompt, if any); decode "
          f"{k} tokens; median of {args.rounds} rounds; {deployment.versions()}")
    for batch in args.batches:
        x = torch.tensor(ids[: batch * args.seq_len]).view(batch, args.seq_len)
        times = generation_times(variants, x, k, args.rounds, tok.eos_token_id)
        print(f"\nbatch {batch}")
        print(f"{'variant':<44}{'prefill ms':>11}{'CPU ms':>9}{'decode ms/tok':>15}{'CPU ms':>9}"
              f"{'prefill x':>11}{'decode x':>10}")
        base = None
        for name in variants:
            pre, dec = times[name]["prefill"], times[name]["decode"]
            base = base or {"pre": pre[0], "dec": dec[0]}
            print(f"{name:<44}{pre[0] * 1e3:>11.1f}{pre[1] * 1e3:>9.1f}{dec[0] * 1e3:>15.2f}"
                  f"{dec[1] * 1e3:>9.2f}{pre[0] / base['pre']:>11.2f}{dec[0] / base['dec']:>10.2f}")
    print("\nsize on disk (MB):", {d.compression: round(deployment.disk_bytes(
        jobs.paths.deployed(*d[:3])) / 1e6, 1) for d in exports})


if __name__ == "__main__":
    main()
