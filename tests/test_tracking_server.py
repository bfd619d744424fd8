"""MLflow through a real tracking server: the smoke grid logging to `mlflow server` locally and
through the single-node SLURM, a server outage in the middle of a grid, and `resync`."""
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow_store import snapshot
from test_slurm import grid, require_slurm, slurm_command

from knowledge_recovery.cli import resync
from knowledge_recovery.pipeline import launch
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.tracking.mlflow_server import Server

pytestmark = pytest.mark.e2e
EXPERIMENT = "smoke"


def run_resync(folder: Path, uri: str, *args) -> str:
    proc = subprocess.run([sys.executable, "-m", "knowledge_recovery.cli.resync", "--configfile",
                           "slurm.yaml", *args], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def assert_grid_tracked(folder: Path, uri: str, monkeypatch) -> dict:
    """One finished run per step of the grid, holding exactly the step's record (tags, params,
    every metric and series), its files downloadable through the store, and the parent run
    finished with the grid's summary. Returns the store's snapshot."""
    monkeypatch.chdir(folder)
    steps, summary, left_out = resync.records(load_config("slurm.yaml", check_models=False))
    assert not left_out and summary is not None
    store = snapshot(uri, EXPERIMENT)
    assert set(store) == {f"{r['step']}:{r['unit']}" for r in steps} | {"grid"}
    client = mlflow.MlflowClient(uri)
    runs = {r.data.tags.get("kr.step_key", "grid"): r for r in client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id])}
    root = folder / "results" / EXPERIMENT
    for rec in [*steps, summary]:
        key = "grid" if rec is summary else f"{rec['step']}:{rec['unit']}"
        logged = store[key]
        assert logged["status"] == "FINISHED", key
        # an evaluate run also holds what the grid's summary says of its cell (delta_vs_dense)
        assert {m: v[-1][1] for m, v in logged["metrics"].items()} == \
            {**rec["metrics"], **{s: v[-1][1] for s, v in rec["series"].items()},
             **summary.get("step_metrics", {}).get(key, {})}, key
        assert {s: logged["metrics"][s] for s in rec["series"]} == \
            {s: [tuple(p) for p in v] for s, v in rec["series"].items()}, key
        assert logged["params"] == rec["params"], key
        assert rec["tags"].items() <= logged["tags"].items(), key
        for rel in rec["artifacts"]:  # reachable through the store, byte for byte
            got = client.download_artifacts(runs[key].info.run_id, Path(rel).name,
                                            str(folder / "downloads" / key.replace("/", "_")))
            assert Path(got).read_bytes() == (root / rel).read_bytes(), (key, rel)
    assert len([k for k in store if k.startswith("evaluate:")]) == 3  # one per cell
    assert len(summary["step_metrics"]) == 2  # every cell but dense
    return store


@pytest.fixture()
def server(tmp_path):
    """A tracking server whose database and artifacts live in the grid's results folder."""
    srv = Server(tmp_path / "grid" / "results" / EXPERIMENT / "mlflow-server").start()
    yield srv
    srv.stop()


def test_the_grid_logs_to_a_tracking_server_and_resync_copies_it_to_another_store(
        tmp_path, server, monkeypatch):
    folder = tmp_path / "grid"
    proc = subprocess.run(launch.grid_command(folder, grid(folder)), capture_output=True,
                          text=True, timeout=1200,
                          env={**os.environ, "MLFLOW_TRACKING_URI": server.uri})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert not (folder / "results" / EXPERIMENT / "mlflow.db").exists()  # all went to the server
    live = assert_grid_tracked(folder, server.uri, monkeypatch)
    out = run_resync(folder, server.uri)
    assert "0 run(s) were logged" in out and "0 run(s) were replaced" in out, out
    assert snapshot(server.uri, EXPERIMENT) == live
    # the finished grid moved into another store equals what its steps logged live
    other = f"sqlite:///{tmp_path / 'other.db'}"
    out = run_resync(folder, other)
    assert f"{len(live)} run(s) were logged" in out, out
    assert snapshot(other, EXPERIMENT) == live


def _step_runs(uri: str) -> list[str]:
    try:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        return [] if exp is None else [r.data.tags["kr.step_key"] for r in client.search_runs(
            [exp.experiment_id], "tags.`kr.role` = 'step'")]
    except Exception:  # noqa: BLE001 - the server is still starting up
        return []


def test_a_server_outage_mid_grid_costs_no_result_and_resync_restores_every_run(
        tmp_path, server, monkeypatch):
    """Through SLURM: the server stops once the compress job (on SLURM) has logged; the grid
    finishes; after a restart `resync` logs what is missing, and a second resync changes
    nothing."""
    require_slurm()
    folder = tmp_path / "grid"
    run = subprocess.Popen(slurm_command(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env={**os.environ, "MLFLOW_TRACKING_URI": server.uri})
    deadline = time.time() + 900
    while not any(k.startswith("compress:") for k in _step_runs(server.uri)):
        assert run.poll() is None, "the grid ended before its compress job logged"
        assert time.time() < deadline, "no compress run reached the server"
        time.sleep(1)
    server.stop()
    output, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, output[-6000:]
    logs = "".join(p.read_text() for p in (folder / "results" / EXPERIMENT / "logs").rglob("*.log"))
    assert "MLflow tracking failed" in logs and "make resync" in logs
    server.start()  # same store, same port
    before = set(_step_runs(server.uri))
    out = run_resync(folder, server.uri)
    assert "were logged" in out and not out.count(" 0 run(s) were logged"), out
    restored = assert_grid_tracked(folder, server.uri, monkeypatch)
    assert before < set(restored) - {"grid"}
    out = run_resync(folder, server.uri)
    assert "0 run(s) were logged" in out and "0 run(s) were replaced" in out, out
    assert snapshot(server.uri, EXPERIMENT) == restored


def test_the_cluster_server_answers_jobs_that_name_its_host(tmp_path):
    """`python -m knowledge_recovery.tracking.mlflow_server` (the README's recipe): MLflow 3 refuses a
    request whose Host header is a host name unless told to accept it; jobs on other nodes send
    this host's name."""
    import socket
    import urllib.error
    import urllib.request

    from knowledge_recovery.tracking.mlflow_server import free_port, wait_until_up

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "knowledge_recovery.tracking.mlflow_server", "--store",
                             str(tmp_path / "store"), "--port", str(port), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc=proc)

        def status(host: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
                headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return reply.status
            except urllib.error.HTTPError as err:
                return err.code
        assert status(f"{socket.gethostname()}:{port}") == 200
        assert status(f"10.1.2.3:{port}") == 200
        assert status("elsewhere.example.com") == 403
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    assert f":{port}" in proc.stdout.read().splitlines()[0]  # the export line
