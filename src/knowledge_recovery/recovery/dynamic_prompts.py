"""Inference-time Dynamic Prompting (IDP; Hoang et al. 2023, arXiv 2310.00867).

A pool of m soft prompts of n tokens in front of a frozen (compressed) causal LM. For each input,
a selector scores every prompt from the input's early layers (`score_layers`), and the model then
runs with only the highest-scoring prompt. Two selectors:
- `router` (default): a linear map from the input's hidden state after the last score layer
  (mean over its tokens, the input alone) to m scores, fitted after the pool is trained
  (`fit_router`) to send each text block to the prompt that serves it best: for a curated pool the
  prompt trained on the block's text, otherwise the prompt with the lowest loss on it;
- `attention` (the paper's): the attention the input pays to each prompt (mean over input tokens
  and heads of the attention mass on that prompt's tokens, averaged over `score_layers`) with the
  whole pool visible. On SmolLM2-135M it routes at chance even with the pool laid out as each
  prompt runs (docs/results/bench/idp_routing.md): a prompt's share of attention is mostly a
  per-prompt constant (what it draws from every input alike), so one prompt wins every input.
Both cost one pass of the input through the score layers.

The paper leaves the scoring layers, the layout of the pool when scored and the training of the
pool unstated; choices made here:
- `layout`: how the pool is laid out when scored. "independent" (default) scores every prompt as
  it will run: each prompt's keys and values computed alone at positions 0..n-1 (the m prompts as
  one batch), the input from position n on, attending to all m prompts' keys at once.
  "concatenated" lays the m prompts end to end at positions 0..m*n-1 and the input after them
  (the first implementation; kept for the ablation): there slot j sits at another distance from
  the input than slot k, slot 0 holds the attention sink, and from layer 1 on a slot's keys depend
  on the slots before it, so the choice followed the slot, not the input (docs/methods.md, "IDP").
- Scoring runs only the early `score_layers` of the model, with the pool's keys and values
  computed once (they do not depend on the input): selection costs a fraction of a forward pass.
- Training, `scheme`: "joint" trains all m prompts at once, every input seeing the whole pool
  laid out as `layout` says; "routed" runs each example with the prompt the selector picks and
  adds a load-balance term (Switch-Transformer style: m * sum_j f_j * p_j) so that no prompt
  starves; "curated" trains prompt j alone on its own text (`texts`, one per prompt: the paper's
  set of curated prompts), with no selector in training (`train_curated`).
- `selection` at inference: router (default), attention (the paper's score), random (a
  deterministic hash of the input: the same input always gets the same prompt, whatever the
  batch), or a fixed index (used to build the oracle, the best prompt per example, from one
  evaluation per prompt).
The input that is scored, `select_on`: the context alone (default: the question, one prompt for
all its answers, as a deployed selector sees only the input), or each whole token sequence given
to the model (for a lm-eval log-likelihood request: context plus continuation).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from knowledge_recovery.models.structure import decoder_layers, eager_attention
from knowledge_recovery.recovery.adapters import sample_vocab_embeddings

CONFIG_FILE = "idp_config.json"
WEIGHTS_FILE = "prompts.safetensors"


LAYOUTS = ("independent", "concatenated")
SCHEMES = ("joint", "routed", "curated")


def capped_choice(scores: torch.Tensor, capacity_factor: float) -> torch.Tensor:
    """Each row's prompt in a routed training batch, no prompt taking more than
    ceil(capacity_factor x rows / m) rows: the highest scores are served first and a row whose
    best prompt is full goes to its best one with room (BASE layers' balanced assignment, with
    Switch Transformers' capacity factor). Without it, the prompt that trains most scores
    highest and takes every row (docs/methods.md, "IDP")."""
    rows, m = scores.shape
    capacity = math.ceil(capacity_factor * rows / m)
    chosen, load = [-1] * rows, [0] * m
    for flat in scores.flatten().argsort(descending=True).tolist():
        i, j = divmod(flat, m)
        if chosen[i] < 0 and load[j] < capacity:
            chosen[i], load[j] = j, load[j] + 1
    return torch.tensor(chosen, device=scores.device)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass after the last scoring layer."""


class DynamicPromptModel(nn.Module):
    def __init__(self, base, pool_size: int, num_tokens: int, score_layers: list[int],
                 scheme: str, balance_weight: float, layout: str = "concatenated",
                 router_blocks: int | None = None, capacity_factor: float | None = None,
                 seed: int = 0):
        """Every setting comes from a config entry (defaults live in the schema only); `layout`
        defaults to the one pools saved before it was a setting were trained in."""
        super().__init__()
        n_layers = len(decoder_layers(base))
        bad = [l for l in score_layers if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has {n_layers} "
                             f"(0-{n_layers - 1})")
        if scheme not in SCHEMES:
            raise ValueError(f"unknown IDP training scheme {scheme!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown IDP layout {layout!r}")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.config = base.config
        self.pool_size, self.num_tokens = pool_size, num_tokens
        self.score_layers = sorted(set(score_layers))
        self.scheme, self.balance_weight, self.layout = scheme, balance_weight, layout
        self.capacity_factor = capacity_factor  # None: pools saved before it was a setting
        _, init = sample_vocab_embeddings(base, pool_size * num_tokens, seed)
        self.prompts = nn.Parameter(init.view(pool_size, num_tokens, -1))
        # zero until fitted: every prompt ties (then the input's hash picks); a parameter of the
        # pool, counted in its budget, but trained by `fit_router`, not with the prompts (it
        # takes no part in their loss, so their optimiser leaves it alone)
        self.router = nn.Linear(init.shape[-1], pool_size)
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router.bias)
        self.router_blocks = router_blocks
        self.router_fitted = False
        self.selection: str | int = "router"
        self.last_routing: torch.Tensor | None = None  # prompt counts of the last training batch
        self.selected = torch.zeros(pool_size, dtype=torch.long)  # choices made at inference
        self.last_choice: torch.Tensor | None = None  # the prompt of each row of the last select
        self._pool_kv = None

    # ------------------------------------------------------------ HF-like surface for lm-eval
    @property
    def device(self):
        return self.prompts.device

    def tie_weights(self):  # lm-eval calls this on the models it is given
        pass

    def settings(self) -> dict:
        return {"pool_size": self.pool_size, "num_tokens": self.num_tokens,
                "score_layers": self.score_layers, "scheme": self.scheme,
                "balance_weight": self.balance_weight, "layout": self.layout,
                "router_blocks": self.router_blocks, "capacity_factor": self.capacity_factor}

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(
            {**self.settings(), "router_fitted": self.router_fitted}, indent=2))
        tensors = {"prompts": self.prompts, "router.weight": self.router.weight,
                   "router.bias": self.router.bias}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  str(path / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, base, path) -> "DynamicPromptModel":
        from safetensors.torch import load_file

        path = Path(path)
        settings = json.loads((path / CONFIG_FILE).read_text())
        fitted = settings.pop("router_fitted", False)  # pools saved before routers have none
        model = cls(base, **settings)
        tensors = load_file(str(path / WEIGHTS_FILE))
        model.prompts.data.copy_(tensors["prompts"])
        if fitted:
            model.router.weight.data.copy_(tensors["router.weight"])
            model.router.bias.data.copy_(tensors["router.bias"])
            model.router_fitted = True
        return model.to(base.device)

    # ------------------------------------------------------------ selection
    def _embed(self, input_ids):
        return self.base.get_input_embeddings()(input_ids)

    def _dtype(self):
        return self.base.get_input_embeddings().weight.dtype

    def _pool_embeds(self, batch: int):
        return self.prompts.reshape(1, -1, self.prompts.shape[-1]).expand(batch, -1, -1)

    def _prepend(self, prompt_embeds, input_ids, mask):
        """Embeddings and attention mask of (prompt, input) for the base model."""
        embeds = torch.cat([prompt_embeds.to(self._dtype()), self._embed(input_ids)], dim=1)
        return embeds, torch.cat([mask.new_ones(len(input_ids), prompt_embeds.shape[1]), mask], 1)

    @property
    def input_offset(self) -> int:
        """The position of the input's first token when the pool is scored: right after one
        prompt (independent, as the chosen prompt runs) or after all m (concatenated)."""
        return self.num_tokens * (1 if self.layout == "independent" else self.pool_size)

    @contextlib.contextmanager
    def _stopped_after(self, layer: int):
        """A forward of the base inside ends after decoder layer `layer`."""
        blocks = decoder_layers(self.base)
        hook = None
        if layer + 1 < len(blocks):
            def stop(*_):
                raise _StopForward
            hook = blocks[layer + 1].register_forward_pre_hook(stop)
        try:
            yield
        except _StopForward:
            pass
        finally:
            if hook is not None:
                hook.remove()

    @contextlib.contextmanager
    def _early_layers(self, layers: list[int]):
        """Run the base with eager attention (the only kind that returns attention weights),
        record the weights of `layers`, and stop after the last of them."""
        blocks = decoder_layers(self.base)
        weights = {}
        hooks = [blocks[l].self_attn.register_forward_hook(
            lambda mod, args, out, l=l: weights.__setitem__(l, out[1])) for l in layers]
        try:
            with self._stopped_after(layers[-1]), eager_attention(self.base):
                yield weights
        finally:
            for h in hooks:
                h.remove()

    def _pool_keys_values(self, layers: int | None = None):
        """Keys and values of the pool per layer (the first `layers`; None: every layer), each
        (1, kv heads, m*n, head dim), laid out as `layout` says: independent, each prompt run
        alone at positions 0..n-1 (one batch of m) and its keys put side by side; concatenated,
        the m prompts as one sequence at positions 0..m*n-1."""
        from transformers import DynamicCache

        embeds = self.prompts.to(self._dtype())
        if self.layout == "concatenated":
            embeds = embeds.reshape(1, -1, embeds.shape[-1])
        cache = DynamicCache(config=self.base.config)
        if layers is None:
            self.base(inputs_embeds=embeds, cache=cache, use_cache=True)
            layers = len(decoder_layers(self.base))
        else:
            with self._early_layers([layers - 1]):
                self.base(inputs_embeds=embeds, cache=cache, use_cache=True)

        def side_by_side(t):  # (m, heads, n, dim) -> (1, heads, m*n, dim)
            return t.transpose(0, 1).reshape(1, t.shape[1], -1, t.shape[-1])

        return [(side_by_side(cache.layers[l].keys), side_by_side(cache.layers[l].values))
                for l in range(layers)]

    def _pool_cache(self, layers: int):
        """`_pool_keys_values` of the scoring layers, computed once per pool at inference."""
        key = (self.prompts.data_ptr(), self.prompts._version, self.prompts.device, layers,
               self.layout)
        if self._pool_kv is None or self._pool_kv[0] != key:
            with torch.no_grad():
                self._pool_kv = (key, self._pool_keys_values(layers))
        return self._pool_kv[1]

    def _on_pool(self, pool_kv, input_ids, mask, **kwargs):
        """Run the base on the input after the pool's keys and values (every input row sees all
        m prompts), with the input's positions counted from `input_offset`."""
        from transformers import DynamicCache

        batch = len(input_ids)
        cache = DynamicCache(config=self.base.config)
        for l, (k, v) in enumerate(pool_kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), l)
        pool_len = self.pool_size * self.num_tokens
        positions = self.input_offset + (mask.long().cumsum(-1) - 1).clamp(min=0)
        full_mask = torch.cat([mask.new_ones(batch, pool_len), mask], dim=1)
        return self.base(input_ids=input_ids, attention_mask=full_mask, position_ids=positions,
                         cache=cache, use_cache=True, **kwargs)

    def layer_scores(self, input_ids, attention_mask=None, layers=None) -> torch.Tensor:
        """(len(layers), batch, m): per layer (default `score_layers`), the mean attention mass
        from the input's tokens to each prompt's tokens (mean over heads, then over the input's
        real tokens). With gradients on the prompts (routed training) the pool's keys are
        computed afresh with them; at inference once per pool."""
        layers = self.score_layers if layers is None else sorted(set(layers))
        batch, seq = input_ids.shape
        mask = _mask_or_ones(input_ids, attention_mask)
        pool_len = self.pool_size * self.num_tokens
        needed = layers[-1] + 1
        if torch.is_grad_enabled() and self.prompts.requires_grad:
            with self._early_layers(layers):  # eager here too: the same numbers as inference
                pool_kv = self._pool_keys_values(needed)
        else:
            pool_kv = self._pool_cache(needed)
        with self._early_layers(layers) as weights:
            self._on_pool(pool_kv, input_ids, mask)
        m = mask.unsqueeze(-1).float()
        out = []
        for l in layers:
            w = weights[l][..., -seq:, :pool_len].float()  # (batch, heads, seq, pool_len)
            mass = w.reshape(batch, w.shape[1], seq, self.pool_size, self.num_tokens).sum(-1)
            out.append((mass.mean(1) * m).sum(1) / m.sum(1).clamp(min=1))
        return torch.stack(out)

    def scores(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(batch, m): `layer_scores` averaged over the score layers."""
        return self.layer_scores(input_ids, attention_mask).mean(0)

    def router_features(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(batch, hidden): the input alone through the score layers, its hidden state after the
        last of them averaged over its real tokens (float32)."""
        return self.prefix_features(input_ids, attention_mask, [None])[:, 0]

    def prefix_features(self, input_ids, attention_mask, lengths) -> torch.Tensor:
        """(batch, len(lengths), hidden): `router_features` of each row's first `lengths` tokens
        (None: all its tokens), from one causal pass."""
        mask = _mask_or_ones(input_ids, attention_mask)
        last_layer = self.score_layers[-1]
        hidden = {}
        hook = decoder_layers(self.base)[last_layer].register_forward_hook(
            lambda mod, args, out: hidden.__setitem__("h", out[0] if isinstance(out, tuple) else out))
        try:
            with self._stopped_after(last_layer):
                self.base(input_ids=input_ids, attention_mask=mask,
                          position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0), use_cache=False)
        finally:
            hook.remove()
        m = mask.unsqueeze(-1).float()
        sums, counts = (hidden["h"].float() * m).cumsum(1), m.cumsum(1).clamp(min=1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(-1)  # the last real token, whatever the padding
        rows = torch.arange(len(input_ids), device=input_ids.device)
        return torch.stack([(sums / counts)[rows, last if n is None else last.clamp(max=n - 1)]
                            for n in lengths], 1)

    def router_scores(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(batch, m): the router's scores of each prompt for each input."""
        if not self.router_fitted:
            raise ValueError("this IDP pool has no fitted router (saved before routers, or not "
                             "trained): re-train it, or select by 'attention'")
        return self.router(self.router_features(input_ids, attention_mask))

    def select(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The prompt of each input, counted in `selected` and kept in `last_choice`."""
        mask = _mask_or_ones(input_ids, attention_mask)
        if isinstance(self.selection, int):
            chosen = torch.full((len(input_ids),), self.selection, device=input_ids.device)
        elif self.selection == "random":
            chosen = torch.tensor([_hash_index(row, mask_row, self.pool_size)
                                   for row, mask_row in zip(input_ids, mask)],
                                  device=input_ids.device)
        elif self.selection in ("attention", "router"):
            with torch.no_grad():
                scores = (self.scores(input_ids, mask) if self.selection == "attention"
                          else self.router_scores(input_ids, mask))
                chosen = _argmax_ties_by_hash(scores, input_ids, mask)
        else:
            raise ValueError(f"unknown IDP selection {self.selection!r}")
        self.selected += torch.bincount(chosen.cpu(), minlength=self.pool_size)
        self.last_choice = chosen
        return chosen

    # ------------------------------------------------------------ forward
    def _run(self, prompt_embeds, input_ids, attention_mask, labels):
        """The base with one prompt per row in front of the input (positions 0..n-1, the
        input after it): how every chosen prompt runs."""
        mask = _mask_or_ones(input_ids, attention_mask)
        embeds, full_mask = self._prepend(prompt_embeds, input_ids, mask)
        logits = self.base(inputs_embeds=embeds, attention_mask=full_mask).logits
        return _output(logits[:, prompt_embeds.shape[1]:], mask, labels)  # the input's positions

    def _run_joint(self, input_ids, attention_mask, labels):
        """Joint training: every input sees the whole pool, laid out as `layout` says."""
        mask = _mask_or_ones(input_ids, attention_mask)
        if self.layout == "concatenated":
            return self._run(self._pool_embeds(len(input_ids)), input_ids, mask, labels)
        logits = self._on_pool(self._pool_keys_values(), input_ids, mask).logits
        return _output(logits, mask, labels)

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        if self.training and self.scheme == "joint":
            return self._run_joint(input_ids, attention_mask, labels)
        if self.training and self.scheme == "curated":
            raise RuntimeError("a curated pool trains prompt by prompt (train_curated)")
        if self.training:  # routed: hard choice for the LM loss, soft scores for the balance term
            scores = self.scores(input_ids, attention_mask)
            chosen = (capped_choice(scores.detach(), self.capacity_factor)
                      if self.capacity_factor else scores.argmax(-1).detach())
            out = self._run(self.prompts[chosen], input_ids, attention_mask, labels)
            share = scores / scores.sum(-1, keepdim=True).clamp(min=1e-9)
            counts = torch.bincount(chosen, minlength=self.pool_size)
            balance = self.pool_size * (counts.float() / len(chosen) * share.mean(0)).sum()
            self.last_routing = counts.cpu()
            if out.loss is not None:
                out.loss = out.loss + self.balance_weight * balance
            return out
        chosen = self.select(input_ids, attention_mask)
        return self._run(self.prompts[chosen], input_ids, attention_mask, labels)

    def context_scorer(self):
        """Select from the context alone and score the answers on the cached (prompt, context):
        one prompt for every answer of a question."""
        from knowledge_recovery.evaluation.lm import ContextScorer, attention_window

        def prefill(ids, mask, keep):
            embeds, full_mask = self._prepend(self.prompts[self.select(ids, mask)], ids, mask)
            out = self.base(inputs_embeds=embeds, attention_mask=full_mask, use_cache=True,
                            logits_to_keep=keep)
            return out.logits, out.past_key_values

        def extend(ids, cache, mask, positions):
            return self.base(input_ids=ids, cache=cache, attention_mask=mask,
                             position_ids=positions, use_cache=True).logits

        return ContextScorer(prefill, extend, window=attention_window(self.base))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        """Select once from the input, then decode with that prompt in front (its keys and
        values are cached by `generate` like the input's). Returns input + new tokens."""
        mask = _mask_or_ones(input_ids, attention_mask)
        embeds, full_mask = self._prepend(self.prompts[self.select(input_ids, mask)], input_ids, mask)
        new = self.base.generate(inputs_embeds=embeds, attention_mask=full_mask, **kwargs)
        return torch.cat([input_ids, new], dim=1)


class _Member(nn.Module):
    """Prompt j of a pool as a model of its own, for training it alone (curated pools): its
    own parameter (so that an optimiser's state and weight decay touch no other prompt), run
    the way a chosen prompt runs. The pool is held outside the module tree: only the member's
    prompt is a parameter."""

    def __init__(self, pool: DynamicPromptModel, j: int):
        super().__init__()
        object.__setattr__(self, "pool", pool)
        self.prompt = nn.Parameter(pool.prompts.detach()[j].clone())

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        batch = len(input_ids)
        return self.pool._run(self.prompt.expand(batch, -1, -1), input_ids, attention_mask, labels)


def train_curated(model: DynamicPromptModel, tokenizer, texts: list[str], cfg: dict, seed: int,
                  log=print, teacher=None, resume_path=None) -> tuple[dict, dict]:
    """Train prompt j alone on texts[j] (`training.train` once per prompt, seed + j; a killed
    job resumes in the prompt it was training, the finished ones kept under `resume_path`).
    Returns (the pool's best state: each prompt at its own best validation step, history: each
    prompt's under "prompts", their mean losses at the top)."""
    from knowledge_recovery.recovery.training import train

    if len(texts) != model.pool_size:
        raise ValueError(f"a curated pool of {model.pool_size} prompts needs as many texts, "
                         f"got {len(texts)}")
    histories = []
    for j, text in enumerate(texts):
        done = Path(resume_path, f"prompt{j}.pt") if resume_path else None
        if done is not None and done.is_file():
            saved = torch.load(done, weights_only=True)
            if saved["cfg"] == cfg and saved["seed"] == seed + j:
                log(f"prompt {j}: kept from {done}")
                model.prompts.data[j] = saved["prompt"].to(model.prompts.device)
                histories.append(saved["history"])
                continue
        member = _Member(model, j)
        best, history = train(member, tokenizer, text, cfg, seed + j, log=log, teacher=teacher,
                              resume_path=Path(resume_path, f"prompt{j}") if resume_path else None)
        model.prompts.data[j] = best["prompt"].to(model.prompts.device)
        histories.append(history)
        if done is not None:
            done.parent.mkdir(parents=True, exist_ok=True)
            tmp = done.with_suffix(".tmp")
            torch.save({"cfg": cfg, "seed": seed + j, "prompt": best["prompt"],
                        "history": history}, tmp)
            os.replace(tmp, done)

    def mean(key):
        return sum(h[key] for h in histories) / len(histories)

    steps = cfg["steps"]
    history = {"prompts": histories,
               # one curve of the pool: prompt j's steps follow prompt j-1's
               "train_loss": [(j * steps + s, v) for j, h in enumerate(histories)
                              for s, v in h["train_loss"]],
               "val_loss": [(j * steps + s, v) for j, h in enumerate(histories)
                            for s, v in h["val_loss"]],
               "step_s": [t for h in histories for t in h["step_s"]], "routing": [],
               "best_val_loss": mean("best_val_loss"), "initial_val_loss": mean("initial_val_loss"),
               "best_step": mean("best_step"), "train_blocks": mean("train_blocks"),
               "val_blocks": mean("val_blocks"),
               **({"teacher_val_loss": mean("teacher_val_loss")}
                  if all("teacher_val_loss" in h for h in histories) else {})}
    return {"prompts": model.prompts.detach().clone()}, history


@torch.no_grad()
def block_losses(model: DynamicPromptModel, blocks: torch.Tensor, lengths: list[int],
                  batch_size: int) -> torch.Tensor:
    """(blocks, len(lengths), m): each prompt's mean next-token loss on each block's first
    `lengths` tokens (one pass per prompt: the loss of a prefix is a running mean)."""
    out = []
    for j in range(model.pool_size):
        per = []
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size].to(model.device)
            logits = model._run(model.prompts[j].expand(len(ids), -1, -1), ids, None,
                                None).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cumsum(1)
            per.append(torch.stack([nll[:, n - 2] / (n - 1) for n in lengths], 1))
        out.append(torch.cat(per))
    return torch.stack(out, -1).cpu()


def fit_router(model: DynamicPromptModel, tokenizer, texts: list[str], cfg: dict, seed: int,
               log=print) -> dict:
    """Fit the pool's router (its prompts trained, frozen here) on `router_blocks` training
    blocks of each text, each cut also to 1/8, 1/4 and 1/2 of `seq_len` (inputs at inference are
    often short questions). The target of a block is the prompt that serves it best: in a
    curated pool the prompt(s) trained on its text; otherwise the prompt(s) with the lowest loss
    on it (ties within `TIE` share the target, so identical prompts keep a zero router and tie).
    Multinomial logistic regression on standardised features, weight decay `ROUTER_DECAY`,
    L-BFGS from zero: deterministic. Returns figures of the fit for the train manifest."""
    from knowledge_recovery.recovery.training import split_blocks, token_blocks

    seq_len, m = cfg["seq_len"], model.pool_size
    lengths = sorted({max(2, seq_len // 8), max(2, seq_len // 4), max(2, seq_len // 2), seq_len})
    gen = torch.Generator().manual_seed(seed)
    sources = texts if model.scheme == "curated" else texts[:1]
    feats, targets = [], []
    was_training = model.training
    model.eval()
    for text in sources:
        train_blocks, _ = split_blocks(token_blocks(tokenizer, text, seq_len),
                                       cfg["val_fraction"], seed)
        chosen = train_blocks[torch.randperm(len(train_blocks), generator=gen)[:model.router_blocks]]
        with torch.no_grad():
            for i in range(0, len(chosen), cfg["batch_size"]):
                ids = chosen[i:i + cfg["batch_size"]].to(model.device)
                feats.append(model.prefix_features(ids, None, lengths).cpu())
        if model.scheme == "curated":  # the prompts trained on this text
            owners = torch.tensor([float(t == text) for t in texts])
            targets.append((owners / owners.sum()).expand(len(chosen), len(lengths), m))
        else:
            losses = block_losses(model, chosen, lengths, cfg["batch_size"])
            best = (losses <= losses.min(-1, keepdim=True).values + TIE).float()
            targets.append(best / best.sum(-1, keepdim=True))
    model.train(was_training)
    x = torch.cat(feats).flatten(0, 1)
    y = torch.cat(targets).flatten(0, 1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    weight = torch.zeros(x.shape[1], m, requires_grad=True)
    bias = torch.zeros(m, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=ROUTER_ITERATIONS,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (-(y * (xs @ weight + bias).log_softmax(-1)).sum(-1).mean()
                + ROUTER_DECAY * (weight ** 2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():  # fold the standardisation into the linear map
        w = weight / std.unsqueeze(-1)
        model.router.weight.copy_(w.T.to(model.router.weight))
        model.router.bias.copy_((bias - mean @ w).to(model.router.bias))
    model.router_fitted = True
    with torch.no_grad():
        scores = model.router(x.to(model.router.weight))
    decided = (y.max(-1).values > y.min(-1).values)  # examples with a best prompt
    hits = (scores.argmax(-1).cpu() == y.argmax(-1))[decided]
    figures = {"router_examples": len(x), "router_decided": int(decided.sum()),
               "router_fit_accuracy": float(hits.float().mean()) if len(hits) else None,
               "router_target_share": (y.sum(0) / len(y)).tolist()}
    log(f"router fitted on {len(x)} examples ({figures['router_decided']} with a best "
        f"prompt): accuracy {figures['router_fit_accuracy']}")
    return figures


# on standardised features; weak: a pool fitted on fewer examples than features (one text, 64
# blocks x 4 lengths against 576 features) still fits its examples exactly
ROUTER_DECAY = 1e-3
ROUTER_ITERATIONS = 200


def _output(logits, mask, labels):
    """The model output of the input's logits, with the next-token loss on the input only
    (padding excluded) when there are labels."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    loss = None
    if labels is not None:
        target = labels.masked_fill(mask == 0, -100)[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                               ignore_index=-100)
    return CausalLMOutputWithPast(loss=loss, logits=logits)


def _mask_or_ones(input_ids, attention_mask):
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask


# Scores this close to the best are a tie (identical prompts score equal to ~1e-8 in float32)
TIE = 1e-6


def _argmax_ties_by_hash(scores, input_ids, mask) -> torch.Tensor:
    """The best prompt of each row; among prompts tied for best, the input's hash picks, so
    that identical prompts share the inputs evenly instead of all going to the first."""
    chosen = scores.argmax(-1)
    tied = scores >= scores.max(-1, keepdim=True).values - TIE
    for r in torch.nonzero(tied.sum(-1) > 1).flatten().tolist():
        candidates = torch.nonzero(tied[r]).flatten()
        chosen[r] = candidates[_hash_index(input_ids[r], mask[r], len(candidates))]
    return chosen


def _hash_index(ids: torch.Tensor, mask: torch.Tensor, m: int) -> int:
    tokens = ids[mask.bool()].cpu().numpy().astype("int64").tobytes()
    return int.from_bytes(hashlib.sha256(tokens).digest()[:8], "little") % m


def oracle_results(per_prompt: list[dict]) -> dict:
    """Best prompt per document from one lm-eval run per fixed prompt (with log-likelihoods and
    per-document accuracy): a document counts as right if any prompt gets it right."""
    out = {}
    for task in per_prompt[0]:
        correct = [r[task]["correct"] for r in per_prompt]
        docs = len(correct[0])
        best = [max(c[i] for c in correct) for i in range(docs)]
        acc = sum(best) / docs
        var = sum((b - acc) ** 2 for b in best) / max(1, docs - 1)
        out[task] = {"acc": acc, "acc_stderr": (var / docs) ** 0.5, "documents": docs,
                     "acc_per_prompt": [sum(c) / docs for c in correct],
                     # per question: right if any prompt is; the first prompt that is, else 0
                     "doc_id": per_prompt[0][task]["doc_id"],
                     "target": per_prompt[0][task]["target"], "correct": best,
                     "prompt": [next((j for j, c in enumerate(correct) if c[i]), 0)
                                for i in range(docs)]}
    return out
