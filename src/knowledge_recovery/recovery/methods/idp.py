"""IDP, Inference-time Dynamic Prompting (Hoang et al. 2023): a pool of soft prompts, one chosen
per input from its early layers (by a fitted router, or by the paper's attention score). The
model, its layouts, training schemes and router are `recovery/dynamic_prompts.py`; this is the
method's record: settings, checks, id, how it builds, trains and evaluates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.recovery.entries import TrainedSettings
from knowledge_recovery.registry import RecoveryMethod, register_recovery_method, setting


@dataclass(frozen=True, kw_only=True)
class IDPSettings(TrainedSettings):
    num_virtual_tokens: int = setting(help="length of each prompt in the pool", minimum=1)
    pool_size: int = setting(help="number of prompts in the pool (m)", minimum=1)
    score_layers: list[int] = setting(
        [0, 1], minItems=1, uniqueItems=True, items={"type": "integer", "minimum": 0},
        help="the early layers the selector reads (router: the input's hidden state after the "
             "last of them; attention: their attention to the pool); early layers keep selection "
             "cheap")
    # routed by default: joint prompts fail alone (docs/methods.md, "IDP")
    scheme: Literal["joint", "routed", "curated"] = setting(
        "routed", help="training: joint = all m prompts at once; routed = the selected prompt, "
                       "plus a balance term; curated = prompt j alone on texts[j]")
    layout: Literal["independent", "concatenated"] = setting(
        "independent", help="how the pool is laid out when scored. independent = each prompt's "
        "keys and values computed alone at positions 0..n-1, as the chosen prompt runs; "
        "concatenated = the m prompts end to end at 0..m*n-1 (the ablation: it selects by slot "
        "position)")
    texts: list[dict] | None = setting(
        None, minItems=1, items={"$ref": "#/$defs/text_source"},
        help="scheme curated: one text source per prompt, each prompt trained on its own")
    # 0.01 let routing collapse (config/idp.yaml)
    balance_weight: float = setting(1.0, minimum=0, help="routed: weight of the load-balance term")
    # 1.0 did not hold it on trivia (config/study.yaml): routed training caps each prompt's share
    capacity_factor: float = setting(
        1.0, minimum=1, help="routed: no prompt takes more than ceil(capacity_factor x batch / "
        "pool_size) examples of a batch (the rest go to their best prompt with room); "
        "pool_size or more: no cap")
    # attention routes at chance (docs/methods.md, "IDP"): the fitted router is the default
    selection: Literal["router", "attention", "random", "oracle"] = setting(
        "router", help="inference: router (a linear map of the input's hidden state, fitted "
        "after training), attention (the paper's score: the attention the input pays each "
        "prompt), random, or oracle (best prompt per document: an upper bound)")
    select_on: Literal["context", "sequence"] = setting(
        "context", help="inference: what the selector sees. context = the question alone, one "
        "prompt for all its answers (an input is all a deployed selector has; its context is "
        "computed once); sequence = each (question, answer) sequence whole, a prompt per answer")
    router_blocks: int = setting(
        64, minimum=1, help="training blocks per text the router is fitted on (each also cut to "
        "1/8, 1/4 and 1/2 of seq_len); its target is the prompt trained on the block's text "
        "(curated) or the prompt with the lowest loss on it (joint, routed: one pass per prompt)")

    def id(self) -> str:
        return (f"idp-m{self.pool_size}-n{self.num_virtual_tokens}-{self.scheme}"
                + ("" if self.layout == "independent" else "-concat")
                + self._capacity_id()
                + ("" if self.selection == "router" else f"-{self.selection}")
                + ("" if self.select_on == "context" else f"-{self.select_on}"))

    def _capacity_id(self) -> str:
        """Routed pools name a capacity other than the default; pool_size or more is no cap."""
        if self.scheme != "routed" or self.capacity_factor == 1:
            return ""
        return ("-uncapped" if self.capacity_factor >= self.pool_size
                else f"-cap{self.capacity_factor:g}")

    def check(self, key: str) -> None:
        """A curated pool names one text per prompt; only a curated pool names texts."""
        if self.scheme == "curated":
            if self.text:
                raise ConfigError(f"{key}.text", "a curated pool trains each prompt on its own "
                                  "text: give them as `texts`, one per prompt")
            if not self.texts:
                raise ConfigError(f"{key}.texts", "scheme 'curated' trains each prompt on its "
                                  f"own text: give a list of {self.pool_size} text sources")
            if len(self.texts) != self.pool_size:
                raise ConfigError(f"{key}.texts", f"{len(self.texts)} texts for a pool of "
                                  f"{self.pool_size} prompts: give one per prompt")
        elif self.texts:
            raise ConfigError(f"{key}.texts", f"only scheme 'curated' takes texts (this entry's "
                              f"scheme is {self.scheme!r}; the others train on `text`)")


def _build(base, s: IDPSettings, seed: int, init: bool):
    from knowledge_recovery.recovery.dynamic_prompts import DynamicPromptModel

    return DynamicPromptModel(base, s.pool_size, s.num_virtual_tokens, list(s.score_layers),
                              s.scheme, s.balance_weight, s.layout, s.router_blocks,
                              s.capacity_factor, seed=seed)


def _load(base, path):
    from knowledge_recovery.recovery.dynamic_prompts import DynamicPromptModel

    return DynamicPromptModel.from_pretrained(base, path)


def _evaluate(model, s: IDPSettings, run) -> dict:
    """Router or attention selection, or random: one lm-eval run, with how the selector
    spread the questions over the prompts (`stats.selection_diagnostics`: shares, entropy, and
    mutual information between a question's leaf task, such as a probe relation, and its
    prompt). Oracle: one run per prompt of the pool, keeping per document the best of them."""
    from knowledge_recovery.analysis.stats import question_groups, selection_diagnostics
    from knowledge_recovery.recovery.dynamic_prompts import oracle_results

    if s.selection == "oracle":
        per_prompt = []
        for j in range(model.pool_size):
            model.selection = j
            per_prompt.append(run(True))
        return oracle_results(per_prompt)
    model.selection = s.selection
    model.selected.zero_()
    results = run(True)
    counts = model.selected.tolist()
    for task, metrics in results.items():
        prompts = metrics.get("prompt")
        if prompts and all(p is not None for p in prompts):  # one prompt per question
            metrics.update(selection_diagnostics(
                prompts, question_groups(task, metrics["doc_id"]), model.pool_size))
        else:  # select_on: sequence, a prompt per answer: the counts only
            metrics.pop("prompt", None)
            choices = [j for j, k in enumerate(counts) for _ in range(k)]
            metrics.update(selection_diagnostics(choices, [task] * len(choices),
                                                 model.pool_size), selection_mi=None)
    return results


def _train(model, s: IDPSettings, tokenizer, texts: list[str], cfg: dict, seed: int, **kwargs):
    """The pool by its scheme, then its router on the same texts (`fit_router`)."""
    from knowledge_recovery.recovery.dynamic_prompts import fit_router, train_curated
    from knowledge_recovery.recovery.training import load_trainable_state, train, trainable_state

    # validation while the pool trains selects as routed training routes: the router comes after
    model.selection = "attention"
    if s.scheme == "curated":
        best, history = train_curated(model, tokenizer, texts, cfg, seed, **kwargs)
    else:
        best, history = train(model, tokenizer, texts[0], cfg, seed, **kwargs)
    load_trainable_state(model, best)
    history["router"] = fit_router(model, tokenizer, texts, cfg, seed,
                                   log=kwargs.get("log", print))
    return trainable_state(model), history


def _prepare_evaluation(model, s: IDPSettings) -> None:
    """One lm-eval run selects as the entry says; the oracle is the best of one run per prompt
    (`_evaluate`), not one run."""
    if s.selection == "oracle":
        raise ValueError("selection 'oracle' is the best of one evaluation per prompt: run "
                         f"selection=0 .. {model.pool_size - 1} and keep each question's best")
    model.selection = s.selection


register_recovery_method(RecoveryMethod(
    name="idp",
    settings=IDPSettings,
    build=_build,
    save=lambda model, path: model.save_pretrained(path),
    load=_load,
    fit_setting="score_layers",
    side="input",
    eval_only={"selection": "router", "select_on": "context"},
    # the prompt is chosen from every token of the input: padding must be masked
    padding_aware=True,
    context_scorer=lambda model, s: model.context_scorer() if s.select_on == "context" else None,
    evaluate=_evaluate,
    prepare_evaluation=_prepare_evaluation,
    train=_train))
