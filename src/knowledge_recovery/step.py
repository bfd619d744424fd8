"""What every workflow step shares: its log file, thread count, offline mode, results root, the
check of its inputs against their manifests, and the end: manifest written, record logged."""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

from . import artifacts, integrity, tracking
from .paths import Layout


@contextlib.contextmanager
def step(smk, offline: bool = True):
    """Run a step body with stdout/stderr in the rule's log, thread count set, offline env."""
    from .evaluation import set_offline

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


def shell_job(argument: str) -> tuple[dict, SimpleNamespace]:
    """(the job, a stand-in for Snakemake's `snakemake` object) from the one JSON argument a
    `shell:` rule passes to a step that runs in another environment (rules/deploy.smk)."""
    import json

    job = json.loads(argument)
    return job, SimpleNamespace(input=Files(**job["input"]), output=Files(**job["output"]),
                                log=[job["log"]], threads=job["threads"], config=job["config"])


def results_root(smk) -> Path:
    """The experiment's results folder, where the default MLflow store lives."""
    return Path(Layout(smk.config).root)


def finish(smk, manifest_path, manifest: dict, outputs, record: dict) -> None:
    """Write the step's manifest (hashes of `outputs`, and the tracking record, which
    `resync` replays), then log the record to MLflow."""
    artifacts.write_manifest(manifest_path, {**manifest, tracking.RECORD_KEY: record}, outputs)
    tracking.log_step(results_root(smk), smk.config["experiment"], record)


def record(smk, step_name: str, unit: str, **fields) -> dict:
    """`tracking.record` for this step's results folder, with the rule's log attached (as far
    as it is written when the record is logged: everything but the step's last lines)."""
    return tracking.record(results_root(smk), step_name, unit, logs=list(smk.log), **fields)
