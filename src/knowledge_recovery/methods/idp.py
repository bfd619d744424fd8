"""Inference-time Dynamic Prompting (IDP; Hoang et al. 2023, arXiv 2310.00867).

A pool of m soft prompts of n tokens in front of a frozen (compressed) causal LM. For each input,
every prompt is scored by the attention the input pays to it (mean over input tokens and heads of
the attention mass on that prompt's tokens, averaged over `score_layers`) with the whole pool
visible, and the model then runs with only the highest-scoring prompt.

The paper leaves the scoring layers and the training of the pool unstated; choices made here:
- Scoring runs only the early `score_layers` of the model, with the pool's keys and values
  precomputed once (they do not depend on the input, since the pool comes first and attention is
  causal): selection costs a fraction of one forward pass.
- Training, `scheme`: "joint" prepends all m prompts at once (one long prompt of m*n tokens);
  "routed" runs each example with the prompt the selector picks and adds a load-balance term
  (Switch-Transformer style: m * sum_j f_j * p_j) so that no prompt starves.
- `selection` at inference: attention (the method), random (a deterministic hash of the input:
  the same input always gets the same prompt, whatever the batch), or a fixed index (used to
  build the oracle, the best prompt per example, from one evaluation per prompt).
The input that is scored, `select_on`: the context alone (default: the question, one prompt for
all its answers, as a deployed selector sees only the input), or each whole token sequence given
to the model (for a lm-eval log-likelihood request: context plus continuation).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import decoder_layers
from ..recovery import sample_vocab_embeddings
from ..registry import RecoveryMethod, register_recovery_method

CONFIG_FILE = "idp_config.json"
WEIGHTS_FILE = "prompts.safetensors"


class _StopForward(Exception):
    """Raised by a hook to end a forward pass after the last scoring layer."""


class DynamicPromptModel(nn.Module):
    def __init__(self, base, pool_size: int, num_tokens: int, score_layers: list[int],
                 scheme: str, balance_weight: float, seed: int = 0):
        """Every setting comes from a config entry (defaults live in the schema only)."""
        super().__init__()
        n_layers = len(decoder_layers(base))
        bad = [l for l in score_layers if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has {n_layers} "
                             f"(0-{n_layers - 1})")
        if scheme not in ("joint", "routed"):
            raise ValueError(f"unknown IDP training scheme {scheme!r}")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.config = base.config
        self.pool_size, self.num_tokens = pool_size, num_tokens
        self.score_layers = sorted(set(score_layers))
        self.scheme, self.balance_weight = scheme, balance_weight
        _, init = sample_vocab_embeddings(base, pool_size * num_tokens, seed)
        self.prompts = nn.Parameter(init.view(pool_size, num_tokens, -1))
        self.selection: str | int = "attention"
        self.last_routing: torch.Tensor | None = None  # prompt counts of the last training batch
        self.selected = torch.zeros(pool_size, dtype=torch.long)  # choices made at inference
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
                "balance_weight": self.balance_weight}

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(self.settings(), indent=2))
        save_file({"prompts": self.prompts.detach().cpu().contiguous()}, str(path / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, base, path) -> "DynamicPromptModel":
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(base, **json.loads((path / CONFIG_FILE).read_text()))
        model.prompts.data.copy_(load_file(str(path / WEIGHTS_FILE))["prompts"])
        return model.to(base.device)

    # ------------------------------------------------------------ selection
    def _embed(self, input_ids):
        return self.base.get_input_embeddings()(input_ids)

    def _pool_embeds(self, batch: int):
        return self.prompts.reshape(1, -1, self.prompts.shape[-1]).expand(batch, -1, -1)

    def _prepend(self, prompt_embeds, input_ids, mask):
        """Embeddings and attention mask of (prompt, input) for the base model."""
        dtype = self.base.get_input_embeddings().weight.dtype
        embeds = torch.cat([prompt_embeds.to(dtype), self._embed(input_ids)], dim=1)
        return embeds, torch.cat([mask.new_ones(len(input_ids), prompt_embeds.shape[1]), mask], 1)

    @contextlib.contextmanager
    def _early_layers(self):
        """Run the base with eager attention (the only kind that returns attention weights),
        record the weights of the scoring layers, and stop after the last of them."""
        layers = decoder_layers(self.base)
        weights, hooks = {}, []
        for l in self.score_layers:
            hooks.append(layers[l].self_attn.register_forward_hook(
                lambda mod, args, out, l=l: weights.__setitem__(l, out[1])))
        last = self.score_layers[-1]
        if last + 1 < len(layers):
            def stop(*_):
                raise _StopForward
            hooks.append(layers[last + 1].register_forward_pre_hook(stop))
        old = self.base.config._attn_implementation
        self.base.config._attn_implementation = "eager"
        try:
            yield weights
        except _StopForward:
            pass
        finally:
            self.base.config._attn_implementation = old
            for h in hooks:
                h.remove()

    def _pool_cache(self):
        """Keys and values of the whole pool in the scoring layers, computed once per pool."""
        from transformers import DynamicCache

        key = (self.prompts.data_ptr(), self.prompts._version, self.prompts.device)
        if self._pool_kv is None or self._pool_kv[0] != key:
            cache = DynamicCache(config=self.base.config)
            dtype = self.base.get_input_embeddings().weight.dtype
            with torch.no_grad(), self._early_layers():
                self.base(inputs_embeds=self._pool_embeds(1).to(dtype), cache=cache,
                          use_cache=True)
            kv = [(cache.layers[l].keys, cache.layers[l].values)
                  for l in range(self.score_layers[-1] + 1)]
            self._pool_kv = (key, kv)
        return self._pool_kv[1]

    def scores(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(batch, m): mean attention mass from the input's tokens to each prompt."""
        batch, seq = input_ids.shape
        mask = _mask_or_ones(input_ids, attention_mask)
        pool_len = self.pool_size * self.num_tokens
        use_cache = not (torch.is_grad_enabled() and self.prompts.requires_grad)
        with self._early_layers() as weights:
            if use_cache:  # inference: only the input's tokens go through the early layers
                from transformers import DynamicCache

                cache = DynamicCache(config=self.base.config)
                for l, (k, v) in enumerate(self._pool_cache()):
                    cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), l)
                full_mask = torch.cat([mask.new_ones(batch, pool_len), mask], dim=1)
                self.base(input_ids=input_ids, attention_mask=full_mask, cache=cache,
                          use_cache=True)
            else:  # training: the pool's keys change with every step, and need gradients
                embeds, full_mask = self._prepend(self._pool_embeds(batch), input_ids, mask)
                self.base(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False)
        per_layer = []
        for l in self.score_layers:
            w = weights[l][..., -seq:, :pool_len].float()  # (batch, heads, seq, pool_len)
            mass = w.reshape(batch, w.shape[1], seq, self.pool_size, self.num_tokens).sum(-1)
            mass = mass.mean(1)  # over heads: (batch, seq, m)
            m = mask.unsqueeze(-1).to(mass.dtype)
            per_layer.append((mass * m).sum(1) / m.sum(1).clamp(min=1))
        return torch.stack(per_layer).mean(0)

    def select(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The prompt of each input, counted in `selected`."""
        if isinstance(self.selection, int):
            chosen = torch.full((len(input_ids),), self.selection, device=input_ids.device)
        elif self.selection == "random":
            chosen = torch.tensor([_hash_index(row, mask_row, self.pool_size) for row, mask_row
                                   in zip(input_ids, _mask_or_ones(input_ids, attention_mask))],
                                  device=input_ids.device)
        elif self.selection == "attention":
            with torch.no_grad():
                chosen = self.scores(input_ids, attention_mask).argmax(-1)
        else:
            raise ValueError(f"unknown IDP selection {self.selection!r}")
        self.selected += torch.bincount(chosen.cpu(), minlength=self.pool_size)
        return chosen

    # ------------------------------------------------------------ forward
    def _run(self, prompt_embeds, input_ids, attention_mask, labels):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        mask = _mask_or_ones(input_ids, attention_mask)
        embeds, full_mask = self._prepend(prompt_embeds, input_ids, mask)
        logits = self.base(inputs_embeds=embeds, attention_mask=full_mask).logits
        logits = logits[:, prompt_embeds.shape[1]:]  # the input's positions only
        loss = None
        if labels is not None:  # next-token loss on the input only, padding excluded
            target = labels.masked_fill(mask == 0, -100)[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        if self.training and self.scheme == "joint":
            return self._run(self._pool_embeds(len(input_ids)), input_ids, attention_mask, labels)
        if self.training:  # routed: hard choice for the LM loss, soft scores for the balance term
            scores = self.scores(input_ids, attention_mask)
            chosen = scores.argmax(-1).detach()
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
        from ..evaluation import ContextScorer, attention_window

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


def _mask_or_ones(input_ids, attention_mask):
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask


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


def _evaluate(model, entry: dict, run) -> dict:
    """Attention selection (the method) or random: one lm-eval run, with how often each prompt
    was chosen. Oracle: one run per prompt of the pool, keeping per document the best of them."""
    if entry["selection"] == "oracle":
        per_prompt = []
        for j in range(model.pool_size):
            model.selection = j
            per_prompt.append(run(True))
        return oracle_results(per_prompt)
    model.selection = entry["selection"]
    model.selected.zero_()
    results = run(True)
    # how often each prompt was chosen over the run's tasks (once per question, or per answer
    # with select_on: sequence): a selector that sends nearly every input to one prompt is a
    # fixed prompt in effect
    counts = model.selected.tolist()
    for metrics in results.values():
        metrics.update(selected_per_prompt=counts,
                       selected_top_share=max(counts) / max(1, sum(counts)))
    return results


register_recovery_method(RecoveryMethod(
    name="idp",
    settings=frozenset({"num_virtual_tokens", "pool_size", "score_layers", "scheme",
                        "balance_weight", "selection", "select_on"}),
    id_format=lambda e: (f"idp-m{e['pool_size']}-n{e['num_virtual_tokens']}-{e['scheme']}"
                         + ("" if e.get("selection", "attention") == "attention"
                            else f"-{e['selection']}")
                         + ("" if e.get("select_on", "context") == "context"
                            else f"-{e['select_on']}")),
    build=lambda base, e, seed, init: DynamicPromptModel(
        base, e["pool_size"], e["num_virtual_tokens"], e["score_layers"], e["scheme"],
        e["balance_weight"], seed=seed),
    save=lambda model, path: model.save_pretrained(path),
    load=DynamicPromptModel.from_pretrained,
    fit_setting="score_layers",
    side="input",
    eval_only={"selection": "attention", "select_on": "context"},
    # the prompt is chosen from every token of the input: padding must be masked
    padding_aware=True,
    context_scorer=lambda model, e: (model.context_scorer()
                                     if e.get("select_on", "context") == "context" else None),
    evaluate=_evaluate))
