"""What an MLflow store holds for one experiment, in a form two stores can be compared by."""
import mlflow

from knowledge_recovery.tracking import mlflow_runs

# set by MLflow itself, per store (the user, the run's own name tag, its parent's id)
VOLATILE_TAGS = {"mlflow.user", "mlflow.runName", "mlflow.parentRunId", "mlflow.source.name",
                 "mlflow.source.type"}


def snapshot(uri: str, experiment: str) -> dict:
    """{step key or 'grid': status, times, tags, params, metric histories, artifact files}
    of the live runs; run ids replaced by what they name, so two stores compare equal when
    they hold the same runs."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parent = {r.info.run_id for r in runs if r.data.tags.get(mlflow_runs.ROLE_TAG) == "grid"}
    out = {}
    for r in runs:
        key = r.data.tags.get(mlflow_runs.KEY_TAG, "grid")
        assert key not in out, f"two runs for {key}"
        tags = {k: v for k, v in r.data.tags.items() if k not in VOLATILE_TAGS}
        if "mlflow.parentRunId" in r.data.tags:
            tags["parent is the grid run"] = str(r.data.tags["mlflow.parentRunId"] in parent)
        out[key] = {
            "status": r.info.status, "run_name": r.info.run_name,
            "times": None if key == "grid" else (r.info.start_time, r.info.end_time),
            "tags": tags, "params": r.data.params,
            "metrics": {m: [(h.step, h.value) for h in client.get_metric_history(r.info.run_id, m)]
                        for m in r.data.metrics},
            "artifacts": sorted((a.path, a.file_size)
                                for a in client.list_artifacts(r.info.run_id)),
        }
    return out
