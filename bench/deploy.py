"""Latency of the deployed models (OpenVINO) beside PyTorch, side by side in one run.

    make run CONFIG=config/deploy.yaml
    .venv-openvino/bin/python bench/deploy.py --config config/deploy.yaml [--rounds 5]

Runs in the deploy environment. The deploy_latency step's measurement
(openvino.latency_variants on jobs.latency_deployments, openvino.latency: the dense model in
PyTorch float32, every deployed model on OpenVINO with the exact runtime the deploy step
checked, a recovery cell as its prompt cache in front of its compressed model's export, and the
first quantized export again with OpenVINO's CPU defaults), with the rounds and sizes given
here, printed.
"""
from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="config/deploy.yaml")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    import yaml
    from transformers import AutoTokenizer

    from knowledge_recovery import artifacts
    from knowledge_recovery.deployment import openvino
    from knowledge_recovery.pipeline.jobs import Jobs
    from knowledge_recovery.pipeline.paths import Layout
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
    model_name = deployed[0].model
    tok = AutoTokenizer.from_pretrained(jobs.paths.checkpoint(model_name))
    variants = openvino.latency_variants(jobs.paths.checkpoint(model_name),
                                         jobs.latency_deployments(model_name, "openvino"),
                                         args.threads)
    ids = tok(python_reference()[:200000], return_attention_mask=False)["input_ids"]
    settings = {"batches": args.batches, "seq_len": args.seq_len, "new_tokens": args.new_tokens,
                "rounds": args.rounds}
    print(f"model {model_name}; cpu, {args.threads} threads; input {args.seq_len} tokens (after "
          f"the prompt, if any); decode {args.new_tokens} tokens; median of {args.rounds} rounds; "
          f"{artifacts.versions(openvino.RUNTIME_PACKAGES)}")
    batch = None
    for row in openvino.latency(variants, ids, settings, tok.eos_token_id):
        if row["batch"] != batch:
            batch = row["batch"]
            print(f"\nbatch {batch}")
            print(f"{'variant':<44}{'prefill ms':>11}{'CPU ms':>9}{'decode ms/tok':>15}"
                  f"{'CPU ms':>9}{'tok/s':>8}{'prefill x':>11}{'decode x':>10}")
        print(f"{row['variant']:<44}{row['prefill_ms']:>11.1f}{row['prefill_cpu_ms']:>9.1f}"
              f"{row['decode_ms']:>15.2f}{row['decode_cpu_ms']:>9.2f}"
              f"{row['decode_tokens_per_s']:>8.1f}{row['prefill_x']:>11.2f}{row['decode_x']:>10.2f}")
    print("\nsize on disk (MB):", {d.compression: round(artifacts.dir_bytes(
        jobs.paths.deployed(*d[:3])) / 1e6, 1) for d in deployed if d.unit is None
        and d.model == model_name})


if __name__ == "__main__":
    main()
