"""Compression methods on a real model: time, CPU time, peak memory and WikiText-2 perplexity.

    .venv/bin/python bench/apply.py [--checkpoint DIR] [--samples 16 --seq-len 256]

Each method runs in its own process (clean peak-RSS figure) on the same dense checkpoint and the
same calibration windows. Default checkpoint: the default grid's SmolLM2-135M (run `make run`
first). Perplexity text: ../shared WikiText-2 test when present, else the built-in text.
Expected: dense < GPTQ-4bit, AWQ-4bit < RTN-4bit; Wanda and SparseGPT 50% well below magnitude 50%.
Packable settings (symmetric RTN/GPTQ) are also exported packed: "packed MB" is that checkpoint's
size on disk (verified to decode to the compressed weights; the float32 model is about 515 MB).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "benchmarks" / "wikitext" / "wiki.test.raw"
METHODS = {
    "dense": {"method": "dense"},
    "magnitude-s0.5": {"method": "magnitude", "sparsity": 0.5},
    "wanda-s0.5": {"method": "wanda", "sparsity": 0.5, "true_sequential": False},
    "sparsegpt-s0.5": {"method": "sparsegpt", "sparsity": 0.5, "damping": 0.01,
                       "true_sequential": False},
    "wanda-2to4": {"method": "wanda", "pattern": "2:4", "true_sequential": False},
    "rtn-w4-g64": {"method": "rtn", "bits": 4, "group_size": 64, "symmetric": False},
    "gptq-w4-g64": {"method": "gptq", "bits": 4, "group_size": 64, "symmetric": False,
                    "damping": 0.01, "act_order": False, "true_sequential": False},
    "gptq-w4-g64-sym": {"method": "gptq", "bits": 4, "group_size": 64, "symmetric": True,
                        "damping": 0.01, "act_order": False},
    "gptq-w4-g64-ts": {"method": "gptq", "bits": 4, "group_size": 64, "symmetric": False,
                       "damping": 0.01, "act_order": False, "true_sequential": True},
    "gptq-w3-g64": {"method": "gptq", "bits": 3, "group_size": 64, "symmetric": False,
                    "damping": 0.01, "act_order": True},
    "gptq-w3-g64-ts": {"method": "gptq", "bits": 3, "group_size": 64, "symmetric": False,
                       "damping": 0.01, "act_order": True, "true_sequential": True},
    "rtn-w3-g64": {"method": "rtn", "bits": 3, "group_size": 64, "symmetric": False},
    "awq-w4-g64": {"method": "awq", "bits": 4, "group_size": 64, "symmetric": False},
    "awq-w3-g64": {"method": "awq", "bits": 3, "group_size": 64, "symmetric": False},
}


def texts(calibration: str) -> tuple[str, str]:
    """(calibration text, perplexity text)."""
    from knowledge_recovery.text import python_reference

    if calibration == "wikitext":  # in-domain: first half calibrates, second half evaluates
        wiki = WIKITEXT.read_text()
        return wiki[: len(wiki) // 2], wiki[len(wiki) // 2:]
    calib = python_reference()
    return calib, (WIKITEXT.read_text() if WIKITEXT.is_file() else calib[-200000:])


def head_sparsity(model) -> float:
    """Share of zeros in the output head (tied to the embeddings in SmolLM2): must stay 0."""
    return float((model.get_output_embeddings().weight == 0).float().mean())


def one(args) -> None:
    import torch
    import transformers  # noqa: F401 - imported before the baseline is taken

    from knowledge_recovery import artifacts
    from knowledge_recovery.compression import apply, calibration, entries, packing
    from knowledge_recovery.evaluation import harness
    from knowledge_recovery.models import checkpoints

    torch.set_num_threads(args.threads)
    libraries = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # interpreter + libraries
    model, tok = checkpoints.load_checkpoint(args.checkpoint)
    calib_text, eval_text = texts(args.calibration)
    batch = calibration.calibration_batch(tok, calib_text, args.samples, args.seq_len, seed=0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    _, grids, stats = apply.compress(model, METHODS[args.one], batch, log=lambda *_: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    ppl = harness.perplexity(model, tok, eval_text, 256, args.ppl_windows)
    packed_mb = None
    if args.one != "dense" and entries.unpackable_reason(METHODS[args.one]) is None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints.save_checkpoint(model, tok, f"{tmp}/checkpoint")
            packing.export_packed(model, tok, grids, METHODS[args.one], f"{tmp}/packed")
            packing.verify(f"{tmp}/packed", f"{tmp}/checkpoint")
            packed_mb = artifacts.dir_bytes(f"{tmp}/packed") / 2**20
    print(json.dumps({"method": args.one, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 1024,
                      "rss_before_mb": rss0 / 1024, "libraries_mb": libraries / 1024,
                      "fp32_mb": fp32_mb, "ppl": ppl,
                      "packed_mb": packed_mb, "sparsity": stats["sparsity"],
                      "head_sparsity": head_sparsity(model),
                      "bits": stats["effective_bits_per_weight"]}))


def common_arguments(calibration: str = "builtin") -> argparse.ArgumentParser:
    """The model, data and threads of a compression run (shared with llmcompressor_check.py)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint",
                        default=str(REPO / "results/default/models/smollm2-135m/dense/checkpoint"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", choices=["builtin", "wikitext"], default=calibration,
                        help="builtin: the pipeline's default text; wikitext: first half of the "
                             "WikiText-2 test file (perplexity then on its second half)")
    return parser


def main() -> None:
    parser = common_arguments()
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    print(f"checkpoint {args.checkpoint}; calibration {args.samples} x {args.seq_len} tokens of "
          f"{args.calibration} text; perplexity on "
          f"{'WikiText-2 test' if WIKITEXT.is_file() else 'built-in text'}"
          f"{' (second half)' if args.calibration == 'wikitext' else ''}, "
          f"{args.ppl_windows} x 256 tokens")
    print("peak MB: the whole process's peak RSS; x fp32: that over the float32 model's size; "
          "above libs: (peak - RSS of the interpreter and libraries before loading) / fp32")
    print(f"{'method':<16}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'x fp32':>8}{'above libs':>11}"
          f"{'sparsity':>9}"
          f"{'bits':>6}{'ppl':>9}{'packed MB':>11}")
    for name in args.methods:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--checkpoint", args.checkpoint,
                              "--samples", str(args.samples), "--seq-len", str(args.seq_len),
                              "--ppl-windows", str(args.ppl_windows), "--threads", str(args.threads),
                              "--calibration", args.calibration],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{name:<16} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:<16}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['peak_rss_mb']:>9.0f}"
              f"{r['peak_rss_mb'] / r['fp32_mb']:>8.2f}"
              f"{(r['peak_rss_mb'] - r['libraries_mb']) / r['fp32_mb']:>11.2f}"
              f"{r['sparsity']:>9.3f}{r['bits']:>6.2f}"
              f"{r['ppl']:>9.2f}"
              f"{'-' if r['packed_mb'] is None else format(r['packed_mb'], '.1f'):>11}", flush=True)


if __name__ == "__main__":
    main()
