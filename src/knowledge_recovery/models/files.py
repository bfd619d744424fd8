"""Local model files checked before any job reads them: a `.gguf` file's header and tensor
table, a safetensors file's header, each tensor's byte range against the file's size. Nothing
is loaded (a damaged file otherwise fails minutes later, deep inside a conversion)."""
from __future__ import annotations

import json
import struct
from pathlib import Path


def gguf_problem(path: Path) -> str | None:
    """What is wrong with a .gguf file (unreadable header or tensor table, a tensor past the
    end of the file), or None."""
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is a damaged file
        return f"not a readable GGUF file ({type(err).__name__}: {err})"
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            return (f"tensor {tensor.name!r} ends at byte {end:,}, past the end of the file "
                    f"({size:,} bytes): the file is truncated")
    return None


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file (a header that is not JSON, a tensor whose bytes
    lie outside the file), or None."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"its header claims {length:,} bytes, more than the file holds ({size:,})"
        try:
            header = json.loads(fh.read(length))
        except ValueError as err:
            return f"its header is not JSON ({err})"
    data = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has no data_offsets in the header"
        if not 0 <= start <= end <= data:
            return (f"tensor {name!r} lies at bytes {start:,}-{end:,} of a data section of "
                    f"{data:,}: the file is truncated or damaged")
    return None


def model_files_problem(path: Path) -> str | None:
    """The first damaged model file at `path` (a .gguf file, or a folder's .safetensors files)."""
    if path.suffix == ".gguf":
        problem = gguf_problem(path)
        return problem and f"{path}: {problem}"
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else []:
        problem = safetensors_problem(file)
        if problem:
            return f"{file}: {problem}"
    return None
