"""Evaluation with lm-eval on a model held in memory (a plain HF model or a PeftModel)."""
from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline() -> None:
    """Compute steps never touch the network (datasets otherwise stalls on a ping)."""
    os.environ.update(OFFLINE_ENV)


def task_manager(task_dirs: list[str], need_builtin: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(d) for d in task_dirs] or None,
                       include_defaults=need_builtin)


def padding_aware_lm(**kwargs):
    """lm-eval's HFLM, except that each log-likelihood batch reaches the model with an attention
    mask. lm-eval right-pads a batch with zeros and passes no mask, which causal attention makes
    harmless for the real tokens, but IDP scores its prompts by the attention of every input
    token: it must know where each row ends. The lengths are taken from lm-eval's own padding
    call (`pad_and_concat`), wrapped only while this model computes log-likelihoods."""
    import torch
    import lm_eval.models.huggingface as hf

    class PaddingAwareLM(hf.HFLM):
        _lengths = None

        def _loglikelihood_tokens(self, *args, **kw):
            pad_and_concat = hf.pad_and_concat

            def recording(max_length, tensors, padding_side="right"):
                self._lengths = [t.shape[-1] for t in tensors]
                return pad_and_concat(max_length, tensors, padding_side)

            hf.pad_and_concat = recording
            try:
                return super()._loglikelihood_tokens(*args, **kw)
            finally:
                hf.pad_and_concat = pad_and_concat

        def _model_call(self, inps, attn_mask=None, labels=None):
            lengths, self._lengths = self._lengths, None
            if attn_mask is not None or lengths is None:
                return super()._model_call(inps, attn_mask, labels)
            if len(lengths) != len(inps) or max(lengths) != inps.shape[1]:
                raise RuntimeError(f"lm-eval padded {lengths} but called the model on "
                                   f"{tuple(inps.shape)}: this lm-eval version batches otherwise")
            positions = torch.arange(inps.shape[1], device=inps.device)
            mask = (positions[None] < torch.tensor(lengths, device=inps.device)[:, None]).long()
            with torch.no_grad():
                return self.model(input_ids=inps, attention_mask=mask).logits

    return PaddingAwareLM(**kwargs)


def evaluate(model, tokenizer, tasks: list[dict], manager, batch_size: int,
             bootstrap_iters: int, seed: int, log_samples: bool = False,
             padding_aware: bool = False) -> dict:
    """Run lm-eval; `tasks` are {"name", "limit"} dicts. Returns {task: {metric: value}}, plus
    with log_samples each document's choice log-likelihoods under "loglikelihoods"."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = (padding_aware_lm if padding_aware else HFLM)(pretrained=model, tokenizer=tokenizer,
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
            results[name]["documents"] = out["n-samples"][name]["effective"]
            if log_samples:
                results[name].update(per_question(out["samples"][name]))
    return results


# Per-question records kept from lm-eval's samples: they go to the cell's samples file, not to
# results.json (`split_samples`), and every paired statistic is computed from them.
SAMPLE_KEYS = ("doc_id", "target", "loglikelihoods", "correct", "correct_norm", "prompt")


def per_question(samples: list[dict]) -> dict:
    """Each document's choice log-likelihoods, gold index and correctness (acc; acc_norm where
    the task has it; exact match for generation tasks), in document order."""
    samples = sorted(samples, key=lambda s: s["doc_id"])

    def loglikelihoods(s):
        resps = s["filtered_resps"]
        return [r[0] for r in resps] if all(isinstance(r, (list, tuple)) for r in resps) else None

    return {"doc_id": [s["doc_id"] for s in samples],
            "target": [s["target"] if isinstance(s["target"], (int, float)) else None
                       for s in samples],
            "loglikelihoods": [loglikelihoods(s) for s in samples],
            "correct": [s.get("acc", s.get("exact_match")) for s in samples],
            "correct_norm": [s.get("acc_norm") for s in samples]}


def split_samples(results: dict) -> tuple[dict, dict]:
    """(results without the per-question records, {task: per-question records})."""
    metrics = {task: {k: v for k, v in r.items() if k not in SAMPLE_KEYS}
               for task, r in results.items()}
    samples = {task: {k: r[k] for k in SAMPLE_KEYS if k in r} for task, r in results.items()}
    return metrics, {task: rec for task, rec in samples.items() if rec}


def evaluate_recovered(model, tokenizer, tasks: list[dict], manager, cfg: dict, seed: int,
                       entry: dict) -> dict:
    """`evaluate` for a model recovered by a `recovery:` entry (method none: the plain model),
    with per-question records. The method's record says whether its batches need an attention
    mask (`padding_aware_lm`) and may run its own evaluation (IDP's selection variants)."""
    from .registry import recovery_method

    record = recovery_method(entry["method"])

    def run(log_samples: bool) -> dict:
        return evaluate(model, tokenizer, tasks, manager, cfg["batch_size"], cfg["bootstrap_iters"],
                        seed, log_samples=log_samples, padding_aware=record.padding_aware)

    return record.evaluate(model, entry, run) if record.evaluate else run(True)


def evaluate_cell(model, tokenizer, tasks: list[dict], manager, cfg: dict, seed: int,
                  entry: dict, state_dir=None, key: str = "", log=print) -> dict:
    """`evaluate_recovered`, one task at a time, so that a task's numbers do not depend on which
    other tasks share the job (lm-eval batches a call's requests together). With `state_dir`,
    each finished task's results are kept there under `key` (what they were computed from), and
    a re-run after a kill evaluates only the tasks not yet done."""
    from .artifacts import kill_point, read_json, write_json

    results = {}
    for task in tasks:
        saved = Path(state_dir, f"{task['name']}.json") if state_dir else None
        if saved is not None and saved.is_file():
            kept = read_json(saved)
            if kept.get("key") == key:
                log(f"{task['name']}: kept from {saved}")
                results[task["name"]] = kept["results"]
                continue
        results.update(evaluate_recovered(model, tokenizer, [task], manager, cfg, seed, entry))
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
