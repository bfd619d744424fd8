"""An MLflow tracking server for a cluster's jobs: SQLite behind one server process, artifacts
proxied by the server into a folder of its own.

    python -m knowledge_recovery.tracking.mlflow_server --store DIR [--host 0.0.0.0] [--port 5000]

then, for the jobs: `export MLFLOW_TRACKING_URI=http://<this host>:<port>`. The tests and
bench/tracking.py start it the same way (`serve`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(store: Path, host: str, port: int, workers: int,
            allowed_hosts: str | None = None) -> list[str]:
    store = Path(store).resolve()
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--workers", str(workers), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "mlartifacts"),
            *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]


def cluster_hosts(port: int) -> str:
    """The Host headers jobs on other nodes send: this host's names (MLflow 3 answers only
    localhost and private IPs by default, and refuses a host name with 403), and the private
    address ranges. A setting, not a bug: it stays while MLflow checks Host headers."""
    names = {socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"}
    return ",".join([*(f"{n}{p}" for n in sorted(names) for p in ("", f":{port}")),
                     "10.*", "172.*", "192.168.*"])


def wait_until_up(uri: str, timeout: float = 120, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no MLflow server answered at {uri} within {timeout:.0f} s")


class Server:
    """One `mlflow server` process group; stop() and start() again keep its store and port."""

    def __init__(self, store, port: int | None = None, workers: int = 2, log=None):
        self.store, self.port, self.workers = Path(store), port or free_port(), workers
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = log or (self.store / "server.log")
        self.proc = None

    def start(self) -> "Server":
        self.store.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(command(self.store, "127.0.0.1", self.port, self.workers),
                                         stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        wait_until_up(self.uri, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def serve(store, **kwargs):
    server = Server(store, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="folder for the database and artifacts")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other nodes")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--allowed-hosts", help="Host headers to answer (default: this host's "
                        "names and private addresses)")
    args = parser.parse_args(argv)
    Path(args.store).mkdir(parents=True, exist_ok=True)
    name = socket.getfqdn()
    name = socket.gethostname() if name.startswith("localhost") else name
    print(f"export MLFLOW_TRACKING_URI=http://{name}:{args.port}", flush=True)
    os.execv(sys.executable, command(Path(args.store), args.host, args.port, args.workers,
                                     args.allowed_hosts or cluster_hosts(args.port)))


if __name__ == "__main__":
    raise SystemExit(main())
