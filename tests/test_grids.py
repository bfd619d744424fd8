"""Grids beyond the smoke one, each run once through real Snakemake: every method on two
architectures, and the smoke grid in half precision against float32 (make gpu-check's grid).
Apart from test_pipeline.py so that a parallel test run (make test: pytest-xdist, one file per
worker) spreads the slowest grids over the workers."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from test_pipeline import job_counts, snakemake

pytestmark = pytest.mark.e2e


def test_every_method_runs_on_two_architectures(tmp_path):
    """Every stage, every recovery method, on a tiny Llama and a tiny Gemma-3 (sliding-window and
    full-attention layers alternating): compress with calibration, pack, train, evaluate."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    llama = config["models"][0]
    config["models"] = [llama, {**llama, "name": "tiny-gemma3", "architecture": "gemma3",
                                "num_layers": 4}]
    config["compression"] = [{"method": "dense"}, {**config["compression"][1], "export_packed": True}]
    config["recovery"] = [
        {"method": "none"},
        {"method": "prompt_tuning", "num_virtual_tokens": 4},
        {"method": "prefix_tuning", "num_virtual_tokens": 4},
        {"method": "lora", "r": 2},
        {"method": "dora", "r": 2},
        {"method": "ia3"},
        {"method": "idp", "pool_size": 2, "num_virtual_tokens": 4, "score_layers": [0, 1]},
    ]
    config["training"].update(steps=2, eval_every=1)
    config["tasks"][0].update(relations=["element_symbol"], per_relation=4)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, path)
    counts = job_counts(out.stdout + out.stderr)
    assert counts["compress"] == 2 and counts["pack"] == 2 and counts["train"] == 2 * 6
    assert counts["evaluate"] == 2 * (2 + 6) and counts["represent"] == 2 * (1 + 6)
    res = tmp_path / "results" / "smoke"
    df = pd.read_csv(res / "summary" / "results.csv")
    acc = df[df.metric == "acc"]
    assert acc.value.between(0, 1).all() and len(acc) == 2 * (2 + 6)
    assert set(acc.model) == {"tiny-llama", "tiny-gemma3"}
    for model in ("tiny-llama", "tiny-gemma3"):
        packed = json.loads((res / "models" / model / "gptq-w4-g32-sym" /
                             "packed_manifest.json").read_text())
        assert packed["max_relative_weight_difference"] == 0.0
        manifest = json.loads((res / "models" / model / "dense" / "manifest.json").read_text())
        assert manifest["architecture"].startswith(model.split("-")[1])  # gemma3_text


# Half precision against float32: the tolerances are analysis.agreement's (measured there).
SCALE_TOLERANCE = 0.01  # median relative difference of quantization scales from the twin's


def test_half_precision_grids_agree_with_float32(tmp_path, monkeypatch):
    """The smoke grid's tiny Llama and tiny Gemma-3 each in float32, bfloat16 and float16, in one
    run: every stage finishes; every checkpoint is written in its model's dtype and every step
    holds the model in it, adapters in float32; no NaN or inf in any loss, metric or
    log-likelihood; each half-precision cell answers as its float32 twin (analysis.agreement:
    what was measured and how closely) and its compressed weights lie on their quantization
    grid, close to the twin's."""
    from knowledge_recovery.cli import gpu_check

    config = gpu_check.grid(("float32", *gpu_check.HALF), "smoke")  # make gpu-check's grid
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, path)
    check_half_precision_grid(path, monkeypatch)


def check_half_precision_grid(path: Path, monkeypatch) -> None:
    """The assertions of the test above on a finished grid of its config at `path`."""
    import numpy as np
    from safetensors import safe_open

    from knowledge_recovery.analysis.agreement import agreement, selects_per_input
    from knowledge_recovery.artifacts import read_json, read_json_gz
    from knowledge_recovery.pipeline.config import load_config
    from knowledge_recovery.pipeline.jobs import Jobs

    tmp_path = path.parent
    cfg = load_config(path, base_dir=tmp_path, check_models=False)
    jobs = Jobs(cfg)
    paths = jobs.paths
    monkeypatch.chdir(tmp_path)  # the layout's paths are relative to the working directory

    def stored(folder) -> set:
        found = set()
        for f in Path(folder).glob("*.safetensors"):
            with safe_open(str(f), "pt") as fh:
                found |= {fh.get_slice(k).get_dtype() for k in fh.keys()}
        return found

    short = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
    for m in cfg["models"]:
        for c in cfg["compression"]:
            assert stored(paths.checkpoint(m["name"], c["id"])) == {short[m["dtype"]]}, m["name"]
            if c["method"] != "dense":
                assert read_json(paths.model_manifest(m["name"], c["id"]))["dtype"] == m["dtype"]
    by_id = {c.id: c for c in jobs.cells}
    for cell in jobs.cells:
        dtype = cell.model.split("-")[1]
        results = read_json(paths.eval_results(cell.model, cell.compression, cell.recovery_unit))
        assert results["model_dtype"] == dtype
        assert all(np.isfinite(v) for ms in results["results"].values() for v in ms.values()
                   if isinstance(v, (int, float)))
        if cell.train_unit:
            unit = (cell.model, cell.compression, cell.train_unit)
            trained = read_json(paths.train_manifest(*unit))
            assert trained["base_dtype"] == dtype
            assert np.isfinite([v for _, v in trained["history"]["train_loss"]]).all()
            assert stored(paths.adapter(*unit)) <= {"F32"}  # float32 master weights
        if dtype == "float32":
            continue
        twin = by_id[cell.id.replace(cell.model, cell.model.replace(dtype, "float32"))]
        mine = read_json_gz(paths.eval_samples(cell.model, cell.compression, cell.recovery_unit))
        theirs = read_json_gz(paths.eval_samples(twin.model, twin.compression, twin.recovery_unit))
        found = agreement(mine, theirs, dtype, compressed=cell.compression != "dense",
                          selects=selects_per_input(cell))
        assert found.ok and found.questions > 0, (cell.id, found)
    # compressed weights: on their quantization grid, to the dtype's rounding, and the grid the
    # float32 twin's (GPTQ's error feedback runs on other Hessians: scales differ a little)
    import torch

    for m in cfg["models"]:
        eps = torch.finfo(getattr(torch, m["dtype"])).eps
        for c in cfg["compression"]:
            if c["method"] == "dense":
                continue
            twin = m["name"].replace(m["dtype"], "float32")
            with safe_open(str(paths.quant_grids(m["name"], c["id"])), "pt") as grids, \
                    safe_open(str(paths.quant_grids(twin, c["id"])), "pt") as twin_grids, \
                    safe_open(f"{paths.checkpoint(m['name'], c['id'])}/model.safetensors",
                              "pt") as weights:
                gaps = []
                for key in (k for k in grids.keys() if k.endswith(".weight_scale")):
                    layer = key.removesuffix("_scale")
                    scale = grids.get_tensor(key).float()
                    zero = grids.get_tensor(f"{layer}_zero_point").float()
                    w = weights.get_tensor(layer).float()
                    codes = w.reshape(len(w), scale.shape[1], -1) / scale[..., None] + zero[..., None]
                    off = (codes - codes.round()).abs()
                    assert (off <= 2 * eps * (codes.abs() + 1)).all(), (m["name"], layer)
                    assert -2 ** (c["bits"] - 1) <= codes.round().min() <= \
                        codes.round().max() <= 2 ** c["bits"] - 1
                    gaps.append((scale / twin_grids.get_tensor(key).float() - 1).abs().flatten())
                assert float(torch.cat(gaps).median()) <= SCALE_TOLERANCE, (m["name"], c["id"])
