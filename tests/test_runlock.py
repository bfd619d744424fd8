"""The run lock: of runs claiming one results folder at the same instant exactly one goes on,
whether the folder is free or holds a dead run's lock."""
import json
import subprocess
import sys
import time

import pytest

CLAIM = """
import sys, time
from knowledge_recovery.pipeline import runlock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    runlock.claim(sys.argv[1], ".")
    print("claimed", flush=True)
except RuntimeError as err:
    print("refused" if "in use by another run" in str(err) else f"error {err}", flush=True)
time.sleep(3)  # stay alive: a claimant that ended would leave a stale lock to the others
"""


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale lock"])
def test_of_runs_claiming_at_once_exactly_one_goes_on(tmp_path, stale):
    from knowledge_recovery.pipeline import runlock

    root = tmp_path / "results"
    if stale:  # a killed run's lock: its pid ended
        root.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        (root / runlock.LOCK_NAME).write_text(json.dumps(
            {"host": __import__("socket").gethostname(), "pid": int(dead), "start": "1"}))
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(root), str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outs == ["claimed"] + ["refused"] * 5, outs
    assert not list(root.glob(f"{runlock.LOCK_NAME}.*")), "temporary files left"
