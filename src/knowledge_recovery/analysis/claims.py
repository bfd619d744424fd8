"""The paper's claims, tested on a grid. Each `claims:` entry of the config names two kinds of
cell (`base`, `other`: a recovery entry, optionally a compression), the direction the claim
expects of other - base, and a margin; every pair of cells of those kinds (same model, same
compression unless named, same training seed where both train) is compared question by question
(`stats.paired_bootstrap`), on the mean over tasks and, with `by_group`, per task group. The
verdict says in words whether the grid supports the claim, contradicts it, or cannot tell at its
number of questions, and then how many questions would tell if the difference stayed as measured
(an interval narrows as one over the square root of the questions).

What is compared (`measure`):
- accuracy: other - base in accuracy, the mean over tasks (and per group with `by_group`);
- recovery_ratio: other - base as a share of what compression lost, (other - base) / (dense -
  compressed), from one resampling of the three cells' questions;
- lost_questions: on the questions compression lost (the dense model right, the untrained
  compressed model wrong), the share other answers right minus the share base does: which side
  brings back more of the lost knowledge;
- latency: other's forward latency over base's at `batch_size` (each measured beside the dense
  model in its represent job; the interval is the range over timing rounds)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

COLUMNS = ["claim", "paper", "measure", "expect", "margin", "model", "base", "other", "group",
           "difference", "low", "high", "questions", "verdict", "questions_to_resolve", "leaning",
           "base_value", "other_value"]
EXPECTATIONS = {  # other - base: what the claim says, in words
    "greater": "other > base",
    "less": "other < base",
    "not_worse": "other >= base - margin",
    "equal": "|other - base| < margin",
}


def pairs(claim: dict, cells: list) -> list[tuple]:
    """(base cell, other cell) for every cell of the claim's `other` kind and its base: the same
    model, the base's compression if it names one (else the other's), the same seed where both
    are trained (else the base's first). `other` without a compression: every compressed cell
    (not the dense baseline, unless the base names a compression)."""
    def kind(cell, selector) -> bool:
        return cell.recovery == selector["recovery"] and \
            cell.compression == selector.get("compression", cell.compression)

    base_sel, other_sel = claim["base"], claim["other"]
    out = []
    for other in cells:
        if not kind(other, other_sel):
            continue
        if "compression" not in other_sel and other.baseline and "compression" not in base_sel:
            continue
        compression = base_sel.get("compression", other.compression)
        candidates = [c for c in cells if c.model == other.model and c.compression == compression
                      and kind(c, base_sel) and c is not other]
        same_seed = [c for c in candidates if c.seed == other.seed]
        if candidates:
            out.append(((same_seed or candidates)[0], other))
    return out


def _claim_side(expect: str, margin: float, difference: float) -> float:
    """How far `difference` lies on the claim's side of its boundary (negative: the other side):
    above 0, -margin or below 0 for greater, not_worse and less; inside +-margin for equal."""
    if expect == "equal":
        return margin - abs(difference)
    if expect == "less":
        difference = -difference
    return difference - (-margin if expect == "not_worse" else 0.0)


def verdict(expect: str, margin: float, difference: float, low: float, high: float,
            questions: int) -> tuple[str, int | None]:
    """(supported | contradicted | not resolved, questions that would resolve it or None): the
    interval wholly on the claim's side of its boundary, wholly on the other, or across it.
    Which way more questions would resolve it: `leaning`."""
    if expect == "equal":
        supported, contradicted = -margin < low and high < margin, low > margin or high < -margin
    else:
        # the interval's ends, on the claim's side of the boundary (one interval end each)
        ends = sorted(_claim_side(expect, margin, x) for x in (low, high))
        supported, contradicted = ends[0] > 0, ends[1] < 0
    if supported:
        return "supported", None
    if contradicted:
        return "contradicted", None
    gap, half = abs(_claim_side(expect, margin, difference)), (high - low) / 2
    if gap == 0 or half <= 0:
        return "not resolved", None
    return "not resolved", math.ceil(questions * (half / gap) ** 2)


def leaning(expect: str, margin: float, difference: float) -> str:
    """The verdict the measured difference points to (what more questions would show if it
    held)."""
    return "supported" if _claim_side(expect, margin, difference) > 0 else "contradicted"


def claim_table(claims: list[dict], cells: list, correctness: dict, groups: dict,
                settings: dict, timings: dict | None = None) -> pd.DataFrame:
    """One row per claim, pair of cells and group ("all": the mean over every task; with
    `by_group`, also each task group). `correctness`: {cell id: {task: (doc ids, [0/1])}};
    `groups`: {task: group}; `settings`: the config's `statistics`; `timings`: {cell id: its
    represent record's `latency`} (latency claims)."""
    from knowledge_recovery.analysis import stats

    dense, untrained = stats.baselines(cells)
    rows = []
    for claim in claims:
        measure = claim.get("measure", "accuracy")
        for base, other in pairs(claim, cells):
            head = {"claim": claim["claim"], "paper": claim.get("paper", ""), "measure": measure,
                    "expect": claim["expect"], "margin": claim["margin"], "model": other.model,
                    "base": base.id, "other": other.id}
            if measure == "latency":
                found = _latency(timings or {}, base, other, claim["batch_size"])
                if found is not None:
                    rows.append({**head, "group": f"batch {claim['batch_size']}", **found,
                                 **_judged(claim, found, questions=None)})
                continue
            reference = {"dense": dense.get(other.model),
                         "compressed": untrained.get((other.model, other.compression))}
            if measure != "accuracy" and (reference["dense"] is None
                                          or reference["compressed"] is None
                                          or reference["compressed"].baseline):
                continue  # no compression to measure against
            a, b = correctness[base.id], correctness[other.id]
            others = [correctness[c.id] for c in reference.values() if c is not None]
            tasks = [t for t in a if t in b and a[t][0] == b[t][0]
                     and all(t in r and r[t][0] == a[t][0] for r in others)]
            subsets = {"all": tasks}
            if claim.get("by_group"):
                for t in tasks:
                    subsets.setdefault(groups.get(t, "other"), []).append(t)
            for group, chosen in subsets.items():
                if not chosen:
                    continue
                answers = {"base": {t: a[t][1] for t in chosen},
                           "other": {t: b[t][1] for t in chosen}}
                if measure != "accuracy":
                    answers.update({k: {t: correctness[c.id][t][1] for t in chosen}
                                    for k, c in reference.items()})
                found = MEASURED[measure](answers, settings)
                if found is not None:
                    rows.append({**head, "group": group, **found,
                                 **_judged(claim, found, found["questions"])})
    return pd.DataFrame(rows, columns=COLUMNS)


def _judged(claim: dict, found: dict, questions: int | None) -> dict:
    word, needed = verdict(claim["expect"], claim["margin"], found["difference"], found["low"],
                           found["high"], questions or 0)
    return {"verdict": word, "questions_to_resolve": needed if questions else None,
            "leaning": leaning(claim["expect"], claim["margin"], found["difference"])}


def _mean_over_tasks(per_task: dict, draw: dict | None = None):
    """Mean accuracy over tasks of {task: [0/1]}; with `draw` ({task: resamples x questions
    indices}), one mean per resample."""
    return np.mean([np.asarray(v, float)[draw[t]].mean(axis=-1) if draw is not None
                    else np.mean(v) for t, v in per_task.items()], axis=0)


def _accuracy(answers: dict, settings: dict) -> dict:
    from knowledge_recovery.analysis import stats

    result = stats.paired_bootstrap(answers["base"], answers["other"], settings["resamples"],
                                    settings["seed"], settings["confidence"])
    mean = stats.on_the_mean(result)
    return {"difference": mean["difference"], "low": mean["low"], "high": mean["high"],
            "questions": mean["questions"], "base_value": float(_mean_over_tasks(answers["base"])),
            "other_value": float(_mean_over_tasks(answers["other"]))}


def _recovery_ratio(answers: dict, settings: dict) -> dict | None:
    """(other - base) / (dense - compressed) on the mean over tasks, every cell's questions
    drawn alike in each resample; None where compression lost nothing on these questions."""
    def mean_over_tasks(cell, draw=None):
        return _mean_over_tasks(answers[cell], draw)

    drop = mean_over_tasks("dense") - mean_over_tasks("compressed")
    if drop <= 0:
        return None
    rng = np.random.default_rng(settings["seed"])
    draw = {t: rng.integers(0, len(v), (settings["resamples"], len(v)))
            for t, v in answers["base"].items()}
    drops = mean_over_tasks("dense", draw) - mean_over_tasks("compressed", draw)
    gains = mean_over_tasks("other", draw) - mean_over_tasks("base", draw)
    ratios = gains[drops > 0] / drops[drops > 0]
    tail = (1 - settings["confidence"]) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    gain = mean_over_tasks("other") - mean_over_tasks("base")
    return {"difference": float(gain / drop), "low": float(low), "high": float(high),
            "questions": sum(len(v) for v in answers["base"].values()),
            "base_value": float(mean_over_tasks("base")),
            "other_value": float(mean_over_tasks("other"))}


def _lost_questions(answers: dict, settings: dict) -> dict | None:
    """On the questions compression lost: the share other answers right minus base's."""
    from knowledge_recovery.analysis import stats

    lost = {k: [] for k in ("base", "other")}
    for t in answers["base"]:
        for i, (d, c) in enumerate(zip(answers["dense"][t], answers["compressed"][t])):
            if d and not c:
                lost["base"].append(answers["base"][t][i])
                lost["other"].append(answers["other"][t][i])
    if not lost["base"]:
        return None
    result = stats.paired_bootstrap({"lost": lost["base"]}, {"lost": lost["other"]},
                                    settings["resamples"], settings["seed"],
                                    settings["confidence"])["lost"]
    return {"difference": result["difference"], "low": result["low"], "high": result["high"],
            "questions": result["questions"], "base_value": float(np.mean(lost["base"])),
            "other_value": float(np.mean(lost["other"]))}


def _latency(timings: dict, base, other, batch_size: int) -> dict | None:
    """other's latency over base's at `batch_size`, each as its ratio to the dense model timed
    beside it: the ratio of the medians over rounds, and the range over every pair of rounds."""
    found = [timings.get(c.id, {}).get(str(batch_size)) for c in (base, other)]
    if None in found:
        return None
    ratios = [[c / d for c, d in zip(t["cell"]["wall_ms"], t["dense"]["wall_ms"])] for t in found]
    point = np.median(ratios[1]) / np.median(ratios[0])
    spread = [o / b for o in ratios[1] for b in ratios[0]]
    return {"difference": float(point - 1), "low": float(min(spread) - 1),
            "high": float(max(spread) - 1), "questions": None,
            "base_value": float(np.median(ratios[0])), "other_value": float(np.median(ratios[1]))}


MEASURED = {"accuracy": _accuracy, "recovery_ratio": _recovery_ratio,
            "lost_questions": _lost_questions}


def _shown(r) -> str:
    """A row's measured value in words, with its interval."""
    if r.measure == "recovery_ratio":
        return f"ratio {r.difference:.2f} [{r.low:.2f}, {r.high:.2f}]"
    if r.measure == "latency":
        return (f"{1 + r.difference:.2f}x [{1 + r.low:.2f}, {1 + r.high:.2f}] "
                f"({r.other_value:.2f} / {r.base_value:.2f} of dense)")
    shown = f"{r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
    if r.measure == "lost_questions":
        shown += f" ({r.other_value:.0%} vs {r.base_value:.0%} of them)"
    return shown


def _expected(r) -> str:
    if r.measure == "recovery_ratio":  # the verdict compares the ratio with the margin
        return {"greater": "ratio > margin", "less": "ratio < margin",
                "not_worse": "ratio >= -margin", "equal": "|ratio| < margin"}[r.expect].replace(
            "margin", f"{r.margin:g}")
    expected = EXPECTATIONS[r.expect].replace("margin", f"{r.margin:g}")
    return expected + (" (latency)" if r.measure == "latency" else "")


def markdown(df: pd.DataFrame, confidence: float) -> str:
    """The claims table as the README shows it."""
    head = (f"Each claim tested on the grid's cells, question by question: the paired difference "
            f"other - base in accuracy (mean over tasks, {confidence:.0%} bootstrap interval), "
            f"or the claim's own measure: a recovery ratio (other - base) / (dense - "
            f"compressed); the difference on the questions compression lost (the share of them "
            f"each cell answers); a latency ratio other / base (each timed beside the dense "
            f"model; interval: the range over timing rounds). A claim not resolved leans the "
            f"way its measured value points; the questions given would resolve it if that value "
            f"held.\n\n")
    if df.empty:
        return head + "No claims: the config's `claims:` is empty.\n"
    lines = []
    for _, r in df.iterrows():
        verdict_text = r.verdict
        if r.verdict == "not resolved":
            verdict_text += f" (leaning {r.leaning}"
            if not pd.isna(r.questions_to_resolve):
                verdict_text += (f": ~{int(r.questions_to_resolve):,} questions would tell if "
                                 f"the difference held")
            verdict_text += ")"
        lines.append({"claim": r.claim, "paper": r.paper, "expected": _expected(r),
                      "base": r.base, "other": r.other, "on": r.group, "measured": _shown(r),
                      "questions": "" if pd.isna(r.questions) else f"{int(r.questions):,}",
                      "verdict": verdict_text})
    return head + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True) + "\n"
