"""Aggregate: every cell x task into one CSV, one Markdown table and plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .artifacts import read_json, read_json_gz

METRIC = "acc"


def collect(cells: list, eval_files: list, train_manifests: dict) -> pd.DataFrame:
    """One row per cell x task x metric. `train_manifests` maps cell id -> manifest path."""
    rows = []
    for cell, path in zip(cells, eval_files):
        result = read_json(path)
        trained = read_json(train_manifests[cell.id]) if cell.id in train_manifests else {}
        extra = {"trainable_params": trained.get("trainable_params", 0),
                 "adapter_bytes": trained.get("adapter_bytes", 0)}
        for task, metrics in result["results"].items():
            for metric, value in metrics.items():
                if (metric.endswith("_stderr") or metric == "documents"
                        or not isinstance(value, (int, float))):
                    continue
                rows.append({"cell": cell.id, **cell.axes, "task": task, "metric": metric,
                             "value": value, "stderr": metrics.get(f"{metric}_stderr"),
                             "documents": metrics.get("documents"), **extra})
    return pd.DataFrame(rows)


def correctness(samples_file) -> dict:
    """{task: (document ids, [0/1 per document])} of one cell's samples file, for the tasks
    scored right or wrong per document (not perplexity tasks)."""
    return {task: (rec["doc_id"], [int(bool(x)) for x in rec["correct"]])
            for task, rec in read_json_gz(samples_file).items()
            if rec.get("correct") and all(x is not None for x in rec["correct"])}


def chance(samples_files) -> float | None:
    """Accuracy of guessing: the mean over tasks of 1 / choices, from the log-likelihoods."""
    rates = []
    for rec in read_json_gz(samples_files[0]).values():
        counts = [len(ll) for ll in rec.get("loglikelihoods") or [] if ll]
        if counts:
            rates.append(sum(1 / n for n in counts) / len(counts))
    return sum(rates) / len(rates) if rates else None


def compare(cells: list, samples_files: list, settings: dict, trains, is_baseline) -> pd.DataFrame:
    """Every comparison of `stats.comparisons`, paired on the same questions: per task and on
    the mean over tasks, the difference, its interval, whether it excludes zero, McNemar's p."""
    from . import stats

    records = {c.id: correctness(f) for c, f in zip(cells, samples_files)}
    rows = []
    for kind, base, other in stats.comparisons(cells, settings["reference"], trains, is_baseline):
        a, b = records[base.id], records[other.id]
        tasks = [t for t in a if t in b]
        for t in tasks:
            if a[t][0] != b[t][0]:
                raise ValueError(f"cells {base.id} and {other.id} were scored on different "
                                 f"documents of {t}: they cannot be compared question by question")
        result = stats.paired_bootstrap({t: a[t][1] for t in tasks}, {t: b[t][1] for t in tasks},
                                        settings["resamples"], settings["seed"],
                                        settings["confidence"])
        rows += [{"comparison": kind, "base": base.id, "other": other.id, "task": task, **r}
                 for task, r in result.items()]
    return pd.DataFrame(rows, columns=["comparison", "base", "other", "task", "difference", "low",
                                       "high", "significant", "mcnemar_p", "questions"])


def comparisons_markdown(df: pd.DataFrame, confidence: float) -> str:
    """One line per comparison: the mean over tasks (or the only task), its interval, a mark
    where the interval excludes zero; the CSV has every task."""
    head = (f"Paired differences in {METRIC} (other - base) on the same questions, mean over "
            f"tasks, {confidence:.0%} bootstrap interval; * the interval excludes zero; "
            f"McNemar: exact two-sided p\n\n")
    if df.empty:
        return head + "No comparisons: no cells with per-question records.\n"
    per_pair = df.groupby(["comparison", "base", "other"], sort=False)
    lines = []
    for (kind, base, other), rows in per_pair:
        row = rows[rows.task == "mean"].iloc[0] if (rows.task == "mean").any() else rows.iloc[0]
        mark = " *" if row.significant else ""
        lines.append({"comparison": kind, "other": other, "base": base,
                      "difference": f"{row.difference:+.3f}{mark}",
                      "interval": f"[{row.low:+.3f}, {row.high:+.3f}]",
                      "McNemar p": f"{row.mcnemar_p:.3g}", "questions": int(row.questions)})
    return head + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True) + "\n"


def table(df: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Cells x tasks for one metric, in grid order, with the mean over tasks."""
    sub = df[df.metric == metric]
    order = list(dict.fromkeys(sub.cell))
    wide = sub.pivot_table(index="cell", columns="task", values="value", sort=False).reindex(order)
    wide["mean"] = wide.mean(axis=1)
    return wide


def markdown(df: pd.DataFrame, metric: str = METRIC) -> str:
    wide = table(df, metric)
    err = df[df.metric == metric].pivot_table(index="cell", columns="task", values="stderr",
                                              sort=False).reindex(wide.index)
    shown = wide.copy().astype(object)
    for task in err.columns:
        shown[task] = [f"{v:.3f} ± {e:.3f}" if pd.notna(e) else f"{v:.3f}"
                       for v, e in zip(wide[task], err[task])]
    shown["mean"] = [f"{v:.3f}" for v in wide["mean"]]
    head = f"{metric} per task (± standard error); one row per cell (model/compression/recovery)\n\n"
    return head + shown.reset_index().to_markdown(index=False) + "\n"


def plot(df: pd.DataFrame, path: Path, metric: str = METRIC, chance_level: float | None = None,
         dense_cells=()) -> None:
    """Mean accuracy per cell with its standard error, coloured by recovery method (legend),
    the dense rows and the chance level as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    wide = table(df, metric)
    sub = df[df.metric == metric]
    # the mean's standard error, from the tasks' (independent question sets)
    err = sub.groupby("cell", sort=False)["stderr"].apply(
        lambda e: (e.fillna(0) ** 2).sum() ** 0.5 / len(e)).reindex(wide.index)
    recovery_of = df.drop_duplicates("cell").set_index("cell")["recovery"].reindex(wide.index)
    codes, names = pd.factorize(recovery_of)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(wide) + 3) + 3, 5))
    ax.bar(range(len(wide)), wide["mean"], yerr=err, capsize=3, color=[f"C{i}" for i in codes])
    handles = [Patch(color=f"C{i}", label=name) for i, name in enumerate(names)]
    for k, cell in enumerate(c for c in dense_cells if c in wide.index):
        handles.append(ax.axhline(wide.loc[cell, "mean"], color="k", linestyle="--",
                                  linewidth=1, alpha=1 - 0.3 * k, label=f"dense: {cell}"))
    if chance_level is not None:
        handles.append(ax.axhline(chance_level, color="grey", linestyle=":", linewidth=1,
                                  label=f"chance ({chance_level:.2f})"))
    ax.set_xticks(range(len(wide)), wide.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"mean {metric} over tasks (± s.e.)")
    ax.set_ylim(0, 1)
    ax.set_title("Knowledge retained and recovered")
    ax.legend(handles=handles, fontsize=8, title="recovery", title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
