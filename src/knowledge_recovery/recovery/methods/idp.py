"""IDP, Inference-time Dynamic Prompting (Hoang et al. 2023): a pool of soft prompts, one chosen
per input from its early layers (by a fitted router, or by the paper's attention score). The
model, its layouts, training schemes and router are `recovery/dynamic_prompts.py`; this is the
method's record: settings, checks, id, how it builds, trains and evaluates.
"""
from __future__ import annotations

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.registry import RecoveryMethod, register_recovery_method


def _build(base, e: dict, seed: int, init: bool):
    from knowledge_recovery.recovery.dynamic_prompts import DynamicPromptModel

    return DynamicPromptModel(base, e["pool_size"], e["num_virtual_tokens"], e["score_layers"],
                              e["scheme"], e["balance_weight"], e.get("layout", "independent"),
                              e["router_blocks"], seed=seed)


def _load(base, path):
    from knowledge_recovery.recovery.dynamic_prompts import DynamicPromptModel

    return DynamicPromptModel.from_pretrained(base, path)


def _evaluate(model, entry: dict, run) -> dict:
    """Router or attention selection, or random: one lm-eval run, with how the selector
    spread the questions over the prompts (`stats.selection_diagnostics`: shares, entropy, and
    mutual information between a question's leaf task, such as a probe relation, and its
    prompt). Oracle: one run per prompt of the pool, keeping per document the best of them."""
    from knowledge_recovery.analysis.stats import question_groups, selection_diagnostics
    from knowledge_recovery.recovery.dynamic_prompts import oracle_results

    if entry["selection"] == "oracle":
        per_prompt = []
        for j in range(model.pool_size):
            model.selection = j
            per_prompt.append(run(True))
        return oracle_results(per_prompt)
    model.selection = entry["selection"]
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


def _train(model, entry: dict, tokenizer, texts: list[str], cfg: dict, seed: int, **kwargs):
    """The pool by its scheme, then its router on the same texts (`fit_router`)."""
    from knowledge_recovery.recovery.dynamic_prompts import fit_router, train_curated
    from knowledge_recovery.recovery.training import load_trainable_state, train, trainable_state

    # validation while the pool trains selects as routed training routes: the router comes after
    model.selection = "attention"
    if entry["scheme"] == "curated":
        best, history = train_curated(model, tokenizer, texts, cfg, seed, **kwargs)
    else:
        best, history = train(model, tokenizer, texts[0], cfg, seed, **kwargs)
    load_trainable_state(model, best)
    history["router"] = fit_router(model, tokenizer, texts, cfg, seed,
                                   log=kwargs.get("log", print))
    return trainable_state(model), history


def _prepare_evaluation(model, entry: dict) -> None:
    """One lm-eval run selects as the entry says; the oracle is the best of one run per prompt
    (`_evaluate`), not one run."""
    if entry["selection"] == "oracle":
        raise ValueError("selection 'oracle' is the best of one evaluation per prompt: run "
                         f"selection=0 .. {model.pool_size - 1} and keep each question's best")
    model.selection = entry["selection"]


def _check(entry: dict, key: str) -> None:
    """A curated pool names one text per prompt; only a curated pool names texts."""
    texts = entry.get("texts")
    if entry["scheme"] == "curated":
        if not texts:
            raise ConfigError(f"{key}.texts", "scheme 'curated' trains each prompt on its own "
                              f"text: give a list of {entry['pool_size']} text sources")
        if len(texts) != entry["pool_size"]:
            raise ConfigError(f"{key}.texts", f"{len(texts)} texts for a pool of "
                              f"{entry['pool_size']} prompts: give one per prompt")
    elif texts:
        raise ConfigError(f"{key}.texts", f"only scheme 'curated' takes texts (this entry's "
                          f"scheme is {entry['scheme']!r}; the others train on `text`)")


def _id(e: dict) -> str:
    return (f"idp-m{e['pool_size']}-n{e['num_virtual_tokens']}-{e['scheme']}"
            + ("" if e.get("layout", "independent") == "independent" else "-concat")
            + ("" if e.get("selection", "router") == "router" else f"-{e['selection']}")
            + ("" if e.get("select_on", "context") == "context" else f"-{e['select_on']}"))


register_recovery_method(RecoveryMethod(
    name="idp",
    settings=frozenset({"num_virtual_tokens", "pool_size", "score_layers", "scheme",
                        "balance_weight", "layout", "texts", "selection", "select_on",
                        "router_blocks"}),
    id_format=_id,
    build=_build,
    save=lambda model, path: model.save_pretrained(path),
    load=_load,
    fit_setting="score_layers",
    side="input",
    eval_only={"selection": "router", "select_on": "context"},
    # the prompt is chosen from every token of the input: padding must be masked
    padding_aware=True,
    context_scorer=lambda model, e: (model.context_scorer()
                                     if e.get("select_on", "context") == "context" else None),
    evaluate=_evaluate,
    prepare_evaluation=_prepare_evaluation,
    check=_check,
    train=_train))
