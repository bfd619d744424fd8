import json
from pathlib import Path

import mlflow
import pytest
from mlflow_store import snapshot

from knowledge_recovery.tracking import mlflow_runs


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _runs(store, experiment):
    client = mlflow.MlflowClient(mlflow_runs.tracking_uri(store))
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def _evaluate_record(store, value, unit="m/dense/none"):
    (store / "results.json").write_text(f'{{"acc": {value}}}\n')
    return mlflow_runs.record(store, "evaluate", unit, tags={"model": "m", "compression": "dense",
                                                          "empty": ""},
                           params={"evaluation": {"batch_size": 4}, "unset": None},
                           metrics={"kp.acc": value, "skipped": "text", "a/b": 1},
                           series={"loss": [(1, 2.0), (2, 1.5)]},
                           artifacts=[store / "results.json"])


def _grid_record(store):
    (store / "table.md").write_text("| a |\n")
    (store / "overview.csv").write_text("cell,mean_acc\nm/c/none,0.5\nm/dense/none,0.75\n")
    return mlflow_runs.record(store, "aggregate", "grid", artifacts=[store / "table.md"],
                              tables={"overview": store / "overview.csv"})


def test_a_record_is_plain_json_with_no_empty_tags_or_slashes(store):
    rec = _evaluate_record(store, 0.5)
    assert rec["tags"] == {"model": "m", "compression": "dense"}
    assert rec["params"] == {"evaluation.batch_size": "4"}
    assert rec["metrics"] == {"kp.acc": 0.5, "a.b": 1.0}
    assert rec["artifacts"] == ["results.json"]  # relative: the results folder can move
    assert rec["start_ms"] <= rec["end_ms"]


def test_metric_names_mlflow_refuses_are_cleaned_and_logged(store):
    # deployment variants are named like this; MLflow refuses '+' and parentheses in a key
    rec = mlflow_runs.record(store, "deploy_latency", "m", metrics={
        "b1.openvino rtn-w4 + prompt-n20/seed0.prefill_ms": 1.0,
        "b1.openvino rtn-w4 (runtime defaults).prefill_ms": 2.0},
        series={"loss (val)": [(1, 3.0)]})
    assert rec["metrics"] == {"b1.openvino_rtn-w4_prompt-n20.seed0.prefill_ms": 1.0,
                              "b1.openvino_rtn-w4_runtime_defaults.prefill_ms": 2.0}
    assert mlflow_runs.log_step(store, "exp", rec)
    _, runs = _runs(store, "exp")
    run = next(r for r in runs if r.data.tags.get("kr.role") == "step")
    assert run.data.metrics == {**rec["metrics"], "loss_val": 3.0}


def test_a_rerun_replaces_its_run_instead_of_duplicating(store):
    for value in (0.5, 0.7):
        assert mlflow_runs.log_step(store, "exp", _evaluate_record(store, value))
    client, runs = _runs(store, "exp")
    steps = [r for r in runs if r.data.tags.get("kr.role") == "step"]
    parents = [r for r in runs if r.data.tags.get("kr.role") == "grid"]
    assert len(steps) == 1 and len(parents) == 1
    run = steps[0]
    assert run.data.metrics["kp.acc"] == 0.7
    assert run.data.params["evaluation.batch_size"] == "4"
    assert run.data.tags["compression"] == "dense"
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert run.info.status == "FINISHED" and run.data.tags[mlflow_runs.RECORD_TAG]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5]


def test_artifacts_land_beside_the_store(store):
    assert mlflow_runs.log_grid(store, "exp", _grid_record(store))
    client, runs = _runs(store, "exp")
    parent = next(r for r in runs if r.data.tags.get("kr.role") == "grid")
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["table.md", "tables"]
    # the overview as an MLflow table (its UI shows it as one), not a chart per cell
    assert not parent.data.metrics
    table = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "tables/overview.json", str(store / "dl"))).read_text())
    assert table["columns"] == ["cell", "mean_acc"]
    assert table["data"] == [["m/c/none", 0.5], ["m/dense/none", 0.75]]
    assert "tables/overview.json" in parent.data.tags["mlflow.loggedArtifacts"]
    assert parent.info.status == "FINISHED"
    assert (store / "mlartifacts").is_dir()


def test_tracking_failure_is_reported_not_raised(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert mlflow_runs.log_step(store, "exp", mlflow_runs.record(store, "evaluate", "cell",
                                                           metrics={"a": 1})) is None
    err = capsys.readouterr().err
    assert "MLflow tracking failed for evaluate cell" in err and "127.0.0.1:9" in err
    assert "results are complete on disk" in err and "make resync" in err


def test_resync_logs_what_is_missing_replaces_what_is_stale_and_is_idempotent(store, tmp_path,
                                                                             monkeypatch):
    a, b = _evaluate_record(store, 0.5, "m/a/none"), _evaluate_record(store, 0.6, "m/b/none")
    grid = _grid_record(store)
    mlflow_runs.log_step(store, "exp", a)  # b and the grid never reached the store (an outage)
    stale = dict(b, metrics={"kp.acc": 0.1})  # another execution's run of b
    mlflow_runs.log_step(store, "exp", stale)
    uri = mlflow_runs.tracking_uri(store)
    planned = mlflow_runs.resync(store, "exp", [a, b], grid, dry_run=True)
    assert planned["replaced"] == ["evaluate:m/b/none"] and planned["current"] == ["evaluate:m/a/none"]
    assert planned["logged"] == ["aggregate:grid"]
    before = snapshot(uri, "exp")
    assert before["evaluate:m/b/none"]["metrics"]["kp.acc"] == [(0, 0.1)]  # dry run: unchanged
    done = mlflow_runs.resync(store, "exp", [a, b], grid)
    assert done["replaced"] == ["evaluate:m/b/none"] and done["logged"] == ["aggregate:grid"]
    after = snapshot(uri, "exp")
    assert after["evaluate:m/b/none"]["metrics"]["kp.acc"] == [(0, 0.6)]
    assert after["grid"]["status"] == "FINISHED"
    again = mlflow_runs.resync(store, "exp", [a, b], grid)
    assert again["logged"] == again["replaced"] == [] and len(again["current"]) == 3
    assert snapshot(uri, "exp") == after
    # The same records into a new store: what an uninterrupted run would have logged.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow_runs.log_step(store, "exp", a)
    mlflow_runs.log_step(store, "exp", b)
    mlflow_runs.log_grid(store, "exp", grid)
    assert snapshot(other, "exp") == after


def test_a_locked_sqlite_file_is_retried_other_errors_are_not(store, monkeypatch, capsys):
    monkeypatch.setattr(mlflow_runs.time, "sleep", lambda s: None)
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "run"
    assert mlflow_runs._reported("evaluate cell", store, locked_twice) == "run" and len(calls) == 3
    assert "tracking failed" not in capsys.readouterr().err

    def broken():
        calls.append(1)
        raise ValueError("no such table")
    calls.clear()
    assert mlflow_runs._reported("evaluate cell", store, broken) is None and len(calls) == 1
    assert "MLflow tracking failed for evaluate cell" in capsys.readouterr().err


def test_the_grid_is_logged_again_after_a_rerun_with_other_tags(store):
    """The parent run outlives re-runs: a second aggregate (another commit) updates it."""
    first = mlflow_runs.record(store, "aggregate", "grid", tags={"mlflow.source.git.commit": "a"},
                            metrics={"mean_acc.c": 0.5})
    second = dict(first, tags={"mlflow.source.git.commit": "b"}, metrics={"mean_acc.c": 0.6})
    assert mlflow_runs.log_grid(store, "exp", first) and mlflow_runs.log_grid(store, "exp", second)
    parent = snapshot(mlflow_runs.tracking_uri(store), "exp")["grid"]
    assert parent["tags"]["mlflow.source.git.commit"] == "b"
    assert parent["metrics"]["mean_acc.c"][-1] == (0, 0.6)
    assert mlflow_runs.resync(store, "exp", [], second)["current"] == ["aggregate:grid"]


def test_runs_are_named_by_what_differs_and_the_experiment_is_model_training(store):
    def name(step, unit="u", **tags):
        return mlflow_runs.run_name({"step": step, "unit": unit, "tags": tags})

    assert name("evaluate", model="smol", compression="magnitude-s0.5", recovery="lora-r8",
                seed="0") == "eval magnitude-s0.5 + lora-r8 (smol)"
    assert name("train", model="smol", compression="rtn-w4-g64", recovery="prompt-n40",
                seed="1") == "train prompt-n40 on rtn-w4-g64 (smol, seed 1)"
    assert name("compress", model="smol", compression="rtn-w4-g64") == "compress rtn-w4-g64 (smol)"
    assert name("prepare_task", "knowledge", task="knowledge") == "task knowledge"
    mlflow_runs.log_step(store, "exp", _evaluate_record(store, 0.5))
    client, runs = _runs(store, "exp")
    assert sorted(r.info.run_name for r in runs) == ["eval dense (m)", "grid"]
    exp = client.get_experiment_by_name("exp")
    assert exp.tags[mlflow_runs.KIND_TAG] == "custom_model_development"


def test_the_grid_run_holds_the_config_and_a_changed_config_gets_a_new_parent(store):
    """The config as the grid run's params, entries keyed by id; after a config change (MLflow
    never changes a param) the summary goes onto a new parent run, every step run moves under
    it, and the old parent is gone for good."""
    config = {"experiment": "exp", "models": [{"name": "m", "dtype": "float32"}],
              "compression": [{"method": "dense", "id": "dense"},
                              {"method": "rtn", "bits": 4, "id": "rtn-w4"}],
              "training": {"steps": 20},
              "tasks": [{"name": "kp", "relations": ["a", "b"]}]}
    params = mlflow_runs.config_params(config)
    assert params["compression"]["rtn-w4"] == {"method": "rtn", "bits": 4}
    assert params["models"]["m"] == {"dtype": "float32"}
    assert params["tasks"]["kp"] == {"relations": ["a", "b"]}
    twice = [{"source": "builtin", "name": "t"}, {"source": "builtin", "name": "t"}]
    assert mlflow_runs.config_params({"texts": twice}) == {"texts": twice}  # not one key

    def grid(cfg):
        return mlflow_runs.record(store, "aggregate", "grid", params=mlflow_runs.config_params(cfg))

    mlflow_runs.log_step(store, "exp", _evaluate_record(store, 0.5, "m/dense/none"))
    first = mlflow_runs.log_grid(store, "exp", grid(config))
    assert mlflow_runs.log_grid(store, "exp", grid(config)) == first  # same config: same parent
    uri = mlflow_runs.tracking_uri(store)
    parent = snapshot(uri, "exp")["grid"]
    assert parent["params"]["compression.rtn-w4.bits"] == "4"
    assert parent["params"]["training.steps"] == "20"
    assert parent["params"]["tasks.kp.relations"] == "['a', 'b']"

    changed = {**config, "training": {"steps": 200}}
    mlflow_runs.log_step(store, "exp", _evaluate_record(store, 0.6, "m/rtn-w4/none"))
    latest = grid(changed)
    second = mlflow_runs.log_grid(store, "exp", latest)
    assert second != first
    client, runs = _runs(store, "exp")
    assert [r.info.run_id for r in runs if r.data.tags.get("kr.role") == "grid"] == [second]
    steps = [r for r in runs if r.data.tags.get("kr.role") == "step"]
    assert len(steps) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in steps} == {second}
    assert client.get_run(second).data.params["training.steps"] == "200"
    from mlflow.entities import ViewType
    exp = client.get_experiment_by_name("exp")
    assert client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY) == []
    assert mlflow_runs.resync(store, "exp", [], latest)["current"] == ["aggregate:grid"]


def test_the_summary_puts_its_figures_on_the_step_runs_and_resync_keeps_them(store):
    """The grid record's `step_metrics` (each evaluate run's difference from dense) land on
    those runs; a step run logged again by resync (the grid itself current) gets them back."""
    a = _evaluate_record(store, 0.5, "m/a/none")
    grid = mlflow_runs.record(store, "aggregate", "grid", step_metrics={
        "evaluate:m/a/none": {"delta_vs_dense": -0.25, "delta_vs_dense_low": -0.3,
                              "delta_vs_dense_high": -0.2, "not a number": "x"}})
    mlflow_runs.log_step(store, "exp", a)
    mlflow_runs.log_grid(store, "exp", grid)
    uri = mlflow_runs.tracking_uri(store)
    logged = snapshot(uri, "exp")["evaluate:m/a/none"]["metrics"]
    assert logged["delta_vs_dense"] == [(0, -0.25)] and "not a number" not in logged
    mlflow_runs.log_step(store, "exp", dict(a, metrics={"kp.acc": 0.1}))  # another execution
    done = mlflow_runs.resync(store, "exp", [a], grid)
    assert done["replaced"] == ["evaluate:m/a/none"] and done["current"] == ["aggregate:grid"]
    after = snapshot(uri, "exp")["evaluate:m/a/none"]["metrics"]
    assert after["kp.acc"] == [(0, 0.5)] and after["delta_vs_dense_low"] == [(0, -0.3)]
