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


class ContextScorer:
    """How a model scores a batch of contexts once and answers on top of the contexts' cached
    keys and values:
    - `prefill(ids, mask, keep)` -> (logits of the last `keep` positions, cache); the contexts
      are right-padded (mask 0);
    - `extend(ids, cache, mask, positions)` -> logits of every position of ids; `mask` covers
      the cache and ids, `positions` are the ids' position ids;
    - `packed(ids, mask, positions, rows, columns)` (optional) -> logits at (rows, columns) of
      one pass over rows that each hold a question's context followed by all its answers, under
      `mask`, a 4D additive mask (an answer sees the context and itself, not the other answers).
      One call per batch and no cache: the fastest way where the model takes such a mask.
    `window`: the model's sliding window (`attention_window`), which a packed row must fit.
    For a PeftModel with a prompt (prompt or prefix tuning) the prompt goes in with the context
    and the answers run on the base model: peft would put the prompt in front of them again."""

    def __init__(self, prefill, extend, packed=None, window: int | None = None):
        self.prefill, self.extend, self.packed, self.window = prefill, extend, packed, window

    @classmethod
    def for_model(cls, model) -> "ContextScorer":
        peft_config = getattr(model, "active_peft_config", None)
        prompt_learning = peft_config is not None and peft_config.is_prompt_learning
        answers = model.get_base_model() if prompt_learning else model

        def prefill(ids, mask, keep):
            out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=keep)
            return out.logits, out.past_key_values

        def extend(ids, cache, mask, positions):
            return answers(input_ids=ids, cache=cache, attention_mask=mask,
                           position_ids=positions, use_cache=True).logits

        def packed(ids, mask, positions, rows, columns):
            # The output layer costs a fifth of a small model's work per token: run it on the
            # positions whose log-probs are needed only, gathered before it, not on every row's
            # whole width (logits_to_keep keeps the same columns in every row).
            gathered = []

            def gather(_, args):
                gathered.append(True)
                return (args[0][rows, columns][None], *args[1:])

            hook = model.get_output_embeddings().register_forward_pre_hook(gather)
            try:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).logits
            finally:
                hook.remove()
            # a model that applies its output weights without calling the module: every row
            return logits[0] if gathered else logits[rows, columns]

        window = attention_window(model)
        # peft's prompt methods build their own 2D masks; flash kernels take no 4D mask
        if (prompt_learning or model.get_output_embeddings() is None
                or model.config.get_text_config()._attn_implementation not in ("sdpa", "eager")):
            return cls(prefill, extend, window=window)
        return cls(prefill, extend, packed, window)


def attention_window(model) -> int | None:
    """How far back the model's sliding-window (or chunked) layers attend; None: no limit."""
    config = model.config.get_text_config()
    windows = [getattr(config, key, None) for key in ("sliding_window", "attention_chunk_size")]
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2 names one it does not use
        windows[0] = None
    windows = [w for w in windows if w]
    return min(windows) if windows else None


# A forward call costs about as much as this many more tokens (on a CPU, streaming the weights;
# the same order on a GPU for a 7B model): what `padded_chunks` trades padding against.
CALL_COST_TOKENS = 64


def padded_chunks(widths: list[int], budget: int) -> list[tuple[int, int]]:
    """Split rows of these widths (longest first) into [start, end) chunks, each padded to its
    first row, holding at most `budget` tokens (one row at least), at the least cost in padded
    tokens plus CALL_COST_TOKENS a chunk (exact, by dynamic programming)."""
    n = len(widths)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, -1, -1):
            if (end - start) * widths[start] > budget and end - start > 1:
                break
            cost = best[start] + CALL_COST_TOKENS + (end - start) * widths[start]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks, end = [], n
    while end:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


def cache_rows(cache, index, last: bool = False):
    """The rows `index` of a key-value cache, for a forward pass that appends to them; the
    `last` use of `cache` may take it. A cache's layers rebind their tensors when they append
    or select rows, never writing into them, so copying the cache and its layers is enough
    (copying every tensor for every chunk of answers cost 2-3% of an ARC-Easy evaluation)."""
    import copy

    if not last:
        layers = cache.layers
        cache = copy.copy(cache)
        cache.layers = [copy.copy(layer) for layer in layers]
    cache.batch_select_indices(index)
    return cache


def harness_lm(padding_aware: bool = False, scorer: ContextScorer | None = None, **kwargs):
    """lm-eval's HFLM, with two changes to how log-likelihoods are computed:

    - `scorer`: requests that share a context (the choices of a question) are scored with the
      context computed once (`ContextScorer`), instead of one whole sequence per choice: in one
      pass with the answers packed after their context under a block mask where the scorer can
      (`packed`), else each continuation run on the context's cached keys and values. Padding
      is masked and every answer gets its own position ids, so the numbers equal HFLM's up to
      float rounding (the tests check 1e-4). Rolling windows (perplexity) and sequences lm-eval
      would truncate go the plain way.
    - `padding_aware`: each plain batch reaches the model with an attention mask. lm-eval
      right-pads a batch with zeros and passes no mask, which causal attention makes harmless
      for the real tokens, but IDP scores its prompts by the attention of every input token:
      it must know where each row ends. The lengths are taken from lm-eval's own padding call
      (`pad_and_concat`), wrapped only while this model computes log-likelihoods."""
    import torch
    import torch.nn.functional as F
    import lm_eval.models.huggingface as hf

    class HarnessLM(hf.HFLM):
        _lengths = None

        def __init__(self, **kw):
            super().__init__(**kw)
            # the prompt a model that chooses one per input (IDP: `last_choice` after each
            # call) chose for each context, by context string: `per_question` records it
            self.choices: dict[str, int] = {}

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            if scorer is None or self.backend != "causal":
                return self._plain(requests, disable_tqdm, override_bs)
            out: list = [None] * len(requests)
            by_context = {}
            for i, (key, ctx, cont) in enumerate(requests):
                if key is not None and len(ctx) + len(cont) <= self.max_length + 1:
                    by_context.setdefault(tuple(ctx), []).append(i)

            def row_width(c):  # the context, then every answer but its last token
                return len(c) + sum(len(requests[i][2]) - 1 for i in by_context[c])

            # A question goes packed where the scorer can, in one row that a sliding window
            # would not cut; else two-pass, except with a sliding window: a right-padded cache
            # loses a short row's tokens when the window trims it, so those go plain (exact).
            # Rolling windows (perplexity) and sequences lm-eval would truncate go plain.
            packed, shared = [], []
            for c in by_context:
                if scorer.packed is not None and (not scorer.window
                                                  or row_width(c) <= scorer.window):
                    packed.append(c)
                elif not scorer.window:
                    shared.append(c)
            scored = {i for c in packed + shared for i in by_context[c]}
            plain = [i for i in range(len(requests)) if i not in scored]
            if plain:
                answers = self._plain([requests[i] for i in plain], disable_tqdm, override_bs)
                for i, answer in zip(plain, answers):
                    out[i] = answer
            if not packed and not shared:
                return out
            size = self.batch_size if isinstance(self.batch_size, int) else (override_bs or 16)
            # Longest first, in batches of at most the tokens of lm-eval's first batch (size x
            # the longest sequence): short rows go many to a call, padded little.
            budget = size * max(len(requests[i][1]) + len(requests[i][2])
                                for c in packed + shared for i in by_context[c])
            packed.sort(key=lambda c: (-row_width(c), c))
            for a, b in padded_chunks([row_width(c) for c in packed], budget):
                batch = packed[a:b]  # longest first: the batch is as wide as its first row
                self._score_packed(batch, [by_context[c] for c in batch], requests, out,
                                   row_width(batch[0]))
            shared.sort(key=lambda c: (-len(c), c))
            for a, b in padded_chunks([len(c) for c in shared], budget):
                batch = shared[a:b]
                self._score_shared(batch, [by_context[c] for c in batch], requests, out, budget)
            return out

        def _record(self, request, logp):
            """A request's answer from the log-probs of its continuation's tokens (one row
            each): (log-likelihood, greedy)."""
            key, _, cont = request
            target = torch.tensor(cont, device=logp.device)
            out = (float(logp.gather(1, target[:, None]).sum()),
                   bool((logp.argmax(-1) == target).all()))
            self.cache_hook.add_partial("loglikelihood", key, out)
            return out

        @torch.no_grad()
        def _score_packed(self, contexts, members, requests, out, width):
            """One pass: each row is a context followed by its answers (but their last tokens),
            right-padded to `width`; each answer has the positions it would have right after
            the context."""
            device = self.device
            ids = torch.zeros(len(contexts), width, dtype=torch.long)
            positions = torch.zeros_like(ids)
            segment = torch.full_like(ids, -1)  # -1 padding, 0 the context, s answer s
            spans = []  # (request, row, columns of the log-probs of its tokens)
            for r, (context, idx) in enumerate(zip(contexts, members)):
                n = end = len(context)
                ids[r, :n] = torch.tensor(context)
                positions[r, :n] = torch.arange(n)
                segment[r, :n] = 0
                for s, i in enumerate(idx, 1):
                    cont = requests[i][2][:-1]
                    ids[r, end:end + len(cont)] = torch.tensor(cont, dtype=torch.long)
                    positions[r, end:end + len(cont)] = torch.arange(n, n + len(cont))
                    segment[r, end:end + len(cont)] = s
                    spans.append((i, r, [n - 1, *range(end, end + len(cont))]))
                    end += len(cont)
            key, query = segment[:, None, :], segment[:, :, None]
            allowed = ((key >= 0) & (query >= 0) & ((key == 0) | (key == query))
                       & (positions[:, None, :] <= positions[:, :, None]))
            allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no NaN
            dtype = self.model.dtype
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(
                ~allowed, torch.finfo(dtype).min)[:, None]
            rows = torch.tensor([r for _, r, cols in spans for _ in cols], device=device)
            columns = torch.tensor([col for _, _, cols in spans for col in cols], device=device)
            logits = scorer.packed(ids.to(device), mask.to(device), positions.to(device), rows,
                                   columns)
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            start = 0
            for i, _, span in spans:
                out[i] = self._record(requests[i], logp[start:start + len(span)])
                start += len(span)

        @torch.no_grad()
        def _score_shared(self, contexts, members, requests, out, budget):
            device, lengths = self.device, [len(c) for c in contexts]
            longest = lengths[0]
            keep = longest - lengths[-1] + 1  # logits of the positions that end a context
            ids = torch.zeros(len(contexts), longest, dtype=torch.long, device=device)
            context_mask = torch.zeros_like(ids)
            for c, context in enumerate(contexts):
                ids[c, :len(context)] = torch.tensor(context)
                context_mask[c, :len(context)] = 1
            chooser = self.model if hasattr(self.model, "last_choice") else None
            if chooser is not None:
                chooser.last_choice = None
            logits, cache = scorer.prefill(ids, context_mask, keep)
            if chooser is not None and chooser.last_choice is not None:
                for c, idx in enumerate(members):
                    for i in idx:
                        self.choices[requests[i][0][0]] = int(chooser.last_choice[c])
            last = torch.tensor(lengths, device=device) - 1 - (longest - keep)
            first = F.log_softmax(logits[torch.arange(len(contexts), device=device), last],
                                  dim=-1, dtype=self.softmax_dtype)
            # what the model put in front of the contexts (a prompt or prefix: always seen)
            offset = cache.get_seq_length() - longest
            context_mask = torch.cat([context_mask.new_ones(len(contexts), offset),
                                      context_mask], dim=1)

            def answer(i, c, later=None):  # later: log-probs after the continuation's 1st token
                cont = requests[i][2]
                logp = first[c:c + 1]
                if later is not None:
                    logp = torch.cat([logp, later[:len(cont) - 1]])
                out[i] = self._record(requests[i], logp)

            rows = []  # (context, request) of the continuations longer than one token
            for c, idx in enumerate(members):
                for i in idx:
                    if len(requests[i][2]) == 1:
                        answer(i, c)
                    else:
                        rows.append((c, i))
            rows.sort(key=lambda row: -len(requests[row[1]][2]))
            chunks = padded_chunks([len(requests[i][2]) - 1 for _, i in rows], budget)
            chunks = [rows[a:b] for a, b in chunks]
            for n, chunk in enumerate(chunks):
                width = len(requests[chunk[0][1]][2]) - 1
                index = torch.tensor([c for c, _ in chunk], device=device)
                cont_ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
                cont_mask = torch.zeros_like(cont_ids)
                for r, (_, i) in enumerate(chunk):
                    cont = requests[i][2][:-1]
                    cont_ids[r, :len(cont)] = torch.tensor(cont)
                    cont_mask[r, :len(cont)] = 1
                positions = (offset + torch.tensor(lengths, device=device)[index, None]
                             + torch.arange(width, device=device))
                rows_cache = cache_rows(cache, index, last=n == len(chunks) - 1)
                logits = scorer.extend(cont_ids, rows_cache,
                                       torch.cat([context_mask[index], cont_mask], dim=1),
                                       positions)
                logits = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                for r, (c, i) in enumerate(chunk):
                    answer(i, c, logits[r])

        def _plain(self, requests, disable_tqdm, override_bs):
            if not padding_aware:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            pad_and_concat = hf.pad_and_concat

            def recording(max_length, tensors, padding_side="right"):
                self._lengths = [t.shape[-1] for t in tensors]
                return pad_and_concat(max_length, tensors, padding_side)

            hf.pad_and_concat = recording
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
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

    return HarnessLM(**kwargs)


def evaluate(model, tokenizer, tasks: list[dict], manager, batch_size: int,
             bootstrap_iters: int, seed: int, log_samples: bool = False,
             padding_aware: bool = False, scorer: ContextScorer | None = None, lm=None) -> dict:
    """Run lm-eval; `tasks` are {"name", "limit"} dicts. Returns {task: {metric: value}}, plus
    with log_samples each document's choice log-likelihoods under "loglikelihoods". With a
    `scorer`, each question's context is computed once (`harness_lm`). `lm`: an lm-eval model
    to use instead of one built around `model` (the deploy step's OpenVINO model)."""
    import lm_eval

    if lm is None:
        lm = harness_lm(padding_aware, scorer, pretrained=model, tokenizer=tokenizer,
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
    (context string -> prompt, `harness_lm`), the prompt chosen for each document's context."""
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
    tasks that report an accuracy."""
    accs = [ms["acc"] for ms in results.values() if isinstance(ms.get("acc"), (int, float))]
    return {**{f"{t}.{m}": v for t, ms in results.items() for m, v in ms.items()},
            **({"mean_acc": sum(accs) / len(accs)} if accs else {})}


def evaluate_recovered(model, tokenizer, tasks: list[dict], manager, cfg: dict, seed: int,
                       entry: dict) -> dict:
    """`evaluate` for a model recovered by a `recovery:` entry (method none: the plain model),
    with per-question records. The method's record says whether its batches need an attention
    mask (`harness_lm`), how it scores a context once (default `ContextScorer.for_model`; used
    unless `cfg["shared_context"]` is false) and may run its own evaluation (IDP's selection
    variants)."""
    from .registry import recovery_method

    record = recovery_method(entry["method"])
    scorer = None
    if cfg.get("shared_context", True):
        scorer = (record.context_scorer(model, entry) if record.context_scorer
                  else ContextScorer.for_model(model))

    def run(log_samples: bool) -> dict:
        return evaluate(model, tokenizer, tasks, manager, cfg["batch_size"], cfg["bootstrap_iters"],
                        seed, log_samples=log_samples, padding_aware=record.padding_aware,
                        scorer=scorer)

    return record.evaluate(model, entry, run) if record.evaluate else run(True)


def evaluate_cell(model, tokenizer, tasks: list[dict], manager, cfg: dict, seed: int,
                  entry: dict, state_dir=None, key: str = "", log=print, lm=None) -> dict:
    """`evaluate_recovered`, one task at a time, so that a task's numbers do not depend on which
    other tasks share the job (lm-eval batches a call's requests together). With `state_dir`,
    each finished task's results are kept there under `key` (what they were computed from), and
    a re-run after a kill evaluates only the tasks not yet done. `lm`: an lm-eval model that
    already holds the whole cell (the deploy step's OpenVINO model), scored as it is."""
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
        if lm is None:
            results.update(evaluate_recovered(model, tokenizer, [task], manager, cfg, seed, entry))
        else:
            results.update(evaluate(None, None, [task], manager, cfg["batch_size"],
                                    cfg["bootstrap_iters"], seed, log_samples=True, lm=lm))
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
