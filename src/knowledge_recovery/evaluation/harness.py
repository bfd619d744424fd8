"""Evaluation with lm-eval on a model held in memory (a plain HF model or a PeftModel)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline() -> None:
    """Compute steps never touch the network (datasets otherwise stalls on a ping)."""
    os.environ.update(OFFLINE_ENV)


def task_manager(task_dirs: list[str], need_builtin: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(d) for d in task_dirs] or None,
                       include_defaults=need_builtin)


def evaluate(model, tokenizer, tasks: list[dict], manager, batch_size: int,
             bootstrap_iters: int, seed: int, log_samples: bool = False,
             recovery: dict | None = None, shared_context: bool = True, lm=None) -> dict:
    """Run lm-eval on `model`, recovered by the `recovery` entry (None: the plain model), with
    `lm.RecoveredLM`; `tasks` are {"name", "limit"} dicts. Returns {task: {metric: value}},
    plus with log_samples each document's choice log-likelihoods under "loglikelihoods". `lm`:
    an lm-eval model to use instead (the deploy step's OpenVINO model)."""
    import lm_eval

    if lm is None:
        from knowledge_recovery.evaluation.lm import RecoveredLM

        lm = RecoveredLM(model, tokenizer, recovery=recovery, shared_context=shared_context,
                         batch_size=batch_size)
    by_limit: dict = {}
    for task in tasks:  # one harness call per distinct limit: each call has a fixed setup cost
        by_limit.setdefault(task.get("limit"), []).append(task["name"])
    results = {}
    for limit, names in by_limit.items():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=manager, limit=limit,
            bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, log_samples=log_samples,
            num_fewshot=0)
        for name in names:
            metrics = out["results"][name]
            results[name] = {
                key.split(",")[0]: (None if val == "N/A" else val)
                for key, val in metrics.items() if key != "alias" and "," in key
            }
            leaves = _leaf_tasks(out, name)
            results[name]["documents"] = sum(out["n-samples"][t]["effective"] for t in leaves)
            if log_samples:
                results[name].update(_group_questions(out["samples"], leaves, name,
                                                      getattr(lm, "choices", None)))
                correct = results[name]["correct"]
                if "acc" not in results[name] and all(c is not None for c in correct):
                    # a group lm-eval does not aggregate: the accuracy over its questions
                    results[name]["acc"] = sum(map(float, correct)) / max(1, len(correct))
    return results


def _leaf_tasks(out: dict, name: str) -> list[str]:
    """The tasks a task name of lm-eval's output stands for: itself, or a group's leaves."""
    subtasks = out.get("group_subtasks", {}).get(name)
    return [leaf for s in subtasks for leaf in _leaf_tasks(out, s)] if subtasks else [name]


def _group_questions(samples: dict, leaves: list[str], name: str, choices=None) -> dict:
    """`per_question` of a task, or of a group as one task: its leaves' questions one after
    the other, each document id prefixed by its leaf task (ids repeat across leaves)."""
    if leaves == [name]:
        return per_question(samples[name], choices)
    merged: dict = {}
    for leaf in leaves:
        rec = per_question(samples[leaf], choices)
        rec["doc_id"] = [f"{leaf}/{d}" for d in rec["doc_id"]]
        for key, values in rec.items():
            merged.setdefault(key, []).extend(values)
    return merged


# Per-question records kept from lm-eval's samples: they go to the cell's samples file, not to
# results.json (`split_samples`), and every paired statistic is computed from them.
SAMPLE_KEYS = ("doc_id", "target", "loglikelihoods", "correct", "correct_norm", "prompt")


def per_question(samples: list[dict], choices: dict | None = None) -> dict:
    """Each document's choice log-likelihoods, gold index and correctness (acc; acc_norm where
    the task has it; exact match for generation tasks), in document order; with `choices`
    (context string -> prompt, `lm.RecoveredLM`), the prompt chosen for each document's context."""
    samples = sorted(samples, key=lambda s: s["doc_id"])

    def loglikelihoods(s):
        resps = s["filtered_resps"]
        return [r[0] for r in resps] if all(isinstance(r, (list, tuple)) for r in resps) else None

    return {"doc_id": [s["doc_id"] for s in samples],
            "target": [s["target"] if isinstance(s["target"], (int, float)) else None
                       for s in samples],
            "loglikelihoods": [loglikelihoods(s) for s in samples],
            "correct": [s.get("acc", s.get("exact_match")) for s in samples],
            "correct_norm": [s.get("acc_norm") for s in samples],
            **({"prompt": [choices.get(s["arguments"][0][0]) for s in samples]}
               if choices else {})}


def split_samples(results: dict) -> tuple[dict, dict]:
    """(results without the per-question records, {task: per-question records})."""
    metrics = {task: {k: v for k, v in r.items() if k not in SAMPLE_KEYS}
               for task, r in results.items()}
    samples = {task: {k: r[k] for k in SAMPLE_KEYS if k in r} for task, r in results.items()}
    return metrics, {task: rec for task, rec in samples.items() if rec}


def tracked_metrics(results: dict) -> dict:
    """MLflow metrics of a cell's results: every `<task>.<metric>`, and `mean_acc` over the
    tasks that report an accuracy, with its 95% interval `mean_acc_low`/`mean_acc_high` (normal,
    from lm-eval's per-task standard errors, the tasks' questions independent). The summary's
    paired intervals (summary/comparisons.*) are the ones to compare cells by."""
    scored = [ms for ms in results.values() if isinstance(ms.get("acc"), (int, float))]
    out = {f"{t}.{m}": v for t, ms in results.items() for m, v in ms.items()}
    if scored:
        mean = sum(ms["acc"] for ms in scored) / len(scored)
        out["mean_acc"] = mean
        errors = [ms.get("acc_stderr") for ms in scored]
        if all(isinstance(e, (int, float)) and math.isfinite(e) for e in errors):
            half = 1.959964 * math.sqrt(sum(e * e for e in errors)) / len(scored)
            out.update(mean_acc_low=mean - half, mean_acc_high=mean + half)
    return out


def evaluate_recovered(model, tokenizer, tasks: list[dict], manager, cfg: dict, seed: int,
                       entry: dict) -> dict:
    """`evaluate` for a model recovered by a `recovery:` entry (method none: the plain model),
    with per-question records. The method's record may run its own evaluation (IDP's selection
    variants: one run per prompt for the oracle)."""
    from knowledge_recovery.registry import recovery_method

    record = recovery_method(entry["method"])

    def run(log_samples: bool) -> dict:
        return evaluate(model, tokenizer, tasks, manager, cfg["batch_size"], cfg["bootstrap_iters"],
                        seed, log_samples=log_samples, recovery=entry,
                        shared_context=cfg.get("shared_context", True))

    return record.evaluate(model, record.parse(entry), run) if record.evaluate else run(True)


def evaluate_cell(model, tokenizer, tasks: list[dict], manager, cfg: dict, seed: int,
                  entry: dict, state_dir=None, key: str = "", log=print, lm=None) -> dict:
    """`evaluate_recovered`, one task at a time, so that a task's numbers do not depend on which
    other tasks share the job (lm-eval batches a call's requests together). With `state_dir`,
    each finished task's results are kept there under `key` (what they were computed from), and
    a re-run after a kill evaluates only the tasks not yet done. `lm`: an lm-eval model that
    already holds the whole cell (the deploy step's OpenVINO model), scored as it is."""
    from knowledge_recovery.artifacts import kill_point, read_json, write_json

    results = {}
    for done, task in enumerate(tasks, 1):
        saved = Path(state_dir, f"{task['name']}.json") if state_dir else None
        if saved is not None and saved.is_file():
            kept = read_json(saved)
            if kept.get("key") == key:
                log(f"{task['name']}: kept from {saved}")
                results[task["name"]] = kept["results"]
                continue
        start = time.perf_counter()
        if lm is None:
            found = evaluate_recovered(model, tokenizer, [task], manager, cfg, seed, entry)
        else:
            found = evaluate(None, None, [task], manager, cfg["batch_size"],
                             cfg["bootstrap_iters"], seed, log_samples=True, lm=lm)
        results.update(found)
        # a log file's progress (no progress bars there): a line per task entry
        scores = ", ".join(f"{name} acc {r['acc']:.3f}" for name, r in found.items() if "acc" in r)
        log(f"task {done}/{len(tasks)} {task['name']}: {scores or 'done'} "
            f"({time.perf_counter() - start:.1f} s)")
        if saved is not None:
            write_json(saved, {"key": key, "results": results[task["name"]]})
        kill_point("evaluate:task")  # tests: killed with some tasks done, others not
    return results


def perplexity(model, tokenizer, text: str, seq_len: int = 256, max_windows: int | None = None,
               batch_size: int = 4) -> float:
    """Perplexity over consecutive non-overlapping windows of seq_len tokens."""
    import torch

    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    n = len(ids) // seq_len if max_windows is None else min(len(ids) // seq_len, max_windows)
    windows = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch_size):
            batch = windows[i: i + batch_size].to(model.device)
            total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    return float(torch.exp(torch.tensor(total / n)))
