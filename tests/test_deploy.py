"""The deploy stage: compressed cells exported to OpenVINO in their own environment
(.venv-openvino), through real Snakemake, each checked against the evaluated model's logits."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO

DEPLOY_PYTHON = REPO / ".venv-openvino" / "bin" / "python"


def require_deploy_env():
    if not DEPLOY_PYTHON.exists():
        if os.environ.get("KR_REQUIRE_DEPLOY"):
            pytest.fail("KR_REQUIRE_DEPLOY is set but .venv-openvino is missing (make .venv-openvino)")
        pytest.skip("no deploy environment (make .venv-openvino)")


def test_compressed_cells_deploy_and_match_the_evaluated_model(tmp_path):
    require_deploy_env()
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config.update(experiment="deploy", displacement={"enabled": False},
                  recovery=[{"method": "none"}],
                  compression=[{"method": "dense"},
                               {"method": "rtn", "bits": 4, "group_size": 32, "deploy": "openvino"},
                               {"method": "magnitude", "sparsity": 0.5, "deploy": "openvino"}])
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--workflow-profile", str(REPO / "profiles" / "default"),
                           "--directory", str(tmp_path), "--configfile", str(path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    models = tmp_path / "results" / "deploy" / "models" / "tiny-llama"
    rtn = json.loads((models / "rtn-w4-g32" / "openvino_manifest.json").read_text())
    assert rtn["weights"] == {"bits": 4, "group_size": 32, "sym": False, "ratio": 1.0,
                              "backup_precision": "none"}
    # the cell's own grid re-read by OpenVINO: the deployed model is the evaluated one
    assert rtn["logits_distance"]["max"] < 1e-3 and len(rtn["logits_distance"]["per_window"]) == 4
    assert rtn["deploy_versions"]["openvino"] and rtn["runtime"]["KV_CACHE_PRECISION"] == "f32"
    pruned = json.loads((models / "magnitude-s0.5" / "openvino_manifest.json").read_text())
    assert pruned["weights"].startswith("float32") and pruned["logits_distance"]["max"] < 1e-5
    # int4 weights take less room than the float export of the same architecture
    assert rtn["bytes_on_disk"] < 0.8 * pruned["bytes_on_disk"]
    assert (models / "rtn-w4-g32" / "openvino" / "openvino_model.bin").is_file()
    # scored by lm-eval's own openvino model: the same answers as the evaluated model here
    evaluated = json.loads((tmp_path / "results" / "deploy" / "eval" / "tiny-llama" / "rtn-w4-g32" /
                            "none" / "results.json").read_text())["results"]
    for task, metrics in rtn["results"].items():
        assert metrics["acc"] == evaluated[task]["acc"], task
    table = pd.read_csv(tmp_path / "results" / "deploy" / "summary" / "deployment.csv")
    assert list(table.compression) == ["rtn-w4-g32", "magnitude-s0.5"]
    assert (table.difference.abs() < 0.2).all() and (table.low <= table.high).all()
    assert "deployed acc" in (tmp_path / "results" / "deploy" / "summary" / "deployment.md").read_text()
