import mlflow
import pytest

from knowledge_recovery import tracking


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _runs(store, experiment):
    client = mlflow.MlflowClient(tracking.tracking_uri(store))
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_a_rerun_replaces_its_run_instead_of_duplicating(store):
    for value in (0.5, 0.7):
        run_id = tracking.log_step(store, "exp", "evaluate", "m/dense/none",
                                   tags={"model": "m", "compression": "dense"},
                                   params={"evaluation": {"batch_size": 4}},
                                   metrics={"kp.acc": value, "skipped": "text"},
                                   series={"loss": [(1, 2.0), (2, 1.5)]})
        assert run_id
    client, runs = _runs(store, "exp")
    steps = [r for r in runs if r.data.tags.get("kr.role") == "step"]
    parents = [r for r in runs if r.data.tags.get("kr.role") == "grid"]
    assert len(steps) == 1 and len(parents) == 1
    run = steps[0]
    assert run.data.metrics["kp.acc"] == 0.7
    assert run.data.params["evaluation.batch_size"] == "4"
    assert run.data.tags["compression"] == "dense"
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5]


def test_artifacts_land_beside_the_store(store):
    (store / "table.md").write_text("| a |\n")
    assert tracking.log_grid(store, "exp", {"mean_acc.m/c/none": 0.5}, [store / "table.md"])
    client, runs = _runs(store, "exp")
    parent = next(r for r in runs if r.data.tags.get("kr.role") == "grid")
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["table.md"]
    assert parent.data.metrics == {"mean_acc.m.c.none": 0.5}  # no '/': one chart section
    assert parent.info.status == "FINISHED"
    assert (store / "mlartifacts").is_dir()


def test_tracking_failure_is_reported_not_raised(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert tracking.log_step(store, "exp", "evaluate", "cell", metrics={"a": 1}) is None
    err = capsys.readouterr().err
    assert "MLflow tracking failed for evaluate cell" in err and "127.0.0.1:9" in err
    assert "results are complete on disk" in err
