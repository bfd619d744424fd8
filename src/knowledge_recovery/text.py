"""Text for recovery training and calibration: built-in, local files, or a hub dataset.

The download step writes the chosen text to one plain-text file; later steps read only that.
"""
from __future__ import annotations

import re
from pathlib import Path


def python_reference() -> str:
    """The Python Language Reference topics shipped with CPython (pydoc_data): real English
    prose, offline on every machine, fixed for a given Python minor version."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = [ln.strip() for ln in block.splitlines()]
            # Keep prose; drop code samples and tables (they are indented or symbol-heavy).
            if block.startswith("      ") or any(ln.startswith(">>>") for ln in lines):
                continue
            text = " ".join(ln for ln in lines if ln)
            if len(text) > 80 and sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.85:
                paragraphs.append(text)
    return "\n\n".join(paragraphs)


def load_text(spec: dict, base_dir: str | Path = ".") -> str:
    """Return the text a `text:` config entry names, cut to max_chars."""
    source = spec["source"]
    if source == "builtin":
        text = python_reference()
    elif source == "files":
        text = "\n\n".join(Path(base_dir, p).read_text(encoding="utf-8") for p in spec["paths"])
    else:
        import datasets

        ds = datasets.load_dataset(spec["path"], spec.get("name"), split=spec["split"])
        parts, size = [], 0
        for row in ds:
            parts.append(row[spec["field"]])
            size += len(parts[-1])
            if size >= spec["max_chars"]:
                break
        text = "\n\n".join(p for p in parts if p.strip())
    return text[: spec["max_chars"]]
