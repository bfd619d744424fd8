"""Paired statistics on the same questions: bootstrap intervals and an exact McNemar test.

Two cells scored on the same documents differ by chance far less than their separate standard
errors suggest; these compare them question by question. Every input is the per-question
correctness in the cells' samples files (`evaluation.per_question`).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np


def paired_bootstrap(base: dict, other: dict, resamples: int, seed: int,
                     confidence: float = 0.95) -> dict:
    """Accuracy of `other` minus `base`, per task and on the mean over tasks, with percentile
    intervals from resampling each task's questions (the same draw for both cells).
    `base`, `other`: {task: [0/1 per question]} over the same questions in the same order."""
    return pooled_bootstrap([(base, other)], resamples, seed, confidence)


def pooled_bootstrap(pairs: list[tuple[dict, dict]], resamples: int, seed: int,
                     confidence: float = 0.95) -> dict:
    """`paired_bootstrap` pooled over training seeds: `pairs` holds one (base, other) per seed,
    all over the same questions. The difference is the mean over seeds; each resample draws the
    seeds with replacement and each task's questions (one draw for every seed: they answered the
    same questions), so the interval counts both seed-to-seed and question-to-question spread.
    McNemar's test, a cross-check, pools every (seed, question) pair."""
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2
    tasks = list(pairs[0][0])
    # one seed: no seed draw, so that a single pair's intervals are the plain paired bootstrap's
    seeds = rng.integers(0, len(pairs), (resamples, len(pairs))) if len(pairs) > 1 else \
        np.zeros((resamples, 1), dtype=int)
    out, draws = {}, []
    for task in tasks:
        diff = np.stack([np.asarray(o[task], float) - np.asarray(b[task], float)
                         for b, o in pairs])  # seeds x questions
        questions = rng.integers(0, diff.shape[1], (resamples, diff.shape[1]))
        boots = np.concatenate([  # in chunks: seeds x questions x resamples can be large
            diff[seeds[i:i + 100, :, None], questions[i:i + 100, None, :]].mean(axis=(1, 2))
            for i in range(0, resamples, 100)])
        draws.append(boots)
        a = [x for b, _ in pairs for x in b[task]]
        b_ = [x for _, o in pairs for x in o[task]]
        out[task] = _summary(diff.mean(), boots, tail, diff.shape[1], a, b_)
    if len(tasks) > 1:
        point = float(np.mean([out[t]["difference"] for t in tasks]))
        flat_a = [x for t in tasks for b, _ in pairs for x in b[t]]
        flat_b = [x for t in tasks for _, o in pairs for x in o[t]]
        questions = sum(out[t]["questions"] for t in tasks)
        out["mean"] = _summary(point, np.mean(draws, axis=0), tail, questions, flat_a, flat_b)
    return out


def on_the_mean(result: dict) -> dict:
    """A `paired_bootstrap` result's figure on the mean over tasks (its one task's where there
    is only one: no "mean" entry then)."""
    return result.get("mean", next(iter(result.values())))


def _summary(point, boots, tail, n, a, b) -> dict:
    lo, hi = np.quantile(boots, [tail, 1 - tail])
    return {"difference": float(point), "low": float(lo), "high": float(hi),
            "significant": bool(lo > 0 or hi < 0), "mcnemar_p": mcnemar_exact(a, b),
            "questions": int(n)}


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar test: of the questions the two cells disagree on, is the split
    between 'only a right' and 'only b right' further from even than chance makes likely?"""
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def baselines(cells: list) -> tuple[dict, dict]:
    """({model: its dense untrained cell}, {(model, compression): its untrained cell}): the
    rows every comparison and recovery figure is measured from (the first of each, in grid
    order)."""
    untrained: dict = {}
    for c in cells:
        if not c.trains:
            untrained.setdefault((c.model, c.compression), c)
    return {c.model: c for c in untrained.values() if c.baseline}, untrained


# Two budgets within this ratio of each other are "matched"; a reference entry further off is
# the nearest budget, labelled so, with the ratio in the comparisons table.
MATCHED_BUDGET_RATIO = 1.25


def reference_kind(reference: str, matched: bool = True) -> str:
    """The comparison of a recovery with the reference method (`comparisons`): at a matched
    budget (trainable parameters within MATCHED_BUDGET_RATIO), or at the nearest one the grid
    has (or every one, where counts are unknown)."""
    return f"vs {reference} at {'matched' if matched else 'nearest'} budget"


def budget_ratio(a: int | None, b: int | None) -> float | None:
    """The larger of two parameter counts over the smaller (1.0: equal); None if unknown."""
    return max(a, b) / min(a, b) if a and b else None


def comparisons(cells: list, reference: str, budget=None) -> list[tuple]:
    """The comparisons the study makes, as (kind, base cell, other cell), other minus base:
    compressed vs dense (the untrained rows); each trained recovery vs its compressed model;
    each recovery vs the entry of the `reference` method on the same model, compression and seed
    whose trainable parameters (`budget(cell)`) are nearest its own, on a log scale: "at matched
    budget" within MATCHED_BUDGET_RATIO, else "at nearest budget" (all of them, "nearest",
    where a count is unknown); an evaluation-only variant (an entry evaluating another
    entry's adapter, such as IDP's random and oracle selection) vs that entry. `cell.trains`,
    `cell.baseline`: whether its recovery method trains, whether its compression is the
    dense baseline."""
    dense, untrained = baselines(cells)
    out = [("compressed vs dense", dense[c.model], c) for c in untrained.values()
           if not c.baseline and c.model in dense]

    def same_unit(a, b):
        return a.model == b.model and a.compression == b.compression and a.seed == b.seed

    def nearest(c, candidates):
        size = budget(c) if budget else None
        if not size or not all(budget(d) for d in candidates):
            return candidates
        return [min(candidates, key=lambda d: (abs(math.log(budget(d) / size)), budget(d)))]

    for c in cells:
        if not c.trains:
            continue
        if c.settings["train_id"] != c.settings["id"]:
            own = [d for d in cells if d.settings["id"] == c.settings["train_id"] and same_unit(c, d)]
            out += [("variant vs the adapter's own selection", d, c) for d in own]
            continue
        if (c.model, c.compression) in untrained:
            out.append(("recovered vs compressed", untrained[(c.model, c.compression)], c))
        if c.settings["method"] != reference:
            references = [d for d in cells if d.trains and same_unit(c, d)
                          and d.settings["method"] == reference
                          and d.settings["train_id"] == d.settings["id"]]
            for d in nearest(c, references) if references else []:
                ratio = budget_ratio(budget(c), budget(d)) if budget else None
                matched = ratio is not None and ratio <= MATCHED_BUDGET_RATIO
                out.append((reference_kind(reference, matched), d, c))
    return out


def question_groups(task: str, doc_ids: list) -> list[str]:
    """Each question's group for `selection_diagnostics`: its leaf task when the task is a
    group (document ids "leaf/3", `evaluation.per_question`), else the task."""
    return [d.split("/")[0] if isinstance(d, str) and "/" in d else task for d in doc_ids]


def selection_diagnostics(choices: list[int], groups: list[str], m: int) -> dict:
    """How a selector spread its inputs over m prompts: the share each prompt got, the entropy
    of those shares (bits; log2 m when even, 0 when one prompt takes all), and the mutual
    information between an input's group (its task, or a probe relation) and its prompt (bits;
    0 when the choice ignores the group, at most the smaller of both entropies). A selector
    that routes by content has high entropy and mutual information; one that routes by
    position, or not at all, has neither."""
    n = len(choices)
    if n == 0:
        return {"selected_per_prompt": [0] * m, "selected_share": [0.0] * m,
                "selected_top_share": 0.0, "selection_entropy": 0.0, "selection_mi": 0.0}
    counts = np.bincount(np.asarray(choices, dtype=int), minlength=m)
    joint, per_group = Counter(zip(groups, choices)), Counter(groups)

    def entropy(ps):
        return max(0.0, float(-sum(p * math.log2(p) for p in ps if p > 0)))  # never -0.0

    mi = sum(k / n * math.log2(k * n / (per_group[g] * counts[c])) for (g, c), k in joint.items())
    return {"selected_per_prompt": counts.tolist(), "selected_share": (counts / n).tolist(),
            "selected_top_share": float(counts.max() / n),
            "selection_entropy": entropy(counts / n), "selection_mi": max(0.0, float(mi))}
