"""The deploy stage: compressed cells exported to OpenVINO in their own environment
(.venv-openvino), through real Snakemake, each checked against the evaluated model's logits."""
import json
import math
import os
import re
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


def test_compressed_and_prompt_cells_deploy_and_match_the_evaluated_model(tmp_path):
    require_deploy_env()
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config.update(experiment="deploy", displacement={"enabled": False},
                  recovery=[{"method": "none"},
                            {"method": "prompt_tuning", "num_virtual_tokens": 4},
                            {"method": "prefix_tuning", "num_virtual_tokens": 3},
                            {"method": "lora", "r": 2}],
                  deployment={"latency": {"batches": [1, 2], "seq_len": 16, "new_tokens": 4,
                                          "rounds": 1}},
                  compression=[{"method": "dense"},
                               {"method": "rtn", "bits": 4, "group_size": 32, "deploy": "openvino"},
                               {"method": "magnitude", "sparsity": 0.5, "deploy": "openvino"}])
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(config))
    _snakemake(tmp_path, path)
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
    # prompt and prefix tuning: the compressed cell's export, unchanged, started from the
    # prompt's keys and values, computes what the evaluated peft model computes
    eval_dir = tmp_path / "results" / "deploy" / "eval" / "tiny-llama"
    for comp, base in (("rtn-w4-g32", rtn), ("magnitude-s0.5", pruned)):
        for unit, tokens in (("prompt-n4", 4), ("prefix-n3", 3)):
            cell = eval_dir / comp / unit / "seed0"
            found = json.loads((cell / "openvino_manifest.json").read_text())
            assert found["prompt_tokens"] == tokens and found["logits_distance"]["max"] < 1e-3
            assert found["base_bytes_on_disk"] == base["bytes_on_disk"]
            # what the recovery adds: float32 keys and values, n x 2 layers x (k, v) x 4 x 16
            floats = tokens * 2 * 2 * 4 * 16 * 4
            assert floats < found["bytes_on_disk"] < floats + 1024
            evaluated = json.loads((cell / "results.json").read_text())["results"]
            for task, metrics in found["results"].items():
                assert metrics["acc"] == evaluated[task]["acc"], (comp, unit, task)
        assert not (eval_dir / comp / "lora-r2" / "seed0" / "openvino_manifest.json").exists()
    table = pd.read_csv(tmp_path / "results" / "deploy" / "summary" / "deployment.csv")
    assert list(table.compression) == ["rtn-w4-g32", "magnitude-s0.5"] + ["rtn-w4-g32"] * 2 + [
        "magnitude-s0.5"] * 2
    assert list(table.recovery.fillna("")) == ["", ""] + ["prompt-n4/seed0", "prefix-n3/seed0"] * 2
    assert (table.difference.abs() < 0.2).all() and (table.low <= table.high).all()
    markdown = (tmp_path / "results" / "deploy" / "summary" / "deployment.md").read_text()
    assert "deployed acc" in markdown and "tiny-llama/rtn-w4-g32/lora-r2/seed0" in markdown
    # every deployed model timed beside the PyTorch dense model, in one job
    latency = json.loads((models / "openvino_latency.json").read_text())["rows"]
    variants = ["pytorch dense fp32", "openvino rtn-w4-g32", "openvino magnitude-s0.5"] + [
        f"openvino {c} + {u}/seed0" for c in ("rtn-w4-g32", "magnitude-s0.5")
        for u in ("prompt-n4", "prefix-n3")] + ["openvino rtn-w4-g32 (runtime defaults)"]
    assert [(r["batch"], r["variant"]) for r in latency] == [(b, v) for b in (1, 2) for v in variants]
    # (decode times of a tiny model from one round are noise: only their presence is checked)
    assert all(r["prefill_ms"] > 0 and math.isfinite(r["decode_ms"]) for r in latency)
    assert latency[0]["prefill_x"] == latency[0]["decode_x"] == 1.0
    summary = pd.read_csv(tmp_path / "results" / "deploy" / "summary" / "deployment_latency.csv")
    assert len(summary) == len(latency) and set(summary.model) == {"tiny-llama"}
    assert "decode tokens/s" in markdown
    _generation_matches(tmp_path / "results" / "deploy", "rtn-w4-g32", "prompt-n4/seed0")
    # another entry in the grid leaves every deployment as it is (only its settings count)
    config["recovery"].append({"method": "lora", "r": 4})
    path.write_text(yaml.safe_dump(config))
    out = _snakemake(tmp_path, path, "--dry-run")
    stats = out.split("Job stats:")[-1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    assert counts == {"train": 2, "evaluate": 2, "aggregate": 1, "all": 1, "total": 6}, stats


def _snakemake(workdir, config, *args) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--workflow-profile", str(REPO / "profiles" / "default"),
                           "--directory", str(workdir), "--configfile", str(config), *args],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout + proc.stderr


GENERATE = """
import sys, torch
from knowledge_recovery.deployment import openvino
from knowledge_recovery.models import checkpoints
from knowledge_recovery.recovery import adapters
root, comp, unit, entry = sys.argv[1:5]
import json; entry = json.loads(entry)
base, tok = checkpoints.load_checkpoint(f"{root}/models/tiny-llama/{comp}/checkpoint")
model = adapters.load(base, entry, f"{root}/adapters/tiny-llama/{comp}/{unit}/adapter").eval()
deployed = openvino.with_prompt(openvino.load(f"{root}/models/tiny-llama/{comp}/openvino"),
    openvino.load_prompt(f"{root}/eval/tiny-llama/{comp}/{unit}/openvino_prompt.safetensors"))
ids = tok("Question: What is the capital of France?", return_tensors="pt")
args = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
with torch.no_grad():
    want = model.generate(**ids, **args)[0, -12:].tolist()
got = deployed.generate(**ids, **args)[0, -12:].tolist()
print(json.dumps({"want": want, "got": got}))
"""


def _generation_matches(root, comp, unit):
    """`generate` on the deployed prompt cell: the same greedy tokens as the evaluated model."""
    entry = json.dumps({"method": "prompt_tuning", "num_virtual_tokens": 4})
    proc = subprocess.run([str(DEPLOY_PYTHON), "-c", GENERATE, str(root), comp, unit, entry],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["got"] == found["want"] and len(found["got"]) == 12
