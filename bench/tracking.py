"""MLflow under load: N steps logging at once, into the SQLite store and through a server.

    .venv/bin/python bench/tracking.py                       # N = 8, 32, 128; both stores
    .venv/bin/python bench/tracking.py --processes 8 32 --stores server

Each of N processes logs what an evaluate step of the paper grid logs (40 params, 60 metrics,
one 10 kB results file, the run created under the grid's parent run) with `mlflow_runs.log_step`,
the steps' own code: store set-up, file lock and retries on a locked SQLite file included. They
are forked from one process that has imported MLflow (128 fresh interpreters would not fit in
memory here), get their own store clients, and start logging at the same instant. The store and
experiment exist beforehand, as in a running grid. Reported per store and N: runs lost (a step
whose run is missing or unfinished; goal 0), duplicates (goal 0), tracking errors, and the wall
and CPU seconds a step spent on tracking (p50 / p99): on 2 cores the wall time is mostly waiting for a core.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow  # noqa: F401 - imported once, before forking, and shared copy-on-write

from knowledge_recovery.tracking import mlflow_runs
from knowledge_recovery.tracking.mlflow_server import Server

EXPERIMENT = "load"


def evaluate_sized_record(root: Path, i: int) -> dict:
    artifact = root / "files" / f"{i}.json"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(json.dumps({"results": {f"task{t}": {"acc": 0.5, "acc_stderr": 0.01}
                                                for t in range(400)}})[:10_000])
    return mlflow_runs.record(
        root, "evaluate", f"model/compression-{i}/recovery",
        tags={"model": "model", "compression": f"compression-{i}", "recovery": "recovery"},
        params={f"setting{k}": k for k in range(40)},
        metrics={f"task{t}.acc": 0.5 + t / 1000 for t in range(60)}, artifacts=[artifact])


def one_step(root: Path, uri: str, i: int, start_at: float) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    rec = evaluate_sized_record(root, i)
    time.sleep(max(0.0, start_at - time.time()))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run_id = mlflow_runs.log_step(root, EXPERIMENT, rec)
    out = {"run_id": run_id, "wall_s": time.perf_counter() - wall0,
           "cpu_s": time.process_time() - cpu0}
    (root / "out" / f"{i}.json").write_text(json.dumps(out))


def prepare(root: Path, uri: str) -> None:
    """Store, experiment and parent run, made by a child process (nothing opened here before
    the fork)."""
    def setup():
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow_runs._setup(root, EXPERIMENT)
    proc = multiprocessing.get_context("fork").Process(target=setup)
    proc.start()
    proc.join()


def trial(root: Path, uri: str, n: int) -> dict:
    root.mkdir(parents=True)
    (root / "out").mkdir()
    prepare(root, uri)
    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 2 + n * 0.02
    procs = [ctx.Process(target=one_step, args=(root, uri, i, start_at)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    outs = [json.loads(f.read_text()) for f in (root / "out").glob("*.json")]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`kr.role` = 'step'", max_results=5000)
    keys = [r.data.tags["kr.step_key"] for r in runs]
    finished = {r.data.tags["kr.step_key"] for r in runs
                if r.info.status == "FINISHED" and mlflow_runs.RECORD_TAG in r.data.tags}
    walls = sorted(o["wall_s"] for o in outs)
    cpus = sorted(o["cpu_s"] for o in outs)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    return {"n": n, "lost": n - len(finished), "duplicates": len(keys) - len(set(keys)),
            "errors": sum(o["run_id"] is None for o in outs) + (n - len(outs)),
            "wall_p50": statistics.median(walls), "wall_p99": pct(walls, 0.99),
            "cpu_p50": statistics.median(cpus), "cpu_p99": pct(cpus, 0.99),
            "artifacts_ok": all(client.list_artifacts(r.info.run_id) for r in runs)}


def warm_up(root: Path) -> None:
    """Load MLflow's lazily imported store and artifact modules here, once, so that no trial's
    steps pay for imports (the children share them); this store is never used again."""
    import mlflow.store.artifact.http_artifact_repo  # noqa: F401
    import mlflow.store.tracking.rest_store  # noqa: F401

    root.mkdir()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    mlflow_runs.log_step(root, EXPERIMENT, evaluate_sized_record(root, 0))
    del os.environ["MLFLOW_TRACKING_URI"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "server"],
                        choices=["sqlite", "server"])
    parser.add_argument("--server-workers", type=int, default=4)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kr-tracking-bench-") as tmp:
        warm_up(Path(tmp) / "warm-up")
        for store in args.stores:
            for n in args.processes:
                root = Path(tmp) / f"{store}-{n}"
                if store == "sqlite":
                    rows.append({"store": "sqlite", **trial(root, f"sqlite:///{root}/mlflow.db", n)})
                    continue
                server = Server(Path(tmp) / f"server-store-{n}", workers=args.server_workers).start()
                try:
                    rows.append({"store": f"server ({args.server_workers} workers)",
                                 **trial(root, server.uri, n)})
                finally:
                    server.stop()
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"{os.cpu_count()} CPUs; one evaluate step's logging each (40 params, 60 metrics, a 10 kB file)")
    print("| store | steps at once | lost | duplicates | errors | wall p50 / p99 (s) | "
          "CPU p50 / p99 (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['store']} | {r['n']} | {r['lost']} | {r['duplicates']} | {r['errors']} | "
              f"{r['wall_p50']:.2f} / {r['wall_p99']:.2f} | {r['cpu_p50']:.2f} / {r['cpu_p99']:.2f} |"
              + ("" if r["artifacts_ok"] else " (files missing)"))


if __name__ == "__main__":
    main()
