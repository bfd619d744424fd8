"""Manifests with hashes, the checks that read them, and what a damaged artifact makes rebuild."""
import json
import os

import pytest
import yaml
from conftest import REPO

from knowledge_recovery.artifacts import read_json, write_manifest
from knowledge_recovery.pipeline import integrity
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.jobs import Jobs


def _job_outputs(tmp_path):
    out = tmp_path / "job"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (out / "masks.safetensors").write_bytes(b"mask")
    manifest = out / "manifest.json"
    write_manifest(manifest, {"step": "compress", "sparsity": 0.5},
                   [out / "checkpoint", out / "masks.safetensors"])
    job = integrity.Job("compress m/c", (str(out / "checkpoint"), str(out / "masks.safetensors"),
                                         str(manifest)), str(manifest), ())
    return job, out


def test_a_manifest_records_sizes_and_hashes_of_its_outputs(tmp_path):
    job, out = _job_outputs(tmp_path)
    files = read_json(job.manifest)["files"]
    assert set(files) == {"checkpoint/model.safetensors", "masks.safetensors"}
    assert files["masks.safetensors"]["bytes"] == 4
    assert integrity.check_job(job, full=True).status == "ok"


def test_truncated_altered_edited_and_unreadable_outputs_are_found(tmp_path):
    job, out = _job_outputs(tmp_path)
    weights = out / "checkpoint" / "model.safetensors"
    original = weights.read_bytes()

    weights.write_bytes(original[:-7])
    state = integrity.check_job(job, full=False)
    assert state.status == "damaged" and "truncated" in state.problems[0]

    weights.write_bytes(original[:-1] + b"\x00")  # same size: only the hash tells
    assert integrity.check_job(job, full=False).status == "ok"
    state = integrity.check_job(job, full=True)
    assert state.status == "damaged" and "altered" in state.problems[0]
    weights.write_bytes(original)

    manifest = json.loads(open(job.manifest).read())
    manifest["sparsity"] = 0.1
    open(job.manifest, "w").write(json.dumps(manifest))
    state = integrity.check_job(job, full=False)
    assert state.status == "damaged" and "edited" in state.problems[0]

    open(job.manifest, "w").write('{"step": "compress", ')
    state = integrity.check_job(job, full=False)
    assert state.status == "damaged" and "unreadable" in state.problems[0]

    os.remove(job.manifest)
    state = integrity.check_job(job, full=False)
    assert state.status == "damaged" and state.problems == [f"{job.manifest}: missing"]


def test_a_manifest_from_before_hashes_is_read_as_unverified(tmp_path):
    job, out = _job_outputs(tmp_path)
    open(job.manifest, "w").write(json.dumps({"step": "compress"}))
    assert integrity.check_job(job, full=True).status == "unverified"


def test_a_step_refuses_a_damaged_input_and_records_it(tmp_path):
    config = load_config(yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()),
                         check_models=False)
    config["results_dir"] = str(tmp_path)
    jobs = Jobs(config)
    text = jobs.paths.recovery_text
    os.makedirs(os.path.dirname(text))
    open(text, "w").write("some recovery text")
    write_manifest(jobs.paths.recovery_text_manifest, {"step": "download_text"}, [text])
    integrity.check_inputs(config, [text], jobs.paths.root)
    open(text, "w").write("Some recovery text")
    with pytest.raises(integrity.IntegrityError, match=r"download_text.*recovery_text.txt: altered"):
        integrity.check_inputs(config, [text], jobs.paths.root)
    assert "download_text recovery_text" in integrity.recorded_damage(jobs.paths.root)


def _state(job, status):
    return integrity.State(job, status, ["bad"] if status == "damaged" else [])


def test_what_is_rebuilt_is_the_damaged_job_and_what_was_built_from_it():
    config = load_config(yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()),
                         check_models=False)
    graph = Jobs(config).graph()
    names = [j.name for j in graph]
    compress = next(n for n in names if n.startswith("compress"))

    states = [_state(j, "damaged" if j.name == compress else "ok") for j in graph]
    rebuild = integrity.to_rebuild(states, {})
    expected = {compress, "aggregate aggregate"} | {
        n for n in names if n.startswith(("train", "evaluate", "represent")) and "/dense/" not in n}
    assert set(rebuild) == expected

    # a deleted results.json: only the summary was built from it
    dense_eval = next(n for n in names if n.startswith("evaluate") and "/dense/" in n)
    states = [_state(j, "absent" if j.name == dense_eval else "ok") for j in graph]
    assert set(integrity.to_rebuild(states, {})) == {"aggregate aggregate"}

    # what a step or `verify` recorded counts as damaged too
    states = [_state(j, "ok") for j in graph]
    assert set(integrity.to_rebuild(states, {dense_eval: ["altered"]})) == {
        dense_eval, "aggregate aggregate"}


def test_set_aside_keeps_the_newest_sets(tmp_path):
    folder = tmp_path / integrity.SET_ASIDE_DIR
    names = [f"20261206-10000{i}" for i in range(5)]
    for name in names:
        (folder / name / "eval").mkdir(parents=True)
        (folder / name / "eval" / "results.json").write_text("{}")
    said = []
    assert integrity.prune_set_aside(tmp_path, 3, log=said.append) == names[:2]
    assert sorted(p.name for p in folder.iterdir()) == names[2:]
    assert "Removed 2 older set(s)" in said[0] and names[0] in said[0]
    assert integrity.prune_set_aside(tmp_path, 3, log=said.append) == [] and len(said) == 1
