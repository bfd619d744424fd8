"""Atomic outputs and step manifests.

Every step writes into a temporary sibling and renames it into place, so a killed job never
leaves a half-written output that looks finished. A step's manifest records the size and SHA-256
of every file the job wrote, and a hash of its own content (`integrity` checks both).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

VERSIONED_PACKAGES = ["torch", "transformers", "peft", "lm_eval", "datasets", "mlflow", "snakemake"]


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder; on success it replaces `path` in one rename."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary file name that is renamed to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def strip_root(folder: str | os.PathLike, root: str | os.PathLike) -> list[str]:
    """Make the text files of a written folder independent of where the run is: the absolute
    path of the results folder `root` (peft writes the base model's path into its
    adapter_config.json and README.md) becomes a path relative to it. Returns the files changed."""
    # the absolute path first; then the path as the run names it (relative to its directory)
    prefixes = dict.fromkeys([str(Path(root).resolve()) + os.sep, str(Path(root)) + os.sep])
    changed = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix not in (".json", ".md", ".txt", ".yaml") or not path.is_file():
            continue
        text = original = path.read_text(encoding="utf-8")
        for prefix in prefixes:
            text = text.replace(prefix, "")
        if text != original:
            path.write_text(text, encoding="utf-8")
            changed.append(path.name)
    return changed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


FILES_KEY = "files"              # manifest key: {path relative to the manifest: {bytes, sha256}}
CONTENT_KEY = "content_sha256"   # manifest key: the hash of everything else in the manifest


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(path: str | os.PathLike) -> list[Path]:
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def describe_files(outputs, base: str | os.PathLike) -> dict:
    """{path relative to `base`: {bytes, sha256}} for every file of `outputs` (files or folders)."""
    return {str(f.relative_to(base)): {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
            for out in outputs for f in files_under(out)}


def content_hash(data: dict) -> str:
    """The hash of a manifest's content without its own hash, as JSON reads it back."""
    canonical = json.loads(json.dumps({k: v for k, v in data.items() if k != CONTENT_KEY},
                                      default=str))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def write_manifest(path: str | os.PathLike, data: dict, outputs=()) -> None:
    """Write a step's manifest with the sizes and hashes of its `outputs` (which lie beside it)
    and the hash of its own content."""
    data = {**data, FILES_KEY: describe_files(outputs, Path(path).parent)}
    write_json(path, {**data, CONTENT_KEY: content_hash(data)})


def write_json_gz(path: str | os.PathLike, data) -> None:
    """Gzipped JSON, atomically; byte-identical for identical data (no time or name in the
    gzip header)."""
    import gzip

    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def read_json_gz(path: str | os.PathLike):
    import gzip

    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def read_json(path: str | os.PathLike):
    with open(path) as fh:
        return json.load(fh)


def versions(packages=VERSIONED_PACKAGES) -> dict:
    """Python's version and each installed package's (a deploy step: its runtime's)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with '+dirty' for uncommitted
    changes), or None outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def fingerprint(paths, settings) -> str:
    """A hash of some settings and of the files under `paths` (names, sizes, modification
    times): it changes when an input is rebuilt."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in sorted(map(str, paths)):
        files = [Path(root)] if Path(root).is_file() else sorted(Path(root).rglob("*"))
        for f in files:
            if f.is_file():
                st = f.stat()
                digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def remove_state(path, stop) -> None:
    """Remove a finished job's resumable state folder, then its parents while they are empty,
    up to (not including) `stop`."""
    path, stop = Path(path).resolve(), Path(stop).resolve()
    shutil.rmtree(path, ignore_errors=True)
    for parent in path.parents:
        if parent == stop or stop not in parent.parents:
            break
        try:  # only an empty folder goes; jobs running beside this one may still use the others
            parent.rmdir()
        except OSError:  # not empty, or removed by another job meanwhile
            break


def dir_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def kill_point(name: str) -> None:
    """Fault injection for the tests: with KR_KILL_AT=<name>, SIGKILL this process's whole
    process group (the Snakemake run) at this point of a step."""
    if os.environ.get("KR_KILL_AT") == name:
        import signal

        os.killpg(os.getpgrp(), signal.SIGKILL)


class Timer:
    """Wall and CPU seconds of a block (CPU time shows contention that wall time hides)."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.wall0
        self.cpu_s = time.process_time() - self.cpu0

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}wall_s": round(self.wall_s, 3), f"{prefix}cpu_s": round(self.cpu_s, 3)}


def manifest(step: str, settings: dict, **fields) -> dict:
    return {"step": step, "settings": settings, "versions": versions(),
            "argv": sys.argv, "host": platform.node(), **fields}
