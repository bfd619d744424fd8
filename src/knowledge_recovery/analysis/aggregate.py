"""Aggregate: every cell x task into one CSV, one Markdown table and plots."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from knowledge_recovery.analysis.stats import MATCHED_BUDGET_RATIO
from knowledge_recovery.artifacts import read_json, read_json_gz

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


def dense_deltas(cells: list, records: dict, settings: dict) -> dict:
    """{cell id: its mean accuracy over tasks minus its model's dense model's, with the paired
    interval} for every cell but the dense ones (`records`: each cell's `correctness`). These go
    onto the evaluate runs in MLflow (`delta_vs_dense`, `_low`, `_high`)."""
    from knowledge_recovery.analysis import stats

    dense, _ = stats.baselines(cells)
    out = {}
    for c in cells:
        d = dense.get(c.model)
        if d is None or d.id == c.id:
            continue
        a, b = records[d.id], records[c.id]
        tasks = [t for t in a if t in b]
        result = stats.paired_bootstrap({t: a[t][1] for t in tasks}, {t: b[t][1] for t in tasks},
                                        settings["resamples"], settings["seed"],
                                        settings["confidence"])
        mean = stats.on_the_mean(result)
        out[c.id] = {"delta_vs_dense": mean["difference"], "delta_vs_dense_low": mean["low"],
                     "delta_vs_dense_high": mean["high"]}
    return out


def compare(cells: list, records: dict, settings: dict, budget=None) -> pd.DataFrame:
    """Every comparison of `stats.comparisons`, paired on the same questions (`records`: each
    cell's `correctness`, by cell id): per task and on
    the mean over tasks, the difference, its interval, whether it excludes zero, McNemar's p.
    Where an entry was trained with several seeds, its comparisons are also pooled over them
    (`stats.pooled_bootstrap`; base and other named without the seed, `seeds` > 1).
    `budget(cell)`: its trainable parameters (the reference comparison's budget); the larger
    of a pair's budgets over the smaller is its `budget_ratio`."""
    from knowledge_recovery.analysis import stats

    rows, pooled, ratios = [], {}, {}
    for kind, base, other in stats.comparisons(cells, settings["reference"], budget):
        a, b = records[base.id], records[other.id]
        tasks = [t for t in a if t in b]
        for t in tasks:
            if a[t][0] != b[t][0]:
                raise ValueError(f"cells {base.id} and {other.id} were scored on different "
                                 f"documents of {t}: they cannot be compared question by question")
        pair = ({t: a[t][1] for t in tasks}, {t: b[t][1] for t in tasks})
        pooled.setdefault((kind, _entry(base), _entry(other)), []).append(pair)
        result = stats.paired_bootstrap(*pair, settings["resamples"], settings["seed"],
                                        settings["confidence"])
        reference = {stats.reference_kind(settings["reference"], m) for m in (True, False)}
        ratio = (stats.budget_ratio(budget(base), budget(other))
                 if budget and kind in reference else None)
        ratios[(kind, _entry(base), _entry(other))] = ratio
        rows += [{"comparison": kind, "base": base.id, "other": other.id, "seeds": 1,
                  "budget_ratio": ratio, "task": task, **r} for task, r in result.items()]
    for (kind, base, other), pairs in pooled.items():
        if len(pairs) < 2:
            continue
        result = stats.pooled_bootstrap(pairs, settings["resamples"], settings["seed"],
                                        settings["confidence"])
        rows += [{"comparison": kind, "base": base, "other": other, "seeds": len(pairs),
                  "budget_ratio": ratios[(kind, base, other)], "task": task, **r}
                 for task, r in result.items()]
    return pd.DataFrame(rows, columns=["comparison", "base", "other", "seeds", "budget_ratio",
                                       "task",
                                       "difference", "low", "high", "significant", "mcnemar_p",
                                       "questions"])


def _entry(cell) -> str:
    """A cell's id without its seed: the entry its seeds are pooled under."""
    return f"{cell.model}/{cell.compression}/{cell.recovery}"


DEPLOYMENT_COLUMNS = ["model", "compression", "recovery", "target", "bytes_on_disk",
                      "base_bytes_on_disk", "logits_distance_max", "evaluated_acc",
                      "deployed_acc", "difference", "low", "high", "significant", "mcnemar_p",
                      "questions"]


def deployment_table(deployed: list, manifests: list, samples: list, cells: list,
                     cell_samples: list, settings: dict) -> pd.DataFrame:
    """Per deployed model (`jobs.Deployment`s): its size on disk (a recovery cell's: its prompt
    cache; the model it runs on is its compressed cell's), the logits distance to the evaluated
    model, and its accuracy beside the evaluated cell's (a compressed cell's untrained one),
    paired on the same questions (mean over tasks, bootstrap interval)."""
    from knowledge_recovery.analysis import stats

    _, untrained = stats.baselines(cells)
    by_id = {c.id: c for c in cells}
    files = {c.id: f for c, f in zip(cells, cell_samples)}
    rows = []
    for (model, comp, target, unit_), manifest, deployed_samples in zip(deployed, manifests,
                                                                         samples):
        found = read_json(manifest)
        base = (untrained.get((model, comp)) if unit_ is None
                else by_id.get(f"{model}/{comp}/{unit_}"))
        row = {"model": model, "compression": comp, "recovery": unit_ or "",
               "target": target, "bytes_on_disk": found["bytes_on_disk"],
               "base_bytes_on_disk": found.get("base_bytes_on_disk"),
               "logits_distance_max": found["logits_distance"]["max"]}
        if base is not None:
            a, b = correctness(files[base.id]), correctness(deployed_samples)
            tasks = [t for t in a if t in b and a[t][0] == b[t][0]]
            if tasks:
                pair = ({t: a[t][1] for t in tasks}, {t: b[t][1] for t in tasks})
                mean = stats.on_the_mean(stats.paired_bootstrap(
                    *pair, settings["resamples"], settings["seed"], settings["confidence"]))
                row.update(evaluated_acc=sum(sum(v) / len(v) for v in pair[0].values()) / len(tasks),
                           deployed_acc=sum(sum(v) / len(v) for v in pair[1].values()) / len(tasks),
                           **mean)
        rows.append(row)
    return pd.DataFrame(rows, columns=DEPLOYMENT_COLUMNS)


def not_deployed(deployed: list, cells: list) -> list[str]:
    """Cells of deployed compressed models that are not deployed themselves: their recovery
    changes the weights, or its prompt depends on the input (deployment/openvino.py)."""
    done = {(d.model, d.compression, d.unit) for d in deployed}
    exported = {(d.model, d.compression) for d in deployed if d.unit is None}
    return [c.id for c in cells if (c.model, c.compression) in exported and c.train_unit
            and (c.model, c.compression, c.recovery_unit) not in done]


def deployment_markdown(df: pd.DataFrame, confidence: float, skipped: list[str] = ()) -> str:
    head = (f"Deployed models: bytes on disk (a recovery cell: its prompt cache, in front of its "
            f"compressed model's export), the largest relative L2 distance of the deployed "
            f"model's logits to the evaluated (fake-quant) model's, and mean {METRIC} of each, "
            f"paired on the same questions ({confidence:.0%} bootstrap interval; * excludes "
            f"zero)\n\n")
    if df.empty:
        return head + "No deployed models in this grid (`deploy:` on a compression entry).\n"
    shown = pd.DataFrame({
        "model": df.model, "compression": df.compression,
        "recovery": [r if isinstance(r, str) and r else "none" for r in df.recovery],
        "target": df.target,
        "MB on disk": [f"{v / 1e6:,.1f}" if v >= 1e5 else f"{v / 1e6:.3f}"
                       for v in df.bytes_on_disk],
        "logits distance": [f"{v:.2e}" for v in df.logits_distance_max],
        "evaluated acc": [f"{v:.3f}" if pd.notna(v) else "" for v in df.evaluated_acc],
        "deployed acc": [f"{v:.3f}" if pd.notna(v) else "" for v in df.deployed_acc],
        "difference": ["" if pd.isna(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if s else "")
                       for d, lo, hi, s in zip(df.difference, df.low, df.high, df.significant)]})
    tail = ("" if not skipped else
            "\nNot deployed (the recovery changes the weights, or its prompt depends on the "
            "input): " + ", ".join(skipped) + "\n")
    return head + shown.to_markdown(index=False, disable_numparse=True) + "\n" + tail


LATENCY_COLUMNS = ["model", "batch", "variant", "prefill_ms", "prefill_cpu_ms", "decode_ms",
                   "decode_cpu_ms", "decode_tokens_per_s", "prefill_x", "decode_x"]


def deployment_latency_table(manifests: list) -> pd.DataFrame:
    """The deploy_latency steps' rows (one manifest per model), one table."""
    rows = [{"model": found["model"], **row} for found in map(read_json, manifests)
            for row in found["rows"]]
    return pd.DataFrame(rows, columns=LATENCY_COLUMNS)


def deployment_latency_markdown(df: pd.DataFrame, settings: dict) -> str:
    if df.empty:
        return ""
    shown = pd.DataFrame({
        "model": df.model, "batch": df.batch, "variant": df.variant,
        "prefill ms (CPU)": [f"{w:,.1f} ({c:,.1f})" for w, c in zip(df.prefill_ms,
                                                                   df.prefill_cpu_ms)],
        "decode ms/token (CPU)": [f"{w:,.2f} ({c:,.2f})" for w, c in zip(df.decode_ms,
                                                                         df.decode_cpu_ms)],
        "decode tokens/s": [f"{v:,.1f}" for v in df.decode_tokens_per_s],
        "prefill x": [f"{v:.2f}" for v in df.prefill_x],
        "decode x": [f"{v:.2f}" for v in df.decode_x]})
    return (f"\nLatency, side by side in one job on this machine ({settings['seq_len']}-token "
            f"inputs after the prompt, if any; {settings['new_tokens']} decoded tokens; medians "
            f"of {settings['rounds']} alternating rounds; wall ms, CPU ms of all threads in "
            f"brackets; x: over the PyTorch dense model; `runtime defaults`: OpenVINO's CPU "
            f"defaults, not the model the tables score)\n\n"
            + shown.to_markdown(index=False, disable_numparse=True) + "\n")


def comparisons_markdown(df: pd.DataFrame, confidence: float) -> str:
    """One line per comparison: the mean over tasks (or the only task), its interval, a mark
    where the interval excludes zero; the CSV has every task."""
    head = (f"Paired differences in {METRIC} (other - base) on the same questions, mean over "
            f"tasks, {confidence:.0%} bootstrap interval; * the interval excludes zero; "
            f"McNemar: exact two-sided p; seeds: training seeds pooled (a row without a seed in "
            f"its ids: seeds and questions resampled); budget ratio: the larger trainable "
            f"parameter count over the smaller (matched: at most {MATCHED_BUDGET_RATIO}x)\n\n")
    if df.empty:
        return head + "No comparisons: no cells with per-question records.\n"
    per_pair = df.groupby(["comparison", "base", "other", "seeds"], sort=False)
    lines = []
    for (kind, base, other, seeds), rows in per_pair:
        ratio = rows.budget_ratio.iloc[0] if "budget_ratio" in rows else None
        row = rows[rows.task == "mean"].iloc[0] if (rows.task == "mean").any() else rows.iloc[0]
        mark = " *" if row.significant else ""
        lines.append({"comparison": kind, "other": other, "base": base,
                      "difference": f"{row.difference:+.3f}{mark}",
                      "interval": f"[{row.low:+.3f}, {row.high:+.3f}]",
                      "McNemar p": f"{row.mcnemar_p:.3g}", "questions": int(row.questions),
                      "seeds": int(seeds),
                      "budget ratio": "" if pd.isna(ratio) else f"{ratio:.2f}x"})
    return head + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True) + "\n"


def table(df: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Cells x tasks for one metric, in grid order, with the mean over tasks."""
    sub = df[df.metric == metric]
    order = list(dict.fromkeys(sub.cell))
    wide = sub.pivot_table(index="cell", columns="task", values="value", sort=False).reindex(order)
    wide["mean"] = wide.mean(axis=1)
    return wide


def mean_stderr(rows: pd.DataFrame) -> pd.Series:
    """Per cell, the standard error of its mean over tasks, from the tasks' (independent
    question sets)."""
    return rows.groupby("cell", sort=False)["stderr"].apply(
        lambda e: (e.fillna(0) ** 2).sum() ** 0.5 / len(e))


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
    err = mean_stderr(df[df.metric == metric]).reindex(wide.index)
    recovery_of = df.drop_duplicates("cell").set_index("cell")["recovery"].reindex(wide.index)
    codes, names = pd.factorize(recovery_of)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(wide) + 3) + 3, 5))
    ax.bar(range(len(wide)), wide["mean"], yerr=err, capsize=3, color=[f"C{i}" for i in codes])
    handles = [Patch(color=f"C{i}", label=name) for i, name in enumerate(names)]
    for k, cell in enumerate(c for c in dense_cells if c in wide.index):
        handles.append(ax.axhline(wide.loc[cell, "mean"], color="k", linestyle="--",
                                  linewidth=1, alpha=1 / (1 + 0.6 * k),  # any number of models
                                  label=f"dense: {cell}"))
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


GROUP_ORDER = ["world knowledge", "commonsense", "reading", "language modelling", "other"]


def compression_info(manifest: dict) -> dict:
    """Bits per weight, sparsity and packed size of a model, from its compress manifest; a
    dense model is counted at the 16-bit baseline the compressed sizes are measured against."""
    if "effective_bits_per_weight" in manifest:
        return {"method": manifest["settings"]["method"],
                "bits_per_weight": manifest["effective_bits_per_weight"],
                "sparsity": manifest["sparsity"], "packed_bytes": manifest["packed_bytes"]}
    return {"method": "dense", "bits_per_weight": 16.0, "sparsity": 0.0,
            "packed_bytes": 2 * manifest["params"]}


def overview(df: pd.DataFrame, cells: list, groups: dict, info: dict,
             latency: dict | None = None) -> pd.DataFrame:
    """One row per model x compression x recovery, seeds pooled (mean, and the spread of the
    overall mean over seeds): accuracy per task group and overall (mean over tasks), the drop
    from dense, the recovery ratio (recovered - compressed) / (dense - compressed), trainable
    parameters, adapter bytes, bits per weight, sparsity and packed bytes, and forward latency
    over the dense model's. `info` maps (model, compression) to `compression_info`; `latency`
    maps cell id to its measured latency over the dense model's (the dense model: 1)."""
    sub = df[df.metric == METRIC].assign(group=lambda d: d.task.map(groups).fillna("other"))
    by_group = sub.pivot_table(index="cell", columns="group", values="value", aggfunc="mean",
                               sort=False)
    names = [g for g in GROUP_ORDER if g in by_group] + sorted(set(by_group) - set(GROUP_ORDER))
    overall = sub.groupby("cell", sort=False)["value"].mean()
    stderr = mean_stderr(sub)
    extra = df.drop_duplicates("cell").set_index("cell")
    rows = []
    for c in cells:
        if c.id not in overall.index:
            continue
        rows.append({"model": c.model, "compression": c.compression, "recovery": c.recovery,
                     "trained": bool(c.trains), "dense": bool(c.baseline) and not c.trains,
                     **{g: by_group.loc[c.id, g] for g in names}, "overall": overall[c.id],
                     "overall_se": stderr[c.id],
                     "trainable_params": extra.loc[c.id, "trainable_params"],
                     "adapter_bytes": extra.loc[c.id, "adapter_bytes"],
                     "latency_over_dense": 1.0 if c.baseline and not c.trains and latency
                     else (latency or {}).get(c.id, float("nan"))})
    frame = pd.DataFrame(rows)
    keys = ["model", "compression", "recovery"]
    pooled = frame.groupby(keys, sort=False).agg(
        {**{k: "first" for k in ("trained", "dense")}, **{g: "mean" for g in names},
         "overall": ["mean", "std", "count"], "overall_se": "mean", "trainable_params": "mean",
         "adapter_bytes": "mean", "latency_over_dense": "mean"})
    pooled.columns = [f"overall_{b}" if a == "overall" else a for a, b in pooled.columns]
    # seeds pooled: overall_se is their mean standard error, overall_sd their spread
    pooled = pooled.rename(columns={"overall_mean": "overall", "overall_std": "overall_sd",
                                    "overall_count": "seeds"}).reset_index()
    dense = {r.model: r.overall for r in pooled.itertuples() if r.dense}
    untrained = {}
    for r in pooled.itertuples():
        if not r.trained:
            untrained.setdefault((r.model, r.compression), r.overall)
    pooled["drop_from_dense"] = [r.overall - dense[r.model] if r.model in dense else None
                                 for r in pooled.itertuples()]

    def ratio(r):
        d, base = dense.get(r.model), untrained.get((r.model, r.compression))
        if not r.trained or d is None or base is None or d - base <= 0:
            return None
        return (r.overall - base) / (d - base)
    pooled["recovery_ratio"] = [ratio(r) for r in pooled.itertuples()]
    for key in ("method", "bits_per_weight", "sparsity", "packed_bytes"):
        pooled[key] = [info[(r.model, r.compression)][key] for r in pooled.itertuples()]
    pooled = pooled.rename(columns={"method": "compression_method"})
    columns = [*keys, "compression_method", "seeds", *names, "overall", "overall_se",
               "overall_sd", "drop_from_dense", "recovery_ratio", "trainable_params",
               "adapter_bytes", "bits_per_weight", "sparsity", "packed_bytes", "latency_over_dense"]
    return pooled[columns]


_OVERVIEW_FIXED = {"model", "compression", "compression_method", "recovery", "seeds", "overall",
                   "overall_se", "overall_sd", "drop_from_dense", "recovery_ratio",
                   "trainable_params", "adapter_bytes", "bits_per_weight", "sparsity",
                   "packed_bytes", "latency_over_dense"}


def overview_shown(table: pd.DataFrame) -> pd.DataFrame:
    """The overview with readable numbers (for Markdown and LaTeX)."""
    def num(v, fmt):
        return "" if v is None or pd.isna(v) else format(v, fmt)
    groups = [c for c in table.columns if c not in _OVERVIEW_FIXED]
    out = table[["model", "compression", "recovery", "seeds"]].copy()
    for g in groups:
        out[g] = [num(v, ".3f") for v in table[g]]
    out["overall"] = [num(v, ".3f") + (f" ± {sd:.3f}" if n > 1 and pd.notna(sd) else "")
                      for v, sd, n in zip(table.overall, table.overall_sd, table.seeds)]
    out["drop from dense"] = [num(v, "+.3f") for v in table.drop_from_dense]
    out["recovery ratio"] = [num(v, ".2f") for v in table.recovery_ratio]
    out["trainable params"] = [num(v, ",.0f") for v in table.trainable_params]
    out["adapter kB"] = [num(v / 1e3, ",.1f") if v else "" for v in table.adapter_bytes]
    out["bits/weight"] = [num(v, ".2f") for v in table.bits_per_weight]
    out["sparsity"] = [num(v, ".0%") for v in table.sparsity]
    out["packed MB"] = [num(v / 1e6, ",.1f") for v in table.packed_bytes]
    out["latency / dense"] = [num(v, ".2f") for v in table.latency_over_dense]
    return out


def overview_markdown(table: pd.DataFrame) -> str:
    head = (f"Mean {METRIC} per task group and over all tasks (± spread over seeds where there "
            f"are several); drop from dense; recovery ratio (recovered - compressed) / (dense - "
            f"compressed); trainable parameters and adapter size; bits per weight, sparsity and "
            f"packed size of the compressed model (dense: the 16-bit baseline); forward latency "
            f"at batch 1 over the dense model's, measured side by side (fake-quantized weights "
            f"run as float: this is what recovery adds, not what compression saves)\n\n")
    return head + overview_shown(table).to_markdown(index=False, disable_numparse=True) + "\n"


def overview_latex(table: pd.DataFrame) -> str:
    shown = overview_shown(table)
    return shown.to_latex(index=False, escape=True, column_format="lll" + "r" * (shown.shape[1] - 3),
                          caption=f"Mean {METRIC} per task group and overall, recovery ratio and "
                                  f"model size per model, compression and recovery.",
                          label="tab:overview").replace("±", r"$\pm$")


def figure(path: Path, draw, panels: int, title: str, width: float = 5.0,
            empty: str = "nothing to draw") -> None:
    """One PNG of `panels` side-by-side axes; `draw(ax, i)` fills each. With no panel, one axes
    that says `empty`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(panels, 1), figsize=(width * max(panels, 1) + 1.5, 4.5),
                             squeeze=False)
    for i, ax in enumerate(axes[0]):
        if panels:
            draw(ax, i)
        else:
            ax.text(0.5, 0.5, empty, ha="center")
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")  # written to a temporary name: say the format
    plt.close(fig)


def plot_accuracy_vs_compression(table: pd.DataFrame, path: Path) -> None:
    """Per model: overall accuracy against bits per weight (the storage cost, which counts
    pruning and quantization alike); colour: recovery, marker: compression method, lines only
    between levels of one method; the dense model as a dashed line. Interval bars: the standard
    error of the mean over tasks (or the spread over seeds, where larger)."""
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(table.model))
    markers = "osD^vP*X"

    def draw(ax, i):
        sub = table[table.model == models[i]]
        colours = {r: f"C{k}" for k, r in enumerate(dict.fromkeys(sub.recovery))}
        methods = {m: markers[k % len(markers)] for k, m in
                   enumerate(dict.fromkeys(sub.compression_method[sub.compression_method != "dense"]))}
        for (rec, method), rows in sub.groupby(["recovery", "compression_method"], sort=False):
            if method == "dense":
                ax.axhline(rows.overall.iloc[0], color="k", linestyle="--", linewidth=1)
                continue
            rows = rows.sort_values("bits_per_weight")
            err = rows[["overall_se", "overall_sd"]].max(axis=1).fillna(0)
            # recoveries side by side at one level (a small offset on the log axis)
            shift = 2 ** (0.03 * (list(colours).index(rec) - (len(colours) - 1) / 2))
            ax.errorbar(rows.bits_per_weight * shift, rows.overall, yerr=err, marker=methods[method],
                        capsize=3, color=colours[rec], linestyle="-" if len(rows) > 1 else "none")
        handles = [Line2D([], [], color=c, marker="o", label=r) for r, c in colours.items()]
        handles += [Line2D([], [], color="grey", marker=m, linestyle="none", label=name)
                    for name, m in methods.items()]
        handles.append(Line2D([], [], color="k", linestyle="--", label="dense"))
        ax.legend(handles=handles, fontsize=7, title="recovery / compression", title_fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per weight (16-bit baseline)")
        ax.set_ylabel(f"mean {METRIC} over tasks")
        ax.set_title(models[i])
    figure(path, draw, len(models), "Accuracy against compression level")


def task_recovery_ratios(df: pd.DataFrame, cells: list) -> pd.DataFrame:
    """Per trained recovery of a compressed model (seeds averaged) and task: (recovered -
    compressed) / (dense - compressed); empty where the task lost nothing to compression."""
    acc = df[df.metric == METRIC].pivot_table(index="cell", columns="task", values="value",
                                              sort=False)
    from knowledge_recovery.analysis.stats import baselines

    dense, untrained = baselines(cells)
    rows = []
    for c in cells:
        base = untrained.get((c.model, c.compression))
        if not c.trains or c.model not in dense or base is None or base is dense[c.model] \
                or c.id not in acc.index:
            continue
        lost = acc.loc[dense[c.model].id] - acc.loc[base.id]
        ratio = ((acc.loc[c.id] - acc.loc[base.id]) / lost).where(lost > 0)
        rows.append({"model": c.model, "compression": c.compression, "recovery": c.recovery,
                     **ratio.to_dict()})
    if not rows:
        return pd.DataFrame(columns=["model", "compression", "recovery"])
    return pd.DataFrame(rows).groupby(["model", "compression", "recovery"], sort=False).mean() \
        .reset_index()


def plot_recovery_heatmap(ratios: pd.DataFrame, path: Path) -> None:
    """Recovery ratio per task (columns) and recovery (rows), one panel per model and
    compression; blank where the task lost nothing."""
    import numpy as np

    units = list(dict.fromkeys(zip(ratios.model, ratios.compression)))
    tasks = [c for c in ratios.columns if c not in ("model", "compression", "recovery")]

    def draw(ax, i):
        model, comp = units[i]
        sub = ratios[(ratios.model == model) & (ratios.compression == comp)]
        values = sub[tasks].to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=-1, vmax=1.5,
                          aspect="auto")
        for (r, t), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(t, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(sub)), sub.recovery, fontsize=7)
        ax.set_title(f"{model} / {comp}", fontsize=9)
        ax.figure.colorbar(image, ax=ax, label="recovery ratio (1 = back to dense)")
    figure(path, draw, len(units), "Recovery ratio per task (blank: the task lost nothing)",
            width=max(4.0, 0.6 * len(tasks) + 2), empty="no trained recovery of a compressed model")


def plot_pareto(table: pd.DataFrame, path: Path, x: str = "trainable_params") -> None:
    """Per compressed model: accuracy against a cost, the frontier drawn through the rows no
    cheaper row beats. `x`: "trainable_params" (the recovery's; untrained rows at 1) or
    "latency_over_dense" (forward latency over the dense model's, measured side by side)."""
    label, title, log = {
        "trainable_params": ("trainable parameters (untrained at 1)",
                             "Accuracy against extra parameters", True),
        "latency_over_dense": ("forward latency at batch 1 / dense model's",
                               "Accuracy against measured latency", False)}[x]
    costs = table[x].clip(lower=1) if x == "trainable_params" else table[x]
    table = table.assign(cost=costs)
    # a panel per compressed model with a trained recovery to weigh against its cost
    wanted = (table.trainable_params > 0) & table.cost.notna()
    units = [u for u in dict.fromkeys(zip(table.model, table.compression))
             if wanted[(table.model == u[0]) & (table.compression == u[1])].any()]

    def draw(ax, i):
        model, comp = units[i]
        sub = table[(table.model == model) & (table.compression == comp)
                    & table.cost.notna()].sort_values("cost")
        for k, r in enumerate(sub.itertuples()):
            ax.scatter(r.cost, r.overall, color=f"C{k}", label=r.recovery)
        best, frontier = -1.0, []
        for xv, yv in zip(sub.cost, sub.overall):
            if yv > best:
                frontier.append((xv, yv))
                best = yv
        ax.step(*zip(*frontier), where="post", color="grey", linewidth=1, alpha=0.6)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"mean {METRIC} over tasks")
        ax.set_title(f"{model} / {comp}", fontsize=9)
        ax.legend(fontsize=7)
    figure(path, draw, len(units), title,
            empty="no trained recovery" if x == "trainable_params" else
            "no latency measured (displacement.enabled: false)")


SELECTION_COLUMNS = ["cell", "tasks", "questions", "selected_per_prompt", "selected_share",
                     "selected_top_share", "selection_entropy", "max_entropy", "selection_mi",
                     "trained_per_prompt"]


def selection_table(cells: list, samples_files: list, train_manifests: dict) -> pd.DataFrame:
    """Per cell that chooses a prompt per question (IDP's attention and random selection, not
    its oracle): how it spread the questions over its prompts, over all its tasks, and the
    mutual information between a question's task (a group's leaf: a probe relation) and its
    prompt (`stats.selection_diagnostics`); for a routed pool, also how many training
    examples each prompt was routed (its train manifest's `history.routing`, summed): a
    prompt that trained on few serves its questions badly."""
    from knowledge_recovery.analysis.stats import question_groups, selection_diagnostics

    rows = []
    for cell, path in zip(cells, samples_files):
        m = cell.settings.get("pool_size")
        if not m or cell.settings.get("selection") == "oracle":
            continue
        choices, groups = [], []
        for task, rec in read_json_gz(path).items():
            prompts = rec.get("prompt")
            if not prompts or any(p is None for p in prompts):
                continue
            choices += prompts
            groups += question_groups(task, rec["doc_id"])
        if choices:
            found = selection_diagnostics(choices, groups, m)
            rows.append({"cell": cell.id, "tasks": len(set(groups)), "questions": len(choices),
                         **found, "max_entropy": math.log2(m),
                         "trained_per_prompt": _routed_examples(train_manifests.get(cell.id), m)})
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def _routed_examples(train_manifest, m: int) -> list[int] | None:
    """The training examples routed to each prompt over every step; None where training did
    not route (curated, joint) or the manifest is absent."""
    routing = read_json(train_manifest)["history"].get("routing") if train_manifest else None
    if not routing:
        return None
    return [sum(step[j] for step in routing) for j in range(m)]


def selection_markdown(df: pd.DataFrame) -> str:
    head = ("How each selector spread the questions over its prompts: share per prompt, "
            "entropy of the shares (bits; the maximum, log2 m, when even; 0 when one prompt "
            "takes every question), and the mutual information between a question's task "
            "(or probe relation) and its prompt (bits; 0 when the choice ignores the task); "
            "for a routed pool, the training examples routed to each prompt\n\n")
    if df.empty:
        return head + "No cell chooses a prompt per question.\n"
    shown = pd.DataFrame({
        "cell": df.cell, "tasks": df.tasks, "questions": df.questions,
        "share per prompt": [" / ".join(f"{s:.2f}" for s in shares) for shares in df.selected_share],
        "entropy": [f"{e:.2f} of {x:.2f}" for e, x in zip(df.selection_entropy, df.max_entropy)],
        "MI(task; prompt)": [f"{v:.3f}" for v in df.selection_mi],
        "trained per prompt": [" / ".join(map(str, t)) if isinstance(t, list) else "-"
                               for t in df.trained_per_prompt]})
    return head + shown.to_markdown(index=False, disable_numparse=True) + "\n"


# ---------------------------------------------------------------- training curves (train step)
TRAINING_COLUMNS = ["cell", "model", "compression", "recovery", "seed", "step", "val_loss"]


def training_curves(cells: list, train_manifests: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every validation point of every trained adapter, one row per adapter): the step cap,
    the steps it ran, whether it stopped on convergence (`training.stop_when`), its validation
    loss before training and at its best step, the dense model's on the same windows (a
    distilled adapter's teacher; None otherwise), and its median step time. Evaluation variants of
    one adapter share its row (the first cell that names it)."""
    points, rows, seen = [], [], set()
    for c in cells:
        path = train_manifests.get(c.id)
        if path is None or path in seen:
            continue
        seen.add(path)
        manifest = read_json(path)
        history, training = manifest["history"], manifest["settings"]["training"]
        axes = {"cell": c.id, **c.axes}
        points += [{**axes, "step": s, "val_loss": v,
                    "dense_val_loss": history.get("teacher_val_loss")}
                   for s, v in history["val_loss"]]
        stopped = history.get("stopped_step")
        rows.append({**axes, "cap": training["steps"],
                     "steps": stopped or history["val_loss"][-1][0],
                     "stopped": "converged" if stopped else "cap",
                     "tokens_per_step": training["batch_size"] * training["seq_len"],
                     "initial_val_loss": history["initial_val_loss"],
                     "best_val_loss": history["best_val_loss"], "best_step": history["best_step"],
                     "dense_val_loss": history.get("teacher_val_loss"),
                     "median_step_s": manifest.get("median_step_s")})
    return (pd.DataFrame(points, columns=[*TRAINING_COLUMNS, "dense_val_loss"]),
            pd.DataFrame(rows, columns=[*TRAINING_COLUMNS[:5], "cap", "steps", "stopped",
                                        "tokens_per_step", "initial_val_loss", "best_val_loss",
                                        "best_step", "dense_val_loss", "median_step_s"]))


def training_markdown(table: pd.DataFrame, stop_when: dict | None) -> str:
    rule = (f"stopped once the best validation loss improved by less than "
            f"{stop_when['min_improvement']:.1%} over {stop_when['window']} steps, or at the cap"
            if stop_when else "trained to the cap (no `training.stop_when`)")
    head = (f"Training of each adapter: validation loss (next-token, on held-out windows of "
            f"the recovery text) before training and at its best step, which the adapter keeps; "
            f"{rule}.\n\n")
    if table.empty:
        return head + "No trained adapter in this grid.\n"
    shown = pd.DataFrame({
        "cell": table.cell, "steps / cap": [f"{s} / {c}" for s, c in zip(table.steps, table.cap)],
        "stopped": table.stopped, "tokens a step": table.tokens_per_step,
        "val loss before": table.initial_val_loss.map("{:.3f}".format),
        "best val loss": table.best_val_loss.map("{:.3f}".format), "best step": table.best_step,
        "dense val loss": table.dense_val_loss.map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "s a step": table.median_step_s.map(lambda v: "" if pd.isna(v) else f"{v:.2f}")})
    return head + shown.to_markdown(index=False, disable_numparse=True) + "\n"


def curve_segments(points: pd.DataFrame) -> list[pd.DataFrame]:
    """One adapter's validation points as the curves they are: a curated pool's prompts train
    one after another, each validated on its own text, so a step that does not advance starts
    the next prompt's curve (drawn joined, the jump between texts looked like training)."""
    start = (points.step.diff() <= 0).cumsum().values
    return [segment for _, segment in points.groupby(start, sort=True)]


def plot_training(curves: pd.DataFrame, path: Path) -> None:
    """Per model and compression: each adapter's validation loss against its step, and the
    dense model's on the same windows where the adapters were distilled from it."""
    panels = list(curves.groupby(["model", "compression"], sort=False)) if not curves.empty else []

    def draw(ax, i):
        (model, compression), group = panels[i]
        # what the adapters distil towards: one line, or one per adapter where they trained
        # on different texts (the dense model's loss differs by text)
        one_dense = group.dense_val_loss.dropna().nunique() == 1
        for cell, points in group.groupby("cell", sort=False):
            color = None
            for segment in curve_segments(points):
                line, = ax.plot(segment.step, segment.val_loss, marker=".", color=color,
                                label=None if color else cell.split("/", 2)[2])
                color = line.get_color()
            dense = points.dense_val_loss.dropna()
            if not one_dense and not dense.empty:
                ax.axhline(dense.iloc[0], color=color, linestyle="--", linewidth=1)
        if one_dense:
            ax.axhline(group.dense_val_loss.dropna().iloc[0], color="black", linestyle="--",
                       linewidth=1, label="dense model")
        elif group.dense_val_loss.notna().any():
            ax.plot([], [], color="gray", linestyle="--", linewidth=1,
                    label="dense model, on each adapter's text")
        ax.set(title=f"{model} / {compression}", xlabel="step", ylabel="validation loss")
        ax.legend(fontsize=7)

    figure(path, draw, len(panels), "Validation loss while training",
           empty="no trained adapter")
