"""The overview table: task groups, seeds pooled, drop from dense, recovery ratio, sizes."""
from functools import partial

import pandas as pd
import pytest

from knowledge_recovery.analysis import aggregate
from knowledge_recovery.evaluation.tasks import result_groups
from knowledge_recovery.pipeline.grid import Cell

TASKS = {"knowledge_country_capital": "world knowledge", "arc_easy": "commonsense",
         "boolq": "reading"}


def _cells():
    lora = {"method": "lora", "id": "lora-r2", "train_id": "lora-r2"}
    return [Cell("m", "dense", "none", settings={"method": "none", "id": "none"}, baseline=True),
            Cell("m", "rtn-w4", "none", settings={"method": "none", "id": "none"}),
            Cell("m", "rtn-w4", "lora-r2", 0, settings=lora, trains=True),
            Cell("m", "rtn-w4", "lora-r2", 1, settings=lora, trains=True)]


# accuracy per task (in TASKS order) of each cell, and its model's compress manifest
ACCS = {"m/dense/none": [0.8, 0.6, 0.7], "m/rtn-w4/none": [0.5, 0.6, 0.4],
        "m/rtn-w4/lora-r2/seed0": [0.7, 0.6, 0.5], "m/rtn-w4/lora-r2/seed1": [0.6, 0.6, 0.6]}
INFO = {("m", "dense"): aggregate.compression_info({"params": 1_000_000}),
        ("m", "rtn-w4"): aggregate.compression_info(
            {"effective_bits_per_weight": 4.25, "sparsity": 0.0, "packed_bytes": 600_000,
             "settings": {"method": "rtn"}})}


def _frame(accs: dict) -> pd.DataFrame:
    rows = []
    for cell in _cells():
        for task, acc in zip(TASKS, accs[cell.id]):
            trained = cell.seed is not None
            rows.append({"cell": cell.id, **cell.axes, "task": task, "metric": "acc",
                         "value": acc, "stderr": 0.01, "documents": 100,
                         "trainable_params": 1000 if trained else 0,
                         "adapter_bytes": 4000 if trained else 0})
    return pd.DataFrame(rows)


def test_groups_pooled_seeds_drop_ratio_and_sizes():
    groups = result_groups(
        [{"name": "knowledge", "type": "probes", "relations": ["country_capital"]},
         {"name": "arc_easy", "type": "lm_eval"},
         {"name": "boolq", "type": "lm_eval"}], TASKS)
    assert groups == TASKS
    table = aggregate.overview(_frame(ACCS), _cells(), groups, INFO)
    assert list(table.recovery) == ["none", "none", "lora-r2"]  # seeds pooled into one row
    dense, compressed, lora = (table.iloc[i] for i in range(3))
    assert dense.overall == pytest.approx(0.7) and dense.bits_per_weight == 16.0
    assert dense.packed_bytes == 2_000_000 and compressed.bits_per_weight == 4.25
    assert compressed.drop_from_dense == pytest.approx(-0.2)
    assert lora.seeds == 2 and lora.overall == pytest.approx(0.6)
    assert lora.overall_sd == pytest.approx(0.0)  # both seeds average 0.6
    assert lora["world knowledge"] == pytest.approx(0.65) and lora.reading == pytest.approx(0.55)
    assert lora.recovery_ratio == pytest.approx((0.6 - 0.5) / (0.7 - 0.5))
    assert pd.isna(compressed.recovery_ratio) and lora.trainable_params == 1000
    md = aggregate.overview_markdown(table)
    assert "world knowledge" in md and "0.600" in md and "4.25" in md
    tex = aggregate.overview_latex(table)
    assert "\\begin{table}" in tex and "\\label{tab:overview}" in tex and "rtn-w4" in tex


def test_task_groups_by_name_and_override():
    from knowledge_recovery.evaluation.tasks import task_group

    assert task_group({"name": "triviaqa", "type": "lm_eval"}) == "world knowledge"
    assert task_group({"name": "wikitext", "type": "lm_eval"}) == "language modelling"
    assert task_group({"name": "mine", "type": "local"}) == "other"
    assert task_group({"name": "mine", "type": "local", "group": "reading"}) == "reading"
    assert result_groups([{"name": "mmlu", "type": "lm_eval"}],
                                   ["mmlu_anatomy"]) == {"mmlu_anatomy": "world knowledge"}


def test_the_summary_plots_are_drawn(tmp_path):
    cells = _cells()
    df = _frame(ACCS)
    table = aggregate.overview(df, cells, TASKS, INFO)
    ratios = aggregate.task_recovery_ratios(df, cells)
    row = ratios.iloc[0]
    # knowledge: (0.65 - 0.5) / 0.3; arc_easy lost nothing (blank); boolq: (0.55 - 0.4) / 0.3
    assert row["knowledge_country_capital"] == pytest.approx(0.5)
    assert pd.isna(row["arc_easy"]) and row["boolq"] == pytest.approx(0.5)
    latency = {c.id: 1.0 + 0.1 * i for i, c in enumerate(cells)}  # the dense row is set to 1
    timed = aggregate.overview(df, cells, TASKS, INFO, latency)
    assert timed.latency_over_dense.iloc[0] == 1.0 and timed.latency_over_dense.notna().all()
    assert table.latency_over_dense.isna().all()  # nothing measured: blank, not 1
    for name, draw, data in (("compression", aggregate.plot_accuracy_vs_compression, table),
                             ("heatmap", aggregate.plot_recovery_heatmap, ratios),
                             ("params", aggregate.plot_pareto, table),
                             ("latency", partial(aggregate.plot_pareto, x="latency_over_dense"),
                              timed),
                             ("no latency", partial(aggregate.plot_pareto, x="latency_over_dense"),
                              table)):
        path = tmp_path / f"{name}.png"
        draw(data, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_accuracy_plot_takes_any_number_of_models(tmp_path):
    """One dense line per model (faded one after another): six models drew a line at a negative
    opacity, and matplotlib refused it (found by the half-precision grid)."""
    rows = [{"cell": f"m{i}/dense/none", "model": f"m{i}", "compression": "dense",
             "recovery": "none", "seed": "", "task": "t", "metric": "acc", "value": 0.5,
             "stderr": 0.01} for i in range(8)]
    path = tmp_path / "mean_acc.png"
    aggregate.plot(pd.DataFrame(rows), path, chance_level=0.25,
                   dense_cells=[r["cell"] for r in rows])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves_say_where_each_adapter_stopped(tmp_path):
    """One adapter stopped on convergence, one ran to its cap: their curves, their rows, the
    table's words and the plot; the distilled one shows its teacher's loss, the other none."""
    from knowledge_recovery.artifacts import write_json

    manifests = {}
    for cell, stopped in zip(_cells()[2:], (75, None)):
        history = {"val_loss": [(0, 5.0), (25, 4.0), (50, 3.9), (75, 3.89)][:4 if stopped else 3],
                   "initial_val_loss": 5.0, "best_val_loss": 3.89 if stopped else 3.9,
                   "best_step": 75 if stopped else 50,
                   **({"stopped_step": stopped, "teacher_val_loss": 3.123} if stopped else {})}
        path = tmp_path / f"{cell.seed}.json"
        write_json(path, {"history": history, "median_step_s": 2.5, "settings": {
            "training": {"steps": 300 if stopped else 50, "batch_size": 4, "seq_len": 128}}})
        manifests[cell.id] = str(path)
    curves, table = aggregate.training_curves(_cells(), manifests)
    assert len(curves) == 7 and list(table.stopped) == ["converged", "cap"]
    assert list(table.steps) == [75, 50] and list(table.cap) == [300, 50]
    shown = aggregate.training_markdown(table, {"window": 50, "min_improvement": 0.01})
    assert "| 75 / 300" in shown and "1.0% over 50 steps" in shown and "3.890" in shown
    assert "dense val loss" in shown and "3.123" in shown
    assert table.dense_val_loss.isna().tolist() == [False, True]
    assert curves.dense_val_loss.notna().sum() == 4
    aggregate.plot_training(curves, tmp_path / "training.png")
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_a_curated_pools_prompts_are_separate_curves():
    """Prompt j's steps follow prompt j-1's, each validated on its own text: three curves, not
    one line with jumps."""
    points = pd.DataFrame({"step": [0, 10, 20, 20, 30, 40, 40, 50, 60],
                           "val_loss": [7, 6, 5.5, 6.5, 6, 5.8, 7.2, 6.4, 6.1]})
    segments = aggregate.curve_segments(points)
    assert [s.step.tolist() for s in segments] == [[0, 10, 20], [20, 30, 40], [40, 50, 60]]
    assert len(aggregate.curve_segments(points.iloc[:3])) == 1


def test_adapters_on_different_texts_each_get_their_dense_line(tmp_path):
    """Two adapters distilled on two texts: the dense model's loss differs by text, so each
    gets its own dashed line (one line at their mean put the dense model where neither is)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    curves = pd.DataFrame({"model": "m", "compression": "c", "cell": ["m/c/a"] * 2 + ["m/c/b"] * 2,
                           "step": [0, 10] * 2, "val_loss": [5, 4, 4, 3.5],
                           "dense_val_loss": [3.9, 3.9, 3.2, 3.2]})
    drawn = []
    original = pyplot.Axes.axhline

    def record(ax, y=0, **kwargs):
        drawn.append(y)
        return original(ax, y, **kwargs)

    pyplot.Axes.axhline = record
    try:
        aggregate.plot_training(curves, tmp_path / "training.png")
    finally:
        pyplot.Axes.axhline = original
    assert sorted(drawn) == [3.2, 3.9]
