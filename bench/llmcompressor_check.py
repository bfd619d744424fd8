"""Cross-check: each of our compression methods against llmcompressor's implementation of the same
method on the same model, calibration windows and perplexity windows, timed side by side.

    make .venv-llmcompressor        # its own environment: its pins conflict with ours
    .venv/bin/python bench/llmcompressor_check.py [--methods ...] [--calibration wikitext] [--repeats 3]

Ours run through `bench/compression.py --one` in .venv; theirs through this file's `--theirs` in
.venv-llmcompressor (llmcompressor 0.14.0.1, torch 2.13, transformers <= 5.17). Target: our
perplexity within 2% of theirs or better; our wall time at most theirs. Sparsity of both models
is printed: a pruning run that left the weights dense is no comparison.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THEIR_PYTHON = REPO / ".venv-llmcompressor" / "bin" / "python"
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))


def _quant_group(bits, group, symmetric):
    return {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": bits, "type": "int", "symmetric": symmetric,
        "strategy": "group" if group else "channel", "group_size": group}}}


def their_recipe(name: str):
    """The llmcompressor modifier equivalent to one entry of bench/compression.py's METHODS."""
    from compression import METHODS
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    e = METHODS[name]
    structure = e.get("pattern", "0:0")
    sparsity = e.get("sparsity", 0.5)
    # Their pruning `targets` are the blocks whose linears get pruned (as in their examples):
    # with targets="Linear" nothing was pruned, and with ["Linear"] the output head was pruned
    # too (its name inside the match is "lm_head.", which ignore=["lm_head"] misses).
    blocks = [r"re:model\.layers\.\d+$"]
    if e["method"] == "wanda":
        return WandaPruningModifier(sparsity=sparsity, mask_structure=structure, targets=blocks)
    if e["method"] == "sparsegpt":
        return SparseGPTModifier(sparsity=sparsity, mask_structure=structure, targets=blocks,
                                 dampening_frac=e["damping"])
    groups = _quant_group(e["bits"], e["group_size"], e["symmetric"])
    if e["method"] == "rtn":
        return QuantizationModifier(config_groups=groups, ignore=["lm_head"])
    if e["method"] == "gptq":
        return GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=e["damping"],
                            actorder="static" if e["act_order"] else None)
    if e["method"] == "awq":
        import torch
        from llmcompressor.modifiers.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.accelerator.is_available():
            # Their AWQ pins its cached activations in host memory for faster copies to a GPU,
            # which raises on a machine without one; there is nothing to copy to on a CPU.
            IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None

        return AWQModifier(config_groups=groups, ignore=["lm_head"])
    raise ValueError(f"no llmcompressor equivalent for {name}")


def theirs(args) -> None:
    import torch
    from compression import head_sparsity, texts
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowledge_recovery.compression import calibration
    from knowledge_recovery.evaluation import harness

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.checkpoint)
    calib_text, eval_text = texts(args.calibration)
    batch = calibration.calibration_batch(tok, calib_text, args.samples, args.seq_len, seed=0)
    data = Dataset.from_dict({"input_ids": batch.tolist(),
                              "attention_mask": torch.ones_like(batch).tolist()})
    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(model=model, dataset=data, recipe=their_recipe(args.theirs),
            num_calibration_samples=args.samples, max_seq_length=args.seq_len)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ppl = harness.perplexity(model, tok, eval_text, 256, args.ppl_windows)
    linears = [m.weight for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    sparsity = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    print(json.dumps({"method": args.theirs, "wall_s": wall, "cpu_s": cpu,
                      "peak_rss_mb": peak / 1024, "ppl": ppl, "sparsity": sparsity,
                      "head_sparsity": head_sparsity(model)}))


def run(cmd) -> dict | str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return (out.stderr.strip().splitlines() or ["failed"])[-1][:120]
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from compression import common_arguments

    parser = common_arguments(calibration="wikitext")
    parser.add_argument("--methods", nargs="*",
                        default=["rtn-w4-g64", "gptq-w4-g64", "awq-w4-g64", "wanda-s0.5",
                                 "sparsegpt-s0.5", "wanda-2to4"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="paired runs per method; medians are compared (timings here vary "
                             "10-30%% run to run)")
    parser.add_argument("--theirs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.theirs:
        return theirs(args)
    if not THEIR_PYTHON.is_file():
        sys.exit(f"{THEIR_PYTHON} is missing: run `make .venv-llmcompressor` first")
    common = ["--checkpoint", args.checkpoint, "--samples", str(args.samples), "--seq-len",
              str(args.seq_len), "--ppl-windows", str(args.ppl_windows), "--threads",
              str(args.threads), "--calibration", args.calibration]
    print(f"calibration {args.samples} x {args.seq_len} tokens of {args.calibration} text; "
          f"perplexity {args.ppl_windows} x 256 tokens of WikiText-2; median of {args.repeats} "
          "paired runs (ours and theirs alternate which goes first)")
    print(f"{'method':<16}{'ours ppl':>10}{'theirs ppl':>12}{'ppl ratio':>11}{'ours s':>9}"
          f"{'theirs s':>10}{'time ratio':>12}{'CPU ratio':>11}{'ours sp.':>10}{'theirs sp.':>12}"
          f"{'head sp.':>10}")
    for name in args.methods:
        ours_cmd = [sys.executable, str(REPO / "bench/compression.py"), "--one", name, *common]
        their_cmd = [str(THEIR_PYTHON), __file__, "--theirs", name, *common]
        pairs = []
        for r in range(args.repeats):
            first, second = (ours_cmd, their_cmd) if r % 2 == 0 else (their_cmd, ours_cmd)
            a, b = run(first), run(second)
            pairs.append((a, b) if r % 2 == 0 else (b, a))
        failed = next(((o, t) for o, t in pairs if isinstance(o, str) or isinstance(t, str)), None)
        if failed:
            show = lambda r: r if isinstance(r, str) else f"ppl {r['ppl']:.2f}, {r['wall_s']:.1f} s"  # noqa: E731
            print(f"{name:<16} ours: {show(failed[0])}; theirs: {show(failed[1])}")
            continue
        med = lambda side, key, pairs=pairs: statistics.median(p[side][key] for p in pairs)  # noqa: E731
        ours, their = pairs[0]
        print(f"{name:<16}{med(0, 'ppl'):>10.2f}{med(1, 'ppl'):>12.2f}"
              f"{med(0, 'ppl') / med(1, 'ppl'):>11.3f}{med(0, 'wall_s'):>9.1f}"
              f"{med(1, 'wall_s'):>10.1f}"
              f"{med(0, 'wall_s') / med(1, 'wall_s'):>12.2f}{med(0, 'cpu_s') / med(1, 'cpu_s'):>11.2f}"
              f"{ours['sparsity']:>10.3f}{their['sparsity']:>12.3f}"
              f"{max(ours['head_sparsity'], their['head_sparsity']):>10.3f}", flush=True)
        if args.repeats > 1:
            print(f"{'':<16}wall s, ours / theirs per pair: "
                  + ", ".join(f"{o['wall_s']:.1f}/{t['wall_s']:.1f}" for o, t in pairs))

if __name__ == "__main__":
    main()
