"""Aggregate: every cell x task into one CSV, one Markdown table and plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .artifacts import read_json

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


def plot(df: pd.DataFrame, path: Path, metric: str = METRIC) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = table(df, metric)
    recovery_of = df.drop_duplicates("cell").set_index("cell")["recovery"]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(wide) + 3), 4.5))
    colors = [f"C{i}" for i in pd.factorize(recovery_of.reindex(wide.index))[0]]
    ax.bar(range(len(wide)), wide["mean"], color=colors)
    dense = wide["mean"].iloc[0]
    ax.axhline(dense, color="k", linestyle="--", linewidth=1, label=f"{wide.index[0]}")
    ax.set_xticks(range(len(wide)), wide.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"mean {metric} over tasks")
    ax.set_title("Knowledge retained and recovered")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
