"""The question-level displacement analysis on samples files with known answers."""
import yaml
from conftest import REPO

from knowledge_recovery.analysis import aggregate, displacement
from knowledge_recovery.artifacts import write_json_gz
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.grid import cells

QUESTIONS = 400


def _grid():
    config = load_config(yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()),
                         check_models=False)
    return cells(config)


def _role(cell):
    if cell.baseline:
        return "dense"
    return cell.id.split("/", 2)[2].split("/")[0]


def _write(tmp_path, grid_cells, right: dict) -> list:
    files = []
    for i, c in enumerate(grid_cells):
        correct = right.get(_role(c), right["none"])  # unlisted: as compressed
        f = tmp_path / f"{i}.json.gz"
        write_json_gz(f, {"probes": {"doc_id": list(range(QUESTIONS)), "correct": correct}})
        files.append(f)
    return files


def _answers(dense_right, lost, gained, recovered_by: dict, broken_by: dict) -> dict:
    """Correctness per role: the dense model right on the first `dense_right` questions, the
    compressed one loses the first `lost` of them and gains `gained` others; each recovery
    brings back its range of the lost ones and breaks its range of the kept ones."""
    dense = [int(q < dense_right) for q in range(QUESTIONS)]
    compressed = [int(lost <= q < dense_right or dense_right <= q < dense_right + gained)
                  for q in range(QUESTIONS)]
    out = {"dense": dense, "none": compressed}
    for role in set(recovered_by) | set(broken_by):
        a, b = recovered_by.get(role, (0, 0))
        c, d = broken_by.get(role, (0, 0))
        out[role] = [int((compressed[q] and not c <= q < d) or a <= q < b)
                     for q in range(QUESTIONS)]
    return out


def _analyse(tmp_path, right):
    grid_cells = _grid()
    files = _write(tmp_path, grid_cells, right)
    settings = {"resamples": 2000, "seed": 0, "confidence": 0.95, "reference": "lora"}
    records = {c.id: aggregate.correctness(f) for c, f in zip(grid_cells, files)}
    compared = aggregate.compare(grid_cells, records, settings)
    rows, recovered = displacement.example_level(grid_cells, records)
    pairs = displacement.overlap(rows, recovered)
    return rows, pairs, displacement.reading(rows, pairs, compared, 0.95, "lora")


def test_counts_overlap_and_a_displaced_reading(tmp_path):
    # dense right on 300; compression loses 0..99; LoRA brings back 0..79, IDP 20..99 (and its
    # oracle 0..99); IDP breaks 100..104 of the kept ones
    right = _answers(300, 100, 0, {"lora-r2": (0, 80), "idp-m2-n4-routed": (20, 100),
                                   "idp-m2-n4-routed-oracle": (0, 100)},
                     {"idp-m2-n4-routed": (100, 105)})
    rows, pairs, text = _analyse(tmp_path, right)
    by = {r.cell.split("/", 2)[2]: r for r in rows.itertuples()}
    assert set(by) == {"lora-r2/seed0", "idp-m2-n4-routed/seed0", "idp-m2-n4-routed-oracle/seed0"}
    lora, idp = by["lora-r2/seed0"], by["idp-m2-n4-routed/seed0"]
    assert (lora.lost, lora.recovered, lora.kept, lora.broken) == (100, 80, 200, 0)
    assert (idp.recovered, idp.broken) == (80, 5) and idp.side == "input" and lora.side == "weights"
    pair = pairs[(pairs.a.str.contains("lora") & pairs.b.str.endswith("routed/seed0"))
                 | (pairs.b.str.contains("lora") & pairs.a.str.endswith("routed/seed0"))].iloc[0]
    assert (pair.both, pair.only_a, pair.only_b) == (60, 20, 20) and abs(pair.jaccard - 0.6) < 1e-9
    assert "Displaced rather than forgotten" in text and "no measurable difference" in text
    assert "80/100 (80%)" in text and "5/200 (2%)" in text


def test_no_loss_and_no_recovery_readings(tmp_path):
    no_loss = _answers(300, 2, 2, {"lora-r2": (0, 2), "idp-m2-n4-routed": (0, 2)}, {})
    assert "cost no measurable accuracy" in _analyse(tmp_path, no_loss)[2]
    nothing_back = _answers(300, 100, 0, {"lora-r2": (0, 3), "idp-m2-n4-routed": (0, 2)}, {})
    assert "cannot tell forgotten from displaced" in _analyse(tmp_path, nothing_back)[2]
    # a method that breaks what the compressed model knew is reported as worse, not as "zero"
    harmful = _answers(300, 100, 0, {"lora-r2": (0, 3), "idp-m2-n4-routed": (0, 2)},
                       {"idp-m2-n4-routed": (100, 160)})
    text = _analyse(tmp_path, harmful)[2]
    assert "No recovery measurably improves" in text
    assert "idp-m2-n4-routed/seed0 made it measurably worse" in text
    weights_only = _answers(300, 100, 0, {"lora-r2": (0, 90), "idp-m2-n4-routed": (0, 2)}, {})
    assert "Recovered by changing the weights" in _analyse(tmp_path, weights_only)[2]


def test_layer_table_and_plot_without_prompt_methods(tmp_path):
    """Only weight-side recoveries traced: no attention column values, the plot still draws."""
    grid_cells = _grid()
    traced = [c for c in grid_cells if c.recovery in ("none", "lora-r2") and "gptq" in c.compression]
    traces = {c.id: {"layers": [0, 1, 2], "cka": [1.0, 0.9, 0.8], "attention_to_prompt": None,
                     "latency": {"1": {"cell_over_dense": 1.1, "cell_ms": 2.0, "dense_ms": 1.8}}}
              for c in traced}
    layers = displacement.layer_table(traced, traces)
    assert len(layers) == 6 and layers.attention_to_prompt.isna().all()
    displacement.plot_cka(layers, tmp_path / "cka.png")
    assert (tmp_path / "cka.png").read_bytes()[:4] == b"\x89PNG"
    assert "CKA last layer" in displacement.layer_summary(layers)
