"""The lm-eval model every cell is scored with (`RecoveredLM`, registered with lm-eval as
"knowledge-recovery"), and how it scores a question's context once for all its answers."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

MODEL_NAME = "knowledge-recovery"


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


def _bars_off() -> bool:
    """Progress bars switched off for this process (the workflow's jobs: their logs are files)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


@register_model(MODEL_NAME)
class RecoveredLM(HFLM):
    """lm-eval's HFLM for a cell of the grid: a checkpoint with its recovery entry's adapter
    attached, registered with lm-eval as "knowledge-recovery" (`python -m
    knowledge_recovery.cli.lm_eval run --model knowledge-recovery --model_args
    pretrained=CHECKPOINT,adapter=ADAPTER ...` re-scores a finished cell; docs/evaluation.md).
    The evaluate step scores every cell with it. How a request is scored follows from the
    request and the method alone:

    - requests that share a context (the choices of a question) are scored with the context
      computed once (`ContextScorer`, the method's `context_scorer` or `ContextScorer.for_model`),
      in one pass with the answers packed after their context under a block mask where the
      scorer can (`packed`), else each continuation run on the context's cached keys and
      values. Padding is masked and every answer gets its own position ids, so the numbers equal
      HFLM's up to float rounding (the tests check 1e-4). `shared_context=False` turns this off;
    - the rest (rolling windows for perplexity, sequences lm-eval would truncate, a sliding
      window a packed row would not fit) are whole sequences: HFLM's own way, except for methods
      that read the padding (`padding_aware`: IDP scores its prompts by the attention of every
      input token), whose batches go with an attention mask (`_score_whole`).

    `pretrained`: a model in memory (the pipeline) or a checkpoint folder (lm-eval's command
    line, with `dtype`, by default the checkpoint's own); `adapter`: a trained adapter folder,
    whose entry is read from the train step's manifest beside it; `recovery`: the entry itself
    (in memory). Further keyword arguments that are settings of the entry's method override it
    (IDP's `selection=random`); the rest go to HFLM (`batch_size`, `device`)."""

    def __init__(self, pretrained, tokenizer=None, recovery: dict | None = None, adapter=None,
                 dtype: str | None = None, shared_context: bool = True, **kwargs):
        from knowledge_recovery.registry import recovery_method

        if isinstance(pretrained, (str, Path)):
            from knowledge_recovery.models.checkpoints import load_checkpoint

            pretrained, tokenizer = load_checkpoint(pretrained, dtype)
        recovery = dict(recovery or {"method": "none"})
        if adapter is not None:
            from knowledge_recovery.recovery import adapters

            recovery = adapters.saved_entry(adapter)
        record = recovery_method(recovery["method"])
        recovery.update({k: kwargs.pop(k) for k in list(kwargs) if k in record.setting_names})
        if adapter is not None:
            pretrained = adapters.load(pretrained, recovery, adapter)
            if record.prepare_evaluation:
                record.prepare_evaluation(pretrained, record.parse(recovery))
        # log-probabilities in float32 whatever the model's dtype (half-precision logits
        # round a 0.6 nat answer gap to 0.004 steps)
        kwargs.setdefault("softmax_dtype", "float32")
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        self.padding_aware = record.padding_aware
        self.scorer = None
        if shared_context:
            self.scorer = (record.context_scorer(pretrained, record.parse(recovery))
                           if record.context_scorer
                           else ContextScorer.for_model(pretrained))
        # the prompt a model that chooses one per input (IDP: `last_choice` after each call)
        # chose for each context, by context string: `per_question` records it
        self.choices: dict[str, int] = {}

    # lm-eval passes `disable` to tqdm itself, which then ignores TQDM_DISABLE (job logs)
    def loglikelihood(self, requests, disable_tqdm=False):
        return super().loglikelihood(requests, disable_tqdm or _bars_off())

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return super().loglikelihood_rolling(requests, disable_tqdm or _bars_off())

    def generate_until(self, requests, disable_tqdm=False):
        return super().generate_until(requests, disable_tqdm or _bars_off())

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
        disable_tqdm = disable_tqdm or _bars_off()  # rolling windows pass disable_tqdm=False
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
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
        for c in by_context if self.scorer is not None else ():
            if self.scorer.packed is not None and (not self.scorer.window
                                              or row_width(c) <= self.scorer.window):
                packed.append(c)
            elif not self.scorer.window:
                shared.append(c)
        scored = {i for c in packed + shared for i in by_context[c]}
        plain = [i for i in range(len(requests)) if i not in scored]
        size = self.batch_size if isinstance(self.batch_size, int) else (override_bs or 16)
        if plain and self.padding_aware:
            self._score_whole(plain, requests, out, size)
        elif plain:
            answers = super()._loglikelihood_tokens([requests[i] for i in plain], disable_tqdm,
                                                    override_bs)
            for i, answer in zip(plain, answers):
                out[i] = answer
        if not packed and not shared:
            return out
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
        if key is not None:  # rolling windows have no request string
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
        logits = self.scorer.packed(ids.to(device), mask.to(device), positions.to(device), rows,
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
        logits, cache = self.scorer.prefill(ids, context_mask, keep)
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
            logits = self.scorer.extend(cont_ids, rows_cache,
                                   torch.cat([context_mask[index], cont_mask], dim=1),
                                   positions)
            logits = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            for r, (c, i) in enumerate(chunk):
                answer(i, c, logits[r])

    @torch.no_grad()
    def _score_whole(self, indices, requests, out, size):
        """Each request as one sequence, as HFLM scores it (context and continuation, cut to
        the model's length from the left, less the last token), right-padded in batches of at
        most `size` x the longest sequence tokens, with the attention mask lm-eval leaves out
        (HFLM 0.4.13 passes none for causal models; once it does, padding-aware methods can
        take HFLM's own path)."""
        sequences = {i: (requests[i][1] + requests[i][2])[-(self.max_length + 1):][:-1]
                     for i in indices}
        order = sorted(indices, key=lambda i: (-len(sequences[i]), i))
        budget = size * len(sequences[order[0]])
        for a, b in padded_chunks([len(sequences[i]) for i in order], budget):
            batch = order[a:b]
            ids = torch.zeros(len(batch), len(sequences[batch[0]]), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(batch):
                ids[r, :len(sequences[i])] = torch.tensor(sequences[i])
                mask[r, :len(sequences[i])] = 1
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            for r, i in enumerate(batch):
                n, cont = len(sequences[i]), requests[i][2]
                out[i] = self._record(requests[i], logp[r, n - len(cont):n])
