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
            "checkout": str(Path(checkout).resolve()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "workdir": os.getcwd(), "epoch": time.time()}


def owner(root) -> dict | None:
    return owner_file(Path(root) / LOCK_NAME)


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
    cancelled = cancel_orphaned_slurm_jobs(who, log)
    (root / LOCK_NAME).unlink(missing_ok=True)
    log(f"The last run on {root} (pid {who.get('pid')}, started {who.get('since')}) ended "
        f"without cleaning up; removed its locks{': ' + ', '.join(cleared) if cleared else ''}"
        f"{f'; cancelled its {len(cancelled)} SLURM job(s) still queued or running' if cancelled else ''}.")


def cancel_orphaned_slurm_jobs(who: dict, log=print, timeout: float = 120) -> list[str]:
    """SLURM jobs that a killed run submitted go on after its head is gone, but Snakemake marked
    their outputs incomplete and the next run redoes them (training from its checkpoint,
    evaluation from its finished tasks): cancel them, so that two jobs never write one output.
    They are the jobs of this user with the dead run's working directory, submitted after it
    started, and wait until SLURM has ended them."""
    import shutil
    import subprocess
    from datetime import datetime

    if not shutil.which("squeue") or "epoch" not in who or who.get("workdir") != os.getcwd():
        return []
    user = os.environ.get("USER") or str(os.getuid())

    def orphans() -> list[str]:
        proc = subprocess.run(["squeue", "-h", "-u", user, "-o", "%i|%Z|%V|%k"],
                              capture_output=True, text=True)
        ids = []
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            job, workdir, submitted, comment = (line.split("|", 3) + ["", "", ""])[:4]
            try:
                when = datetime.fromisoformat(submitted).timestamp()
            except ValueError:
                continue
            if workdir == who["workdir"] and when >= who["epoch"] - 1 and comment.startswith("rule_"):
                ids.append(job)
        return ids

    jobs = orphans()
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True)
        log(f"Cancelling SLURM jobs {', '.join(jobs)} of the killed run; this run redoes them.")
        deadline = time.time() + timeout
        while set(jobs) & set(orphans()) and time.time() < deadline:
            time.sleep(1)
    return jobs


def claim(root, checkout) -> None:
    """When jobs are about to run: take the results folder, or stop if a live run has it. The
    lock is created exclusively (a hard link of a written file: no reader sees it half written),
    so of two runs claiming at one instant exactly one goes on; a dead owner's lock is moved
    aside by one claimant only (a rename), and a live lock moved by mistake is put back."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_NAME
    mine = root / f"{LOCK_NAME}.{os.getpid()}"
    mine.write_text(json.dumps(_me(checkout)))
    try:
        for _ in range(10):
            try:
                os.link(mine, lock)
                return
            except FileExistsError:
                pass
            who = owner(root)
            if who is None:  # released between our attempt and our read
                continue
            if _is_mine(who):
                os.replace(mine, lock)  # this process claimed before (a second onstart)
                return
            if alive(who):
                raise _in_use(root, who)
            aside = root / f"{LOCK_NAME}.stale.{os.getpid()}"
            try:
                os.rename(lock, aside)
            except FileNotFoundError:  # another claimant moved it first
                continue
            moved = owner_file(aside)
            if moved is not None and moved != who and alive(moved):
                try:  # a live claimant's fresh lock: give it back
                    os.link(aside, lock)
                finally:
                    aside.unlink(missing_ok=True)
                raise _in_use(root, moved)
            aside.unlink(missing_ok=True)
        raise RuntimeError(f"could not claim results folder {root}: its lock {lock} keeps "
                           f"changing hands")
    finally:
        mine.unlink(missing_ok=True)


def _is_mine(who: dict) -> bool:
    return who.get("pid") == os.getpid() and who.get("host") == socket.gethostname()


def owner_file(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _in_use(root: Path, who: dict) -> RuntimeError:
    return RuntimeError(
        f"results folder {root} is in use by another run (pid {who.get('pid')} on "
        f"{who.get('host')}, from {who.get('checkout')}, since {who.get('since')}). Wait for "
        f"it to finish; if it is gone (e.g. another host), delete {root / LOCK_NAME}.")


def release(root, started: float, snakemake_dir=".snakemake") -> None:
    """When the run ends: give the results folder back, and remove the step scripts that killed
    jobs left in `.snakemake/scripts` (Snakemake deletes a script only when its job ends)."""
    who = owner(root)
    if who is not None and _is_mine(who):
        (Path(root) / LOCK_NAME).unlink(missing_ok=True)
    remove_leftover_scripts(started, snakemake_dir)


def remove_leftover_scripts(started: float, snakemake_dir=".snakemake") -> list[str]:
    """Remove `.snakemake/scripts/tmp*.py` written before this run started and run by no process
    on this host: what killed jobs of earlier runs left behind."""
    scripts = Path(snakemake_dir) / "scripts"
    if not scripts.is_dir():
        return []
    in_use = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            in_use.update(os.path.basename(arg) for arg in cmdline.read_bytes().decode(
                errors="replace").split("\0"))
        except OSError:  # the process ended meanwhile
            continue
    removed = []
    for script in scripts.glob("tmp*.py"):
        try:
            if script.name not in in_use and script.stat().st_mtime < started:
                script.unlink()
                removed.append(script.name)
        except OSError:
            continue
    return removed
