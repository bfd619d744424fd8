"""The displacement analysis at the level of single questions, from the samples files: which
questions compression lost (the dense model right, the compressed one wrong), which of them each
recovery brings back, which questions it breaks (the compressed model right, the recovered one
wrong), whether the methods bring back the same questions, and a short reading per model and
compression of what the evidence favours: knowledge forgotten, or displaced and recoverable from
the input side. Intervals come from the paired comparisons (`aggregate.compare`)."""
from __future__ import annotations

import itertools

import pandas as pd

from knowledge_recovery.analysis.aggregate import figure
from knowledge_recovery.analysis.stats import baselines, reference_kind
from knowledge_recovery.registry import recovery_method


def _right(record: dict) -> dict[tuple, int]:
    return {(task, doc): r for task, (docs, rs) in record.items() for doc, r in zip(docs, rs)}


def _side(cell) -> str:
    return recovery_method(cell.settings["method"]).side or ""


def example_level(cells: list, records: dict) -> tuple[pd.DataFrame, dict]:
    """One row per trained cell on a compressed model whose dense and untrained compressed cells
    are in the grid: questions lost by compression and the share this cell recovers; questions
    the compressed model answers and the share this cell breaks. Also returns, by cell id, the
    set of lost questions it recovers (for `overlap`). `records`: each cell's
    `aggregate.correctness`, by cell id."""
    right = {c.id: _right(records[c.id]) for c in cells}
    dense, untrained = baselines(cells)
    rows, recovered_sets = [], {}
    for c in cells:
        base = untrained.get((c.model, c.compression))
        if not c.trains or base is None or base.baseline or c.model not in dense:
            continue
        d, b, r = right[dense[c.model].id], right[base.id], right[c.id]
        common = d.keys() & b.keys() & r.keys()
        lost = {q for q in common if d[q] and not b[q]}
        kept = {q for q in common if b[q]}
        recovered = {q for q in lost if r[q]}
        broken = {q for q in kept if not r[q]}
        recovered_sets[c.id] = recovered
        rows.append({"model": c.model, "compression": c.compression, "compressed": base.id,
                     "cell": c.id,
                     "method": c.settings["method"], "side": _side(c), "questions": len(common),
                     "lost": len(lost), "recovered": len(recovered),
                     "recovered_share": len(recovered) / len(lost) if lost else None,
                     "kept": len(kept), "broken": len(broken),
                     "broken_share": len(broken) / len(kept) if kept else None})
    return pd.DataFrame(rows, columns=["model", "compression", "compressed", "cell", "method",
                                       "side",
                                       "questions", "lost", "recovered", "recovered_share",
                                       "kept", "broken", "broken_share"]), recovered_sets


def overlap(rows: pd.DataFrame, recovered_sets: dict) -> pd.DataFrame:
    """For each two recovered cells of one model and compression: the lost questions both bring
    back, each alone, and the Jaccard index (both / either)."""
    out = []
    for (model, comp), group in rows.groupby(["model", "compression"], sort=False):
        for a, b in itertools.combinations(group.cell, 2):
            sa, sb = recovered_sets[a], recovered_sets[b]
            either = len(sa | sb)
            out.append({"model": model, "compression": comp, "a": a, "b": b,
                        "both": len(sa & sb), "only_a": len(sa - sb), "only_b": len(sb - sa),
                        "jaccard": len(sa & sb) / either if either else None})
    return pd.DataFrame(out, columns=["model", "compression", "a", "b", "both", "only_a",
                                      "only_b", "jaccard"])


def _mean_row(compared: pd.DataFrame, kind: str, other: str):
    """The mean-over-tasks row of one comparison of `other` (or its only task's)."""
    sel = compared[(compared.comparison == kind) & (compared.other == other)]
    mean = sel[sel.task == "mean"]
    return mean.iloc[0] if not mean.empty else (sel.iloc[0] if len(sel) == 1 else None)


def _reference_row(compared: pd.DataFrame, reference: str, other: str):
    """`other` against the reference method: at a matched budget if the grid has one, else at
    the nearest (`stats.comparisons`); None if neither."""
    for matched in (True, False):
        row = _mean_row(compared, reference_kind(reference, matched), other)
        if row is not None:
            return row
    return None


def _budget(row, reference: str) -> str:
    """How the reference row's budgets compare: matched, or the nearest with its ratio."""
    if row.comparison == reference_kind(reference, matched=True):
        return "at a matched parameter budget"
    ratio = getattr(row, "budget_ratio", None)
    return ("at the nearest parameter budget, not matched" + ("" if ratio is None or pd.isna(ratio)
                                                               else f" ({ratio:.1f}x apart)"))


def _diff(row) -> str:
    return (f"{row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}]"
            + (" *" if row.significant else ""))


def _pct(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:.0%}"


def reading(rows: pd.DataFrame, pairs: pd.DataFrame, compared: pd.DataFrame,
            confidence: float, reference: str) -> str:
    """Markdown: per model and compression, the example-level table, the overlap, and which
    reading the evidence favours, with the numbers it rests on."""
    # bold lines, not headings: the file is also shown inside the docs' sections
    out = [f"**Forgotten or displaced?** Per model and compression, from the same questions "
           f"answered by every cell. Differences in mean accuracy over tasks (other - base) with "
           f"their {confidence:.0%} paired bootstrap interval; * the interval excludes zero. "
           f"*lost*: the dense model right, the compressed one wrong; *recovered*: of those, the "
           f"recovered model right; *broken*: the compressed model right, the recovered one "
           f"wrong. Recovery ratio: (recovered - compressed) / (dense - compressed).\n"]
    if rows.empty:
        return "\n".join(out) + "\nNo trained recovery of a compressed model in this grid.\n"
    for (model, comp), group in rows.groupby(["model", "compression"], sort=False):
        drop = _mean_row(compared, "compressed vs dense", group.compressed.iloc[0])
        out.append(f"**{model} / {comp}**\n")
        lost = int(group.lost.iloc[0])
        if drop is not None:
            out.append(f"Compression: {_diff(drop)} against dense over "
                       f"{int(group.questions.iloc[0])} questions; it lost {lost} of them.\n")
        table = []
        for r in group.itertuples():
            gain = _mean_row(compared, "recovered vs compressed", r.cell)
            ratio = (gain.difference / -drop.difference
                     if gain is not None and drop is not None and drop.significant
                     and drop.difference < 0 else None)
            vs_ref = _reference_row(compared, reference, r.cell)
            table.append({"recovery": r.cell.split("/", 2)[2], "side": r.side,
                          "recovered of lost": f"{r.recovered}/{r.lost} ({_pct(r.recovered_share)})",
                          "broken of kept": f"{r.broken}/{r.kept} ({_pct(r.broken_share)})",
                          # an evaluation variant (IDP's oracle) is compared with its own
                          # selection, not the compressed model: it is not evidence here
                          "vs compressed": _diff(gain) if gain is not None else "n/a (variant)",
                          f"vs {reference}": _diff(vs_ref) if vs_ref is not None else "",
                          "recovery ratio": "n/a" if ratio is None else f"{ratio:.2f}"})
        out.append(pd.DataFrame(table).to_markdown(index=False, disable_numparse=True) + "\n")
        sub = pairs[(pairs.model == model) & (pairs.compression == comp)]
        if not sub.empty:
            out.append("Do the methods bring back the same questions? (Jaccard: both / either)\n")
            out.append("\n".join(f"- {p.a.split('/', 2)[2]} and {p.b.split('/', 2)[2]}: "
                                 f"{p.both} both, {p.only_a} / {p.only_b} only one; Jaccard "
                                 f"{'n/a' if p.jaccard is None or pd.isna(p.jaccard) else f'{p.jaccard:.2f}'}"
                                 for p in sub.itertuples()) + "\n")
        out.append("**Reading.** " + _verdict(group, drop, compared, reference) + "\n")
    return "\n".join(out)


def _verdict(group: pd.DataFrame, drop, compared: pd.DataFrame, reference: str) -> str:
    if drop is None:
        return "No untrained compressed row to compare with: no reading."
    if not drop.significant:
        return (f"Compression cost no measurable accuracy here ({_diff(drop)}): there is nothing "
                f"to tell forgotten from displaced at this level.")
    gains = {r.cell: _mean_row(compared, "recovered vs compressed", r.cell)
             for r in group.itertuples()}
    sides = dict(zip(group.cell, group.side))
    up = {c: g for c, g in gains.items() if g is not None and g.significant and g.difference > 0}
    inputs = sorted((c for c in up if sides[c] == "input"), key=lambda c: -up[c].difference)
    weights = sorted((c for c in up if sides[c] == "weights"), key=lambda c: -up[c].difference)
    if inputs:
        best = inputs[0]
        text = (f"Displaced rather than forgotten: recovery from the input side "
                f"({best.split('/', 2)[2]}, weights untouched) brings back accuracy the "
                f"compression lost ({_diff(up[best])} over the compressed model).")
        vs_ref = _reference_row(compared, reference, best)
        if vs_ref is not None:
            how = ("no measurable difference: the input side recovers as much as the weights"
                   if vs_ref.low <= 0 <= vs_ref.high else
                   "it recovers measurably less" if vs_ref.high < 0 else
                   "it recovers measurably more")
            text += (f" Against {reference} {_budget(vs_ref, reference)} "
                     f"({vs_ref.base.split('/', 2)[2]}) on the same compressed model: {_diff(vs_ref)}, "
                     f"{how}.")
        return text
    if weights:
        best = weights[0]
        tried = [c for c in gains if sides[c] == "input" and gains[c] is not None]
        shown = "; ".join(f"{c.split('/', 2)[2]}: {_diff(gains[c])}" for c in tried)
        return (f"Recovered by changing the weights ({best.split('/', 2)[2]}: "
                f"{_diff(up[best])}) but not measurably from the input side"
                + (f" ({shown})" if shown else " (no input-side method in this grid)")
                + ": for these methods and training budgets the evidence favours knowledge "
                  "forgotten (needing the weights) over displaced.")
    shown = "; ".join(f"{c.split('/', 2)[2]}: {_diff(g)}" for c, g in gains.items()
                      if g is not None)
    worse = [c.split("/", 2)[2] for c, g in gains.items()
             if g is not None and g.significant and g.difference < 0]
    return (f"No recovery measurably improves on the compressed model ({shown or 'none trained'})"
            + (f"; {', '.join(worse)} made it measurably worse" if worse else "")
            + ": this grid cannot tell forgotten from displaced at these training budgets; "
              "evaluate more questions or train longer.")


# ---------------------------------------------------------------- layer level (represent step)
LAYER_COLUMNS = ["model", "compression", "recovery", "seed", "cell", "side", "layer", "cka",
                 "attention_to_prompt", "latency_over_dense", "latency_ms", "dense_latency_ms"]


def layer_table(cells: list, traces: dict) -> pd.DataFrame:
    """One row per traced cell x layer (0: the input embeddings): CKA with the dense model,
    attention mass on prompt tokens (from layer 1; empty for methods without prompt tokens) and
    the cell's latency over the dense model's (repeated on each of its rows). `traces`: each
    cell's represent record, by cell id."""
    rows = []
    for c in cells:
        found = traces[c.id]
        mass = [None] + (found["attention_to_prompt"] or [None] * (len(found["layers"]) - 1))
        lat = next(iter(found["latency"].values()))  # at the first listed batch size
        rows += [{**c.axes, "cell": c.id, "side": _side(c), "layer": layer, "cka": cka,
                  "attention_to_prompt": m, "latency_over_dense": lat["cell_over_dense"],
                  "latency_ms": lat["cell_ms"], "dense_latency_ms": lat["dense_ms"]}
                 for layer, cka, m in zip(found["layers"], found["cka"], mass)]
    frame = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    # numbers, NaN where there are no prompt tokens (all-None would be an object column)
    frame["attention_to_prompt"] = frame.attention_to_prompt.astype(float)
    return frame


def layer_summary(layers: pd.DataFrame) -> str:
    """Markdown: per model and compression, each recovery's CKA with the dense model (mean over
    layers, and at the last layer) and its mean attention mass on prompt tokens."""
    if layers.empty:
        return ""
    out = ["**Where the representation moves.** Linear CKA of the input tokens' hidden states "
           "with the dense model's on a fixed sample of evaluation inputs (1 = the dense "
           "model's representation up to rotation and scale); attention: mean mass the input's "
           "tokens put on prompt tokens; latency: forward at batch 1 over the dense model's, "
           "measured side by side (summary/displacement_layers.csv, cka.png).\n"]
    for (model, comp), group in layers.groupby(["model", "compression"], sort=False):
        table = []
        for rec, rows in group.groupby("recovery", sort=False):
            last = rows[rows.layer == rows.layer.max()]
            mass = rows.attention_to_prompt.dropna()
            table.append({"recovery": rec, "CKA mean over layers": f"{rows.cka.mean():.3f}",
                          "CKA last layer": f"{last.cka.mean():.3f}",
                          "attention to prompt": f"{mass.mean():.2f}" if len(mass) else "",
                          "latency / dense": f"{rows.latency_over_dense.mean():.2f}"})
        out.append(f"*{model} / {comp}*\n")
        out.append(pd.DataFrame(table).to_markdown(index=False, disable_numparse=True) + "\n")
    return "\n".join(out)


def plot_cka(layers: pd.DataFrame, path) -> None:
    """Per model and compression, CKA with the dense model per layer, one curve per recovery
    (seeds averaged; the untrained compressed model in black), attention mass on prompt tokens
    dashed on the right axis."""
    units = list(dict.fromkeys(zip(layers.model, layers.compression)))

    def draw(ax, i):
        model, comp = units[i]
        sub = layers[(layers.model == model) & (layers.compression == comp)]
        twin = None
        for k, (rec, rows) in enumerate(sub.groupby("recovery", sort=False)):
            mean = rows.groupby("layer").mean(numeric_only=True)
            colour = "k" if rows.side.iloc[0] == "" and not rows.seed.iloc[0] else f"C{k}"
            ax.plot(mean.index, mean.cka, marker=".", color=colour, label=rec)
            if mean.attention_to_prompt.notna().any():
                twin = twin or ax.twinx()
                twin.plot(mean.index, mean.attention_to_prompt, linestyle="--", color=colour,
                          alpha=0.7)
        if twin is not None:
            twin.set_ylim(0, 1)
            twin.set_ylabel("attention mass on prompt tokens (dashed)")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer (0: embeddings)")
        ax.set_ylabel("linear CKA with the dense model")
        ax.set_title(f"{model} / {comp}", fontsize=9)
        ax.legend(fontsize=7, title="recovery", title_fontsize=7, loc="lower left")
    figure(path, draw, len(units), "Representation against the dense model, per layer",
           empty="no representation analysis (displacement.enabled: false)")
