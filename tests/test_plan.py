"""`make plan`: every job of a grid estimated, from shapes known before any download; jobs over
a profile's limits flagged; a model of unknown size refused by its key."""
import pytest
import yaml
from conftest import REPO

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.pipeline import plan
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.jobs import Jobs


def _smoke(**changes) -> dict:
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw.update(changes)
    return load_config(raw, check_models=False)


def test_every_job_is_estimated_and_costs_follow_the_work(tmp_path):
    config = _smoke()
    estimates = plan.estimate(config)
    assert [e.job for e in estimates] == [j.name for j in Jobs(config).graph()]
    by_job = {e.job: e for e in estimates}
    train = [e for e in estimates if e.rule == "train"]
    assert all(e.flops > 0 and e.wall_s > 0 and e.accel_gb > 0 for e in train)
    # twice the steps: about twice the training compute
    longer = {e.job: e for e in plan.estimate(_smoke(training={**config["training"],
                                                               "steps": 2 * config["training"]["steps"]}))}
    for e in train:
        assert longer[e.job].flops == pytest.approx(2 * e.flops, rel=0.1)
    # a prompt before every input costs its evaluation more than no recovery
    evaluate = {k.split(" ", 1)[1]: e for k, e in by_job.items() if e.rule == "evaluate"}
    prompt = next(e for k, e in evaluate.items() if "/idp-" in k)
    none = next(e for k, e in evaluate.items() if k.endswith("gptq-w4-g32-sym/none"))
    assert prompt.flops > none.flops
    # a compressed checkpoint is written in the model's dtype
    half = plan.estimate(_smoke(models=[{**config["models"][0], "dtype": "bfloat16"}]))
    compress = [e for e in estimates if e.rule == "compress"][0]
    assert [e for e in half if e.rule == "compress"][0].disk_gb < 0.6 * compress.disk_gb
    text = plan.markdown(estimates, config)
    assert "| train" in text and "MLflow runs" in text


def test_a_shape_stands_for_a_model_not_yet_downloaded_and_limits_are_flagged(tmp_path):
    config = load_config(str(REPO / "config" / "paper.yaml"), check_models=False)
    estimates = plan.estimate(config)
    compress = [e for e in estimates if e.rule == "compress"]
    assert len(compress) == 6 and all(12 < e.disk_gb < 16 for e in compress)  # 7B in float16
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": {"runtime": 240, "mem_mb": 16000},
        "set-resources": {"train": {"runtime": 1, "mem_mb": 64000},
                          "evaluate": {"runtime": 240, "mem_mb": 64000}}}))
    limits, factor = plan.profile_settings(profile)
    assert factor is None
    plan.flag(estimates, limits, config)
    assert all(e.flags and "runtime 1" in e.flags[0] for e in estimates if e.rule == "train")
    assert not any(e.flags for e in estimates if e.rule == "evaluate")
    # the head node's jobs are not held to a cluster job's limits
    assert not any(e.flags for e in estimates if e.rule == "download_model")

    raw = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    del raw["models"][1]["shape"]
    with pytest.raises(ConfigError) as err:
        plan.estimate(load_config(raw, check_models=False))
    assert err.value.key == "models (opt-6.7b).shape"


def test_the_slurm_profile_sizes_each_job_from_its_estimate():
    """profiles/slurm sets the factor; each job then asks for its estimate times it (times the
    attempt), at the floors; nothing is flagged against a fixed limit; the plan shows the asks."""
    import math

    config = load_config(str(REPO / "config" / "paper.yaml"), check_models=False)
    limits, factor = plan.profile_settings(REPO / "profiles" / "slurm")
    assert factor == 3
    config["resource_safety_factor"] = factor
    estimates = plan.estimate(config)
    plan.flag(estimates, limits, config)
    assert not any(e.flags for e in estimates)
    train = max((e for e in estimates if e.rule == "train"), key=lambda e: e.wall_s)
    asked = plan.job_resources(train, config)
    assert asked["runtime"] == math.ceil(train.wall_s / 60 * 3) > config["plan"]["min_runtime"]
    assert asked["mem_mb"] == math.ceil((train.host_gb + plan.PROCESS_GB) * 1000 * 3)
    assert plan.job_resources(train, config, attempt=2)["runtime"] == math.ceil(train.wall_s / 60 * 6)
    text = plan.markdown(estimates, config)
    assert "`resource_safety_factor` 3" in text and f"| train | {asked['runtime']:,} |" in text


def test_the_plans_rule_lists_match_the_rules_files():
    """LOCAL_RULES are the rules marked `localrule: True`; PLANNED_RULES those whose resources
    come from `planned(...)`."""
    import re

    local, planned = set(), set()
    for path in (REPO / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(), re.M):
            if "localrule: True" in body:
                local.add(name)
            if f'planned("{name}"' in body:
                planned.add(name)
    assert local == set(plan.LOCAL_RULES) and planned == set(plan.PLANNED_RULES)


def test_gpu_check_without_a_gpu_says_so_and_runs_nothing(tmp_path, capsys):
    """`make gpu-check` on a machine without CUDA: exit 0, a sentence, no grid folder."""
    import torch

    from knowledge_recovery.cli import gpu_check

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check runs for real here")
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 0
    assert "no GPU here" in capsys.readouterr().out and not (tmp_path / "check").exists()
    grid = gpu_check.grid(gpu_check.HALF, "half")  # what it would run: both models, both dtypes
    assert [m["name"] for m in grid["models"]] == [
        "llama-bfloat16", "llama-float16", "gemma3-bfloat16", "gemma3-float16"]
