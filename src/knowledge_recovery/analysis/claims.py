"""The paper's claims, tested on a grid. Each `claims:` entry of the config names two kinds of
cell (`base`, `other`: a recovery entry, optionally a compression), the direction the claim
expects of other - base, and a margin; every pair of cells of those kinds (same model, same
compression unless named, same training seed where both train) is compared question by question
(`stats.paired_bootstrap`), on the mean over tasks and, with `by_group`, per task group. The
verdict says in words whether the grid supports the claim, contradicts it, or cannot tell at its
number of questions, and then how many questions would tell if the difference stayed as measured
(an interval narrows as one over the square root of the questions)."""
from __future__ import annotations

import math

import pandas as pd

COLUMNS = ["claim", "paper", "expect", "margin", "model", "base", "other", "group", "difference",
           "low", "high", "questions", "verdict", "questions_to_resolve", "leaning"]
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
                settings: dict) -> pd.DataFrame:
    """One row per claim, pair of cells and group ("all": the mean over every task; with
    `by_group`, also each task group). `correctness`: {cell id: {task: (doc ids, [0/1])}};
    `groups`: {task: group}; `settings`: the config's `statistics`."""
    from knowledge_recovery.analysis import stats

    rows = []
    for claim in claims:
        for base, other in pairs(claim, cells):
            a, b = correctness[base.id], correctness[other.id]
            tasks = [t for t in a if t in b and a[t][0] == b[t][0]]
            subsets = {"all": tasks}
            if claim.get("by_group"):
                for t in tasks:
                    subsets.setdefault(groups.get(t, "other"), []).append(t)
            for group, chosen in subsets.items():
                if not chosen:
                    continue
                result = stats.paired_bootstrap({t: a[t][1] for t in chosen},
                                                {t: b[t][1] for t in chosen},
                                                settings["resamples"], settings["seed"],
                                                settings["confidence"])
                mean = result.get("mean", result[chosen[0]])
                word, needed = verdict(claim["expect"], claim["margin"], mean["difference"],
                                       mean["low"], mean["high"], mean["questions"])
                rows.append({"claim": claim["claim"], "paper": claim.get("paper", ""),
                             "expect": claim["expect"], "margin": claim["margin"],
                             "model": other.model, "base": base.id, "other": other.id,
                             "group": group, "difference": mean["difference"],
                             "low": mean["low"], "high": mean["high"],
                             "questions": mean["questions"], "verdict": word,
                             "questions_to_resolve": needed,
                             "leaning": leaning(claim["expect"], claim["margin"],
                                                mean["difference"])})
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df: pd.DataFrame, confidence: float) -> str:
    """The claims table as the README shows it."""
    head = (f"Each claim tested on the grid's cells, question by question: the paired difference "
            f"other - base in accuracy (mean over tasks, {confidence:.0%} bootstrap interval), "
            f"and what it says of the claim. A claim not resolved leans the way its measured "
            f"difference points; the questions given would resolve it if that difference held.\n\n")
    if df.empty:
        return head + "No claims: the config's `claims:` is empty.\n"
    lines = []
    for _, r in df.iterrows():
        expected = EXPECTATIONS[r.expect].replace("margin", f"{r.margin:g}")
        verdict_text = r.verdict
        if r.verdict == "not resolved" and not pd.isna(r.questions_to_resolve):
            verdict_text += (f" (leaning {r.leaning}: ~{int(r.questions_to_resolve):,} "
                             f"questions would tell if the difference held)")
        lines.append({"claim": r.claim, "paper": r.paper, "expected": expected,
                      "base": r.base, "other": r.other, "tasks": r.group,
                      "difference": f"{r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]",
                      "questions": f"{int(r.questions):,}", "verdict": verdict_text})
    return head + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True) + "\n"
