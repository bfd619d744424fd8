"""MLflow tracking: one experiment per config, one parent "grid" run, one child run per
(step, unit). Tracking is a view of the results, never their source: every failure here is
reported and swallowed, and the step's JSON outputs stay the truth.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from .artifacts import kill_point

# No telemetry calls from compute nodes; fail fast instead of retrying a dead server for minutes.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

ROLE_TAG, KEY_TAG = "kr.role", "kr.step_key"


def tracking_uri(results_dir: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the results folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _setup(results_dir: Path, experiment: str):
    """Experiment and parent run, created once under a file lock (SQLite schema creation and
    get-or-create both race when many jobs start together)."""
    import mlflow
    from filelock import FileLock

    results_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(results_dir / ".mlflow.lock"), timeout=600):
        # Opening the store creates or migrates the SQLite schema: never two processes at once.
        client = mlflow.MlflowClient(tracking_uri(results_dir))
        client.search_experiments(max_results=1)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(
                experiment, artifact_location=(results_dir / "mlartifacts").resolve().as_uri())
        else:
            exp_id = exp.experiment_id
        parents = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = 'grid'", max_results=1)
        parent = parents[0].info.run_id if parents else client.create_run(
            exp_id, run_name="grid", tags={ROLE_TAG: "grid"}).info.run_id
    return client, exp_id, parent


def _record(client, run_id, params=None, metrics=None, series=None, artifacts=None) -> None:
    """Params (flattened), scalar metrics, metric series [(step, value)] and files of one run."""
    from mlflow.entities import Metric, Param

    stamp = int(1000 * time.time())
    flat = {k: str(v)[:6000] for k, v in _flatten(params or {}).items()}
    scalars = [Metric(k, float(v), stamp, 0) for k, v in _flatten(metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    points = [Metric(name, float(v), stamp, int(s))
              for name, values in (series or {}).items() for s, v in values]
    client.log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])
    everything = scalars + points
    for i in range(0, len(everything), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=everything[i: i + 900])
    for path in artifacts or []:
        client.log_artifact(run_id, str(path))


def _reported(what: str, results_dir: Path, log) -> str | None:
    """Run `log()`; on any failure print what was not logged and where, and return None."""
    try:
        return log()
    except Exception as err:  # noqa: BLE001 - tracking must never cost a result
        print(f"WARNING: MLflow tracking failed for {what} "
              f"(tracking URI {tracking_uri(results_dir)}): {type(err).__name__}: {err}\n"
              f"The step's results are complete on disk; re-run the step to log them again.",
              file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return None


def log_step(results_dir, experiment: str, step: str, unit: str, *, tags: dict | None = None,
             params: dict | None = None, metrics: dict | None = None,
             artifacts: list | None = None, series: dict | None = None) -> str | None:
    """Log one step of one unit (a cell, a compressed model, ...) as a child run, replacing the
    run of an earlier execution of the same step so re-runs never duplicate. Returns the run id,
    or None if tracking failed (the failure is printed, not raised)."""
    results_dir = Path(results_dir)

    def log():
        client, exp_id, parent = _setup(results_dir, experiment)
        key = f"{step}:{unit}"
        for old in client.search_runs([exp_id], f"tags.`{KEY_TAG}` = '{key}'"):
            client.delete_run(old.info.run_id)
        run_id = client.create_run(exp_id, run_name=key, tags={
            KEY_TAG: key, ROLE_TAG: "step", "step": step, "unit": unit,
            "mlflow.parentRunId": parent, **{k: str(v) for k, v in (tags or {}).items()}},
        ).info.run_id
        _record(client, run_id, params, metrics, series, artifacts)
        kill_point(f"tracking:{step}")
        client.set_terminated(run_id)
        return run_id

    return _reported(f"{step} {unit}", results_dir, log)


def log_grid(results_dir, experiment: str, metrics: dict, artifacts: list) -> str | None:
    """Attach the aggregate tables and plots to the parent run."""
    results_dir = Path(results_dir)

    def log():
        client, exp_id, parent = _setup(results_dir, experiment)
        # MLflow's chart view splits metric names at '/' into sections: cell ids use '.'
        _record(client, parent, metrics={k.replace("/", "."): v for k, v in metrics.items()},
                artifacts=artifacts)
        kill_point("tracking:aggregate")
        _purge_replaced(client, exp_id, results_dir)
        client.set_terminated(parent)  # the grid is done; a later run's steps reopen nothing
        return parent

    return _reported("the grid summary", results_dir, log)


def _purge_replaced(client, exp_id: str, results_dir: Path) -> None:
    """Delete for good the runs that re-runs replaced (`log_step` marks them deleted; MLflow
    keeps those, with their artifacts, until `mlflow gc`). A tracking server's database is not
    reachable from here: on a server, its operator runs `mlflow gc`."""
    import subprocess

    from mlflow.entities import ViewType

    uri = tracking_uri(results_dir)
    if uri.startswith(("http://", "https://", "databricks")):
        return
    replaced = [r.info.run_id for r in client.search_runs(
        [exp_id], f"tags.`{ROLE_TAG}` = 'step'", run_view_type=ViewType.DELETED_ONLY,
        max_results=50000)]
    for i in range(0, len(replaced), 500):
        subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri,
                        "--run-ids", ",".join(replaced[i: i + 500])],
                       check=True, capture_output=True, text=True,
                       env={**os.environ, "MLFLOW_TRACKING_URI": uri})
