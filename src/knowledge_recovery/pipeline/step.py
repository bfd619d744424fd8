"""What every workflow step shares: its log file, thread count, offline mode, results root, the
check of its inputs against their manifests, and the end: manifest written, record logged."""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

from knowledge_recovery import artifacts
from knowledge_recovery.pipeline import integrity
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.tracking import mlflow_runs


@contextlib.contextmanager
def step(smk, offline: bool = True):
    """Run a step body with stdout/stderr in the rule's log, thread count set, offline env."""
    from knowledge_recovery.evaluation.harness import set_offline

    if offline:
        set_offline()
    # Set before torch is imported (lazily, by the steps that need it): one env, every library.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(max(1, smk.threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, smk.threads))
    log = open(smk.log[0], "w", buffering=1) if smk.log else None
    saved = sys.stdout, sys.stderr
    if log:
        sys.stdout = sys.stderr = log
    try:
        # what this job reads must be what the jobs before it wrote (file hashes)
        integrity.check_inputs(smk.config, list(smk.input), results_root(smk))
        yield
    except BaseException:
        traceback.print_exc()  # into the rule's log, beside the step's own output
        raise
    finally:
        sys.stdout, sys.stderr = saved
        if log:
            log.close()


class Files(SimpleNamespace):
    """Named files that also iterate, as Snakemake's input and output objects do."""

    def __iter__(self):
        return iter(vars(self).values())


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def in_deploy_environment(smk, script):
    """The job of a step that needs the deploy environment (optimum-intel, OpenVINO; its pins do
    not fit the main one's): Snakemake's `smk` when this is that environment (`--sdm conda`);
    else, under Snakemake, `script` (the step's own file) is run with `smk.params.python` on a file
    holding the job, and this process ends with its exit status; run that way (`smk` None), the
    job is read back from the file. Only the settings in `params` make Snakemake re-run it."""
    import json
    import subprocess
    import tempfile

    if smk is None:
        job = json.loads(Path(sys.argv[1]).read_text())
        return SimpleNamespace(input=Files(**job["input"]), output=Files(**job["output"]),
                               log=job["log"], threads=job["threads"], config=job["config"],
                               params=SimpleNamespace(**job["params"]))
    if _has("optimum.intel") and _has("openvino"):
        return smk
    job = {"input": dict(smk.input.items()), "output": dict(smk.output.items()),
           "log": list(smk.log), "threads": smk.threads, "config": smk.config,
           "params": {k: v for k, v in smk.params.items() if k != "python"}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        code = subprocess.run([smk.params.python, str(script), f.name]).returncode
    finally:
        os.unlink(f.name)
    raise SystemExit(code)


def results_root(smk) -> Path:
    """The experiment's results folder, where the default MLflow store lives."""
    return Path(Layout(smk.config).root)


def finish(smk, manifest_path, manifest: dict, outputs, record: dict) -> None:
    """Write the step's manifest (hashes of `outputs`, and the tracking record, which
    `resync` replays), then log the record to MLflow."""
    artifacts.write_manifest(manifest_path, {**manifest, mlflow_runs.RECORD_KEY: record}, outputs)
    mlflow_runs.log_step(results_root(smk), smk.config["experiment"], record)


def record(smk, step_name: str, unit: str, **fields) -> dict:
    """`mlflow_runs.record` for this step's results folder, with the rule's log attached (as far
    as it is written when the record is logged: everything but the step's last lines)."""
    return mlflow_runs.record(results_root(smk), step_name, unit, logs=list(smk.log), **fields)
