"""MLflow tracking: one experiment per config, one parent "grid" run, one child run per
(step, unit). Tracking is a view of the results, never their source: every failure here is
reported and swallowed, and the step's JSON outputs stay the truth.

What a step logs is a *record* (`record`): built once, written into the step's manifest, then
logged. `resync` replays the records of a results folder into any store, so an MLflow outage,
a lost database or a move to a tracking server costs no run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

from knowledge_recovery.artifacts import kill_point

# No telemetry calls from compute nodes; fail fast instead of retrying a dead server for minutes.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

ROLE_TAG, KEY_TAG = "kr.role", "kr.step_key"
RECORD_TAG = "kr.record_sha256"  # set last: a run without it (or with another) is stale
RECORD_KEY = "tracking"          # manifest key holding the step's record
# MLflow's declared kind of an experiment (model training, not GenAI); MLflow 3.17's UI still
# opens its GenAI view unless the URL says otherwise (cli.show.runs_url)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# A view of the runs table MLflow's UI opens from a URL (`?viewStateShareKey=cells`, which
# `cli.show.runs_url` prints): the evaluate runs, best first, with what differs and what they
# cost as columns. Kept as an experiment tag, where MLflow 3.17 reads shared views.
CELLS_VIEW = "cells"
VIEW_TAG = f"mlflow.sharedViewState.{CELLS_VIEW}"
_VIEW_COLUMNS = ["tags.`recovery`", "tags.`compression`", "metrics.`mean_acc`",
                 "metrics.`mean_acc_low`", "metrics.`mean_acc_high`", "metrics.`delta_vs_dense`",
                 "metrics.`delta_vs_dense_low`", "metrics.`delta_vs_dense_high`",
                 "metrics.`recovery.trainable_params`", "metrics.`compression.bits_per_weight`",
                 "metrics.`compression.sparsity`", "tags.`model`", "tags.`seed`"]
VIEW = json.dumps({
    "searchFilter": "tags.step = 'evaluate'", "orderByKey": "metrics.`mean_acc`",
    "orderByAsc": False, "selectedColumns": _VIEW_COLUMNS, "columnOrder": _VIEW_COLUMNS,
    "columnWidths": {"tags.`recovery`": 250, "tags.`compression`": 170}})
# How a step's run is named: its verb, then what differs between its runs
VERBS = {"evaluate": "eval", "download_model": "download", "download_text": "download text",
         "prepare_task": "task", "deploy_prompt": "deploy", "deploy_latency": "latency"}
# A step's process starts with its script, which imports this module first: the run's start.
STEP_STARTED_MS = int(1000 * time.time())


def tracking_uri(results_dir: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the results folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def metric_name(name: str) -> str:
    """`name` as MLflow takes it and charts it well: '/' becomes '.' (the chart view splits names
    at '/' into sections) and every run of other characters than letters, digits, '_', '-' and
    '.' becomes one '_', none at either end of a '.'-separated part (MLflow refuses '+',
    parentheses and the like; spaces make poor keys)."""
    return ".".join(re.sub(r"[^\w-]+", "_", part).strip("_")
                    for part in name.replace("/", ".").split("."))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record(results_dir, step: str, unit: str, *, tags: dict | None = None,
           params: dict | None = None, metrics: dict | None = None, series: dict | None = None,
           artifacts=(), logs=(), tables: dict | None = None,
           step_metrics: dict | None = None) -> dict:
    """What one step of one unit logs, as plain JSON: flattened params, numeric metrics, metric
    series [(step, value)], files relative to the results folder (`logs`: the step's log files,
    under the run's logs/ folder; `tables`: CSV files by name, logged as MLflow tables, which
    its UI shows as tables), and the step's real start and end. No empty tag values; metric
    names pass through `metric_name`. `step_metrics` ({step key `evaluate:<cell>`: {name:
    value}}, the grid record's) are what the summary adds to other steps' runs."""
    root = Path(results_dir).resolve()
    return {
        "step": step, "unit": unit,
        "tags": {k: str(v) for k, v in (tags or {}).items() if v is not None and str(v) != ""},
        "params": {k: str(v)[:6000] for k, v in _flatten(params or {}).items() if v is not None},
        "metrics": {metric_name(k): float(v) for k, v in _flatten(metrics or {}).items()
                    if _number(v)},
        "series": {metric_name(name): [[int(s), float(v)] for s, v in values]
                   for name, values in (series or {}).items()},
        "artifacts": [os.path.relpath(Path(p).resolve(), root) for p in artifacts],
        "logs": [os.path.relpath(Path(p).resolve(), root) for p in logs],
        "tables": {name: os.path.relpath(Path(p).resolve(), root)
                   for name, p in (tables or {}).items()},
        "start_ms": STEP_STARTED_MS, "end_ms": int(1000 * time.time()),
        **({"step_metrics": {key: {metric_name(k): float(v) for k, v in values.items()
                                   if _number(v)}
                             for key, values in step_metrics.items()}} if step_metrics else {}),
    }


def record_digest(rec: dict) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()


def _setup(results_dir: Path, experiment: str, client=None):
    """Experiment and parent run, created once under a file lock (SQLite schema creation and
    get-or-create both race when many jobs start together)."""
    import mlflow
    from filelock import FileLock

    results_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(results_dir)
    with FileLock(str(results_dir / ".mlflow.lock"), timeout=600):
        # Opening the store creates or migrates the SQLite schema: never two processes at once.
        client = client or mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            # A server stores artifacts where its operator said (--artifacts-destination);
            # the SQLite store keeps them beside itself.
            where = None if is_server(uri) else (results_dir / "mlartifacts").resolve().as_uri()
            exp_id = client.create_experiment(experiment, artifact_location=where,
                                              tags={KIND_TAG: KIND, VIEW_TAG: VIEW})
        else:
            exp_id = exp.experiment_id
            for tag, value in ((KIND_TAG, KIND), (VIEW_TAG, VIEW)):
                if exp.tags.get(tag) != value:  # stores made before the tag
                    client.set_experiment_tag(exp_id, tag, value)
        parents = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = 'grid'", max_results=1)
        parent = parents[0].info.run_id if parents else client.create_run(
            exp_id, run_name="grid", tags={ROLE_TAG: "grid"}).info.run_id
    return client, exp_id, parent


def _log_values(client, run_id, rec: dict, results_dir: Path) -> None:
    """A record's params, metrics, series and files into one run."""
    from mlflow.entities import Metric, Param

    stamp = rec["end_ms"]
    params = [Param(k, v) for k, v in rec["params"].items()]
    for i in range(0, len(params), 100):  # log_batch takes at most 100 params
        client.log_batch(run_id, params=params[i: i + 100])
    everything = [Metric(k, v, stamp, 0) for k, v in rec["metrics"].items()]
    everything += [Metric(name, v, stamp, s) for name, values in rec["series"].items()
                   for s, v in values]
    for i in range(0, len(everything), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=everything[i: i + 900])
    for rel in rec["artifacts"]:
        client.log_artifact(run_id, str(results_dir / rel))
    for rel in rec.get("logs", []):  # records written before logs were attached have none
        if (results_dir / rel).is_file():  # a log is not an output: it may have been cleaned
            client.log_artifact(run_id, str(results_dir / rel), artifact_path="logs")
    for name, rel in rec.get("tables", {}).items():
        import pandas as pd

        client.log_table(run_id, data=pd.read_csv(results_dir / rel),
                         artifact_file=f"tables/{name}.json")


def run_name(rec: dict) -> str:
    """What differs first, the model and seed last: `eval magnitude-s0.5 + lora-r8 (smollm2)`,
    `train lora-r8 on magnitude-s0.5 (smollm2)`, `compress rtn-w4-g64 (smollm2)`."""
    tags, step = rec["tags"], rec["step"]
    verb = VERBS.get(step, step)
    compression, recovery = tags.get("compression"), tags.get("recovery")
    if compression and recovery:
        what = f"{recovery} on {compression}" if step == "train" else f"{compression} + {recovery}"
    elif compression:
        what = compression
    else:
        return f"{verb} {rec['unit']}"
    tail = [tags["model"]] if tags.get("model") else []
    if str(tags.get("seed", "")) not in ("", "0"):
        tail.append(f"seed {tags['seed']}")
    return f"{verb} {what}" + (f" ({', '.join(tail)})" if tail else "")


def _log_step_run(client, exp_id, parent, rec: dict, results_dir: Path) -> str:
    """One step's run, replacing the runs of earlier executions of the same step."""
    key = f"{rec['step']}:{rec['unit']}"
    for old in client.search_runs([exp_id], f"tags.`{KEY_TAG}` = '{key}'"):
        client.delete_run(old.info.run_id)
    run_id = client.create_run(exp_id, run_name=run_name(rec),
                               start_time=rec["start_ms"], tags={
        KEY_TAG: key, ROLE_TAG: "step", "step": rec["step"], "unit": rec["unit"],
        "mlflow.parentRunId": parent, **rec["tags"]}).info.run_id
    _log_values(client, run_id, rec, results_dir)
    kill_point(f"tracking:{rec['step']}")
    client.set_tag(run_id, RECORD_TAG, record_digest(rec))
    client.set_terminated(run_id, end_time=rec["end_ms"])
    return run_id


def _log_grid_run(client, exp_id, parent, rec: dict, results_dir: Path) -> str:
    """The grid's summary onto the parent run, which then ends (a later run's steps reopen
    nothing). MLflow never changes a param, and the grid's params are its config: when the
    config changed since the parent was made, the summary goes onto a new parent, the step runs
    move under it, and the old parent is deleted."""
    parent = _parent_with_params(client, exp_id, parent, rec["params"])
    _log_values(client, parent, rec, results_dir)
    kill_point("tracking:aggregate")
    for k, v in rec["tags"].items():
        client.set_tag(parent, k, v)
    client.set_tag(parent, RECORD_TAG, record_digest(rec))
    client.set_terminated(parent, end_time=rec["end_ms"])
    _log_step_metrics(client, exp_id, rec)
    return parent


def _log_step_metrics(client, exp_id, rec: dict) -> None:
    """The summary's figures of a step onto that step's run (an evaluate run's paired
    difference from dense), so MLflow's own charts and columns show them."""
    from mlflow.entities import Metric

    for key, values in rec.get("step_metrics", {}).items():
        for run in client.search_runs([exp_id], f"tags.`{KEY_TAG}` = '{key}'"):
            client.log_batch(run.info.run_id, metrics=[
                Metric(k, v, rec["end_ms"], 0) for k, v in values.items()])


def _parent_with_params(client, exp_id, parent: str, params: dict) -> str:
    """`parent`, if its params are `params` or it has none yet; else a new parent run holding
    the experiment's step runs (the old one deleted)."""
    logged = client.get_run(parent).data.params
    if not logged or logged == params:
        return parent
    new = client.create_run(exp_id, run_name="grid", tags={ROLE_TAG: "grid"}).info.run_id
    for runs in _step_runs(client, exp_id).values():
        for run in runs:
            client.set_tag(run.info.run_id, "mlflow.parentRunId", new)
    client.delete_run(parent)
    return new


def config_params(config: dict) -> dict:
    """A config as a grid run's params, prefixed as the step runs' are: entries of a list by
    their id or name (`compression.gptq-w4-g128.bits`, `models.smollm2-135m.dtype`), other lists
    as their text."""
    def keyed(value):
        if isinstance(value, dict):
            return {k: keyed(v) for k, v in value.items()}
        keys = [str(v.get("id", v.get("name"))) if isinstance(v, dict) else None
                for v in value] if isinstance(value, list) else []
        if keys and None not in keys and "None" not in keys and len(set(keys)) == len(keys):
            return {key: keyed({k: x for k, x in v.items() if k not in ("id", "name")})
                    for key, v in zip(keys, value)}
        return value  # entries without a unique id or name: the list as its text
    return keyed(config)


# SQLite refuses a writer while another holds the lock longer than its busy timeout: measured
# (bench/tracking.py) with 128 steps logging at once. Retrying is safe: a step's logging first
# replaces any run of the same step, so a half-logged attempt leaves nothing behind.
LOCK_RETRIES = 5


def _transient(err: Exception) -> bool:
    return "database is locked" in str(err) or \
        getattr(err, "error_code", "") == "TEMPORARILY_UNAVAILABLE"


def _reported(what: str, results_dir: Path, log) -> str | None:
    """Run `log()`, again after a transient store error (a locked SQLite file); on any other
    failure, or the last, print what was not logged and where, and return None."""
    import random

    for attempt in range(LOCK_RETRIES):
        try:
            return log()
        except Exception as err:  # noqa: BLE001 - tracking must never cost a result
            if attempt + 1 < LOCK_RETRIES and _transient(err):
                time.sleep(random.uniform(0.5, 2.0) * 2 ** attempt)
                continue
            _warn(what, results_dir, err)
            return None


def _warn(what: str, results_dir: Path, err: Exception) -> None:
    print(f"WARNING: MLflow tracking failed for {what} "
          f"(tracking URI {tracking_uri(results_dir)}): {type(err).__name__}: {err}\n"
          f"The step's results are complete on disk; `make resync` (python -m "
          f"knowledge_recovery.cli.resync) logs them once the store answers again.", file=sys.stderr)
    traceback.print_exception(err, file=sys.stderr)


def log_step(results_dir, experiment: str, rec: dict) -> str | None:
    """Log one step's record as a child run of the grid. Returns the run id, or None if
    tracking failed (the failure is printed, not raised)."""
    results_dir = Path(results_dir)

    def log():
        client, exp_id, parent = _setup(results_dir, experiment)
        return _log_step_run(client, exp_id, parent, rec, results_dir)

    return _reported(f"{rec['step']} {rec['unit']}", results_dir, log)


def log_grid(results_dir, experiment: str, rec: dict) -> str | None:
    """Attach the aggregate's record (tables, plots, mean accuracies) to the parent run."""
    results_dir = Path(results_dir)

    def log():
        client, exp_id, parent = _setup(results_dir, experiment)
        parent = _log_grid_run(client, exp_id, parent, rec, results_dir)
        _purge_replaced(client, exp_id, results_dir)
        return parent

    return _reported("the grid summary", results_dir, log)


def log_report(results_dir, experiment: str, report) -> str | None:
    """Attach the grid's report file to the parent run (again: the file is replaced)."""
    results_dir = Path(results_dir)

    def log():
        client, _, parent = _setup(results_dir, experiment)
        client.log_artifact(parent, str(report))
        return parent

    return _reported("the grid report", results_dir, log)


def _purge_replaced(client, exp_id: str, results_dir: Path) -> None:
    """Delete for good the runs that re-runs replaced (MLflow keeps deleted runs, with their
    artifacts, until `mlflow gc`). A tracking server's database is not reachable from here: on
    a server, its operator runs `mlflow gc`."""
    import subprocess

    from mlflow.entities import ViewType

    uri = tracking_uri(results_dir)
    if is_server(uri):
        return
    replaced = [r.info.run_id for role in ("step", "grid") for r in client.search_runs(
        [exp_id], f"tags.`{ROLE_TAG}` = '{role}'", run_view_type=ViewType.DELETED_ONLY,
        max_results=50000)]
    for i in range(0, len(replaced), 500):
        subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri,
                        "--run-ids", ",".join(replaced[i: i + 500])],
                       check=True, capture_output=True, text=True,
                       env={**os.environ, "MLFLOW_TRACKING_URI": uri})


def _step_runs(client, exp_id: str) -> dict[str, list]:
    """The experiment's live step runs by step key (every page)."""
    found, token = {}, None
    while True:
        page = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = 'step'", max_results=1000,
                                  page_token=token)
        for run in page:
            found.setdefault(run.data.tags.get(KEY_TAG), []).append(run)
        token = page.token
        if not token:
            return found


def _current(runs: list, digest: str, parent: str) -> bool:
    """Exactly one finished run holding this record, under this grid's parent run."""
    return (len(runs) == 1 and runs[0].info.status == "FINISHED"
            and runs[0].data.tags.get(RECORD_TAG) == digest
            and runs[0].data.tags.get("mlflow.parentRunId") == parent)


def resync(results_dir, experiment: str, steps: list[dict], grid: dict | None,
           dry_run: bool = False) -> dict[str, list[str]]:
    """Make the store hold exactly one current run per step record and the grid record on the
    parent: log what is missing, replace what is stale (another execution's run, a run cut off
    while logging, duplicates). Returns {outcome: [step keys]}; with `dry_run`, what it would
    do. Unlike the steps' logging, failures raise: this is the command that repairs them."""
    import mlflow

    results_dir = Path(results_dir)
    outcome = {"current": [], "logged": [], "replaced": [], "not in this grid": []}
    if dry_run:
        client = mlflow.MlflowClient(tracking_uri(results_dir))
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else None
        parents = client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = 'grid'") if exp_id else []
        parent_run = parents[0] if parents else None
    else:
        client, exp_id, parent = _setup(results_dir, experiment)
        parent_run = client.get_run(parent)
    existing = _step_runs(client, exp_id) if exp_id else {}
    parent_id = parent_run.info.run_id if parent_run else None
    for rec in steps:
        key = f"{rec['step']}:{rec['unit']}"
        runs = existing.pop(key, [])
        if parent_id and _current(runs, record_digest(rec), parent_id):
            outcome["current"].append(key)
            continue
        outcome["replaced" if runs else "logged"].append(key)
        if not dry_run:
            _log_step_run(client, exp_id, parent_id, rec, results_dir)
    outcome["not in this grid"] = sorted(k for k in existing if k)
    if grid is not None:
        fresh = parent_run is not None and parent_run.info.status == "FINISHED" and \
            parent_run.data.tags.get(RECORD_TAG) == record_digest(grid)
        outcome["current" if fresh else "logged"].append("aggregate:grid")
        if not fresh and not dry_run:
            _log_grid_run(client, exp_id, parent_id, grid, results_dir)
        elif not dry_run and (outcome["logged"] or outcome["replaced"]):
            _log_step_metrics(client, exp_id, grid)  # onto the step runs logged again
    if not dry_run and outcome["replaced"]:
        _purge_replaced(client, exp_id, results_dir)
    return outcome
