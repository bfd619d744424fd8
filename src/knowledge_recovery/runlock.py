"""One Snakemake run at a time per results folder, and no stale lock left to stop the next one.

Snakemake locks its working directory and, after a kill, refuses every later run until
`--unlock`; it does not see a second checkout writing to the same results folder. The run that
executes jobs writes `<results>/.run.lock` (host, pid, process start time, checkout) when it
starts and removes it when it ends. A later run whose lock owner is gone removes that lock and
Snakemake's stale locks on the same folder; a live owner elsewhere makes a new run stop before
its first job.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".run.lock"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which a reused pid lacks."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me(checkout) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "checkout": str(Path(checkout).resolve()), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def owner(root) -> dict | None:
    try:
        return json.loads((Path(root) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def alive(who: dict) -> bool:
    """Whether the lock's owner still runs. On another host it cannot be told: assume it does."""
    if who.get("host") != socket.gethostname():
        return True
    return who.get("start") is not None and _start_time(int(who.get("pid", -1))) == who["start"]


def in_use(root) -> bool:
    """Whether a live run holds the results folder."""
    who = owner(Path(root).resolve())
    return who is not None and alive(who)


def clear_if_stale(root, snakemake_dir=".snakemake", log=print) -> None:
    """Before Snakemake locks: if the last run on this results folder was killed (its lock's
    owner is gone), remove its lock and Snakemake's locks on files under the folder."""
    root = Path(root).resolve()
    who = owner(root)
    if who is None or alive(who):
        return
    locks = Path(snakemake_dir) / "locks"
    cleared = []
    for lock in sorted(locks.glob("*.lock")) if locks.is_dir() else []:
        paths = [ln for ln in lock.read_text().splitlines() if ln.strip()]
        if paths and all(root in Path(p).resolve().parents for p in paths):
            lock.unlink()
            cleared.append(lock.name)
    (root / LOCK_NAME).unlink(missing_ok=True)
    log(f"The last run on {root} (pid {who.get('pid')}, started {who.get('since')}) ended "
        f"without cleaning up; removed its locks{': ' + ', '.join(cleared) if cleared else ''}.")


def claim(root, checkout) -> None:
    """When jobs are about to run: take the results folder, or stop if a live run has it."""
    root = Path(root).resolve()
    who = owner(root)
    if who is not None and alive(who) and who.get("pid") != os.getpid():
        raise RuntimeError(
            f"results folder {root} is in use by another run (pid {who.get('pid')} on "
            f"{who.get('host')}, from {who.get('checkout')}, since {who.get('since')}). Wait for "
            f"it to finish; if it is gone (e.g. another host), delete {root / LOCK_NAME}.")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{LOCK_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(_me(checkout)))
    os.replace(tmp, root / LOCK_NAME)


def release(root) -> None:
    who = owner(root)
    if who is not None and who.get("pid") == os.getpid() and who.get("host") == socket.gethostname():
        (Path(root) / LOCK_NAME).unlink(missing_ok=True)
