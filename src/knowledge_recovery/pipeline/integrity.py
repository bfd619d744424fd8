"""Artifacts are verified, not trusted.

A step's manifest records the size and SHA-256 of each file its job wrote and a hash of its own
content (`artifacts.write_manifest`). Three checks read them:
- a step checks the jobs whose outputs it reads, file hashes included, and refuses a mismatch;
- before a run, the main process checks the whole results folder cheaply (files present, sizes,
  manifests readable and unedited) and sets aside each damaged artifact and everything built
  from it, into `<results>/set_aside/<time>/`. Snakemake does not rebuild a missing file whose
  dependents exist (it reads "missing" as "intermediate, no longer needed"), so the dependents go
  too: the plain re-run then rebuilds exactly those jobs, and nothing is deleted;
- `make verify` (`python -m knowledge_recovery.cli.verify`) checks every file's hash and lists what is
  missing, truncated or altered; what it and the steps find is recorded in `<results>/.damaged.json`
  so that the next run sets it aside as well.
Manifests written before hashes were recorded are read as they are ("unverified").
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from knowledge_recovery.artifacts import (
    CONTENT_KEY,
    FILES_KEY,
    content_hash,
    file_sha256,
    read_json,
    write_json,
)
from knowledge_recovery.pipeline.jobs import Job, Jobs

DAMAGED_RECORD = ".damaged.json"
SET_ASIDE_DIR = "set_aside"


class IntegrityError(RuntimeError):
    pass


@dataclass
class State:
    """One job's outputs on disk."""

    job: Job
    status: str = "ok"   # absent | ok | unverified | damaged
    problems: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.status != "absent"


def check_job(job: Job, full: bool) -> State:
    """Whether a job's outputs are all there and match its manifest; `full` recomputes hashes."""
    present = [o for o in job.outputs if os.path.exists(o)]
    if not present:
        return State(job, "absent")
    problems = [f"{o}: missing" for o in job.outputs if o not in present]
    if job.manifest is None or job.manifest not in present:
        return State(job, "damaged" if problems else "ok", problems)
    try:
        manifest = read_json(job.manifest)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return State(job, "damaged", [*problems, f"{job.manifest}: unreadable ({err})"])
    if CONTENT_KEY not in manifest:  # written before manifests were hashed
        return State(job, "damaged" if problems else "unverified", problems)
    if content_hash(manifest) != manifest[CONTENT_KEY]:
        problems.append(f"{job.manifest}: edited after its job wrote it (its content hash differs)")
    base = Path(job.manifest).parent
    for rel, record in (manifest.get(FILES_KEY) or {}).items():
        path = base / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != record["bytes"]:
            problems.append(f"{path}: truncated or overwritten ({path.stat().st_size} bytes, "
                            f"its manifest says {record['bytes']})")
        elif full and file_sha256(path) != record["sha256"]:
            problems.append(f"{path}: altered (its SHA-256 differs from its manifest's)")
    return State(job, "damaged" if problems else "ok", problems)


def check_inputs(config: dict, inputs, root) -> None:
    """In a step, before it reads them: the jobs that wrote `inputs` are sound, file hashes
    included. A damaged one is recorded for the next run to set aside and rebuild."""
    wanted = {os.path.normpath(str(p)) for p in inputs}
    for job in Jobs(config).graph():
        if not wanted & {os.path.normpath(o) for o in job.outputs}:
            continue
        state = check_job(job, full=True)
        if state.status == "damaged" or state.status == "absent":
            record_damaged(root, {job.name: state.problems or ["missing"]})
            raise IntegrityError(
                f"job '{job.name}' wrote outputs that are no longer what it wrote: "
                f"{'; '.join(state.problems) or 'missing'}. Run the same command again: the "
                f"run sets them aside (with what was built from them) and rebuilds them.")


def record_damaged(root, found: dict[str, list[str]]) -> None:
    path = Path(root) / DAMAGED_RECORD
    try:
        known = read_json(path)
    except (OSError, ValueError):
        known = {}
    write_json(path, {**known, **found})


def recorded_damage(root) -> dict[str, list[str]]:
    try:
        found = read_json(Path(root) / DAMAGED_RECORD)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def scan(config: dict, full: bool = False) -> list[State]:
    return [check_job(job, full) for job in Jobs(config).graph()]


def to_rebuild(states: list[State], recorded: dict[str, list[str]]) -> dict[str, list[str]]:
    """Jobs whose outputs must go, with the reasons: the damaged ones, those recorded as
    damaged, the absent ones that something present was built from, and everything built from
    any of these."""
    producer = {os.path.normpath(o): s for s in states for o in s.job.outputs}
    upstream = {s.job.name: [producer[os.path.normpath(i)] for i in s.job.inputs
                             if os.path.normpath(i) in producer] for s in states}
    present = {s.job.name for s in states if s.present}
    reasons = {s.job.name: s.problems for s in states if s.status == "damaged"}
    reasons.update({name: why for name, why in recorded.items() if name in present})
    for s in states:  # in graph order: upstream first
        for up in upstream[s.job.name]:
            if up.job.name in reasons:
                reasons.setdefault(s.job.name, [f"built from {up.job.name}, which is rebuilt"])
            elif not up.present and s.present:
                reasons.setdefault(s.job.name, [f"built from {up.job.name}, whose outputs are "
                                                f"gone (deleted, or new in the config)"])
    return {name: why for name, why in reasons.items() if name in present}


def set_aside_damaged(config: dict, root, log=print) -> dict[str, list[str]]:
    """Before a run: move what must be rebuilt to `<root>/set_aside/<time>/`, keeping its paths."""
    root = Path(root)
    states = scan(config)
    rebuild = to_rebuild(states, recorded_damage(root))
    if rebuild:
        dest = root / SET_ASIDE_DIR / time.strftime("%Y%m%d-%H%M%S")
        for state in states:
            if state.job.name not in rebuild:
                continue
            for out in state.job.outputs:
                if os.path.exists(out):
                    target = dest / Path(out).resolve().relative_to(root.resolve())
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(out, target)
        lines = [f"  {name}: {'; '.join(why)}" for name, why in rebuild.items()]
        log(f"Set aside {len(rebuild)} job(s)' outputs into {dest}; this run rebuilds them:\n"
            + "\n".join(lines))
    (root / DAMAGED_RECORD).unlink(missing_ok=True)
    prune_set_aside(root, config["set_aside_keep"], log)
    return rebuild


def prune_set_aside(root, keep: int, log=print) -> list[str]:
    """Keep the newest `keep` sets under `<root>/set_aside/` (named by time, so by name)."""
    folder = Path(root) / SET_ASIDE_DIR
    sets = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    pruned = sets[:-keep] if len(sets) > keep else []
    for old in pruned:
        shutil.rmtree(old)
    if pruned:
        log(f"Removed {len(pruned)} older set(s) of damaged outputs from {folder} (set_aside_keep: "
            f"{keep}): {', '.join(p.name for p in pruned)}")
    return [p.name for p in pruned]


def report(states: list[State]) -> str:
    counts: dict[str, int] = {}
    lines = []
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
        if s.status == "damaged":
            lines += [f"DAMAGED  {s.job.name}"] + [f"    {p}" for p in s.problems]
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return "\n".join([*lines, f"{len(states)} jobs: {summary}"])
