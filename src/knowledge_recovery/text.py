"""Text for recovery training and calibration: built-in, local files, or a hub dataset.

The download step writes the chosen text to one plain-text file; later steps read only that.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path


def text_id(spec: dict) -> str:
    """The id of a text source other than the grid's `text` (an IDP curated pool's texts): its
    kind and a hash of its settings, so that two entries naming one source share its file."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{spec['source']}-{digest}"


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


# Pure-Python standard-library modules, in this order: source code (code, comments, docstrings)
# as a text domain of its own, offline on every machine, fixed for a given Python minor version.
PYTHON_SOURCE_MODULES = ("argparse", "dataclasses", "functools", "textwrap", "fractions",
                         "statistics", "pathlib", "shutil", "tempfile", "inspect", "typing",
                         "string", "heapq", "bisect", "calendar", "difflib", "csv", "configparser",
                         "gettext", "ipaddress", "logging/__init__", "json/decoder", "json/encoder")


def python_source() -> str:
    """The source files of PYTHON_SOURCE_MODULES, one after the other."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join((stdlib / f"{name}.py").read_text(encoding="utf-8")
                        for name in PYTHON_SOURCE_MODULES)


BUILTIN = {"python-reference": python_reference, "python-source": python_source}


def _read_files(paths: list[Path], max_chars: int) -> str:
    """The files joined by blank lines, cut to max_chars, reading only that much."""
    parts, left = [], max_chars
    for i, path in enumerate(paths):
        if left <= 0:
            break
        if i:
            parts.append("\n\n"[:left])
            left -= len(parts[-1])
        with open(path, encoding="utf-8") as fh:
            parts.append(fh.read(left))
        left -= len(parts[-1])
    return "".join(parts)


def sandboxed(template: str):
    """A template from a config, compiled as the project renders one (a task's documents, a
    text's JSON Lines rows): Jinja's immutable sandbox, a missing field an error."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(template)


class RowError(ValueError):
    """A row of a JSON Lines text file that is not a JSON object."""


def _rows(path: Path):
    """The rows of a JSON Lines file with their line numbers, each a JSON object."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RowError(f"{path}, line {n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise RowError(f"{path}, line {n}: not a JSON object (a row's fields are what "
                               f"the template reads)")
            yield row


def shuffled(rows: list[dict], field: str, seed: int) -> list[dict]:
    """The rows with `field`'s values permuted among the rows that have it (seeded): a text
    with the same form and words as the original whose facts (a question's answer) are broken."""
    import random

    holders = [i for i, row in enumerate(rows) if field in row]
    values = [rows[i][field] for i in holders]
    random.Random(seed).shuffle(values)
    out = list(rows)
    for i, value in zip(holders, values):
        out[i] = {**rows[i], field: value}
    return out


class ShuffleError(ValueError):
    """A text's `shuffle.field` that no row it reads has: the control would be the text itself."""


def _read_rows(paths: list[Path], template: str, max_chars: int,
               shuffle: dict | None = None) -> str:
    """JSON Lines files, each row rendered by `template` (its fields; Jinja's immutable sandbox,
    as a task's templates) as one document, the documents joined by blank lines and cut to
    max_chars, reading no more rows than that takes; with `shuffle` ({field, seed}), each
    file is read whole and that field permuted among its rows first (see `shuffled`)."""
    compiled = sandboxed(template)
    held = False  # whether a row read so far has the shuffled field

    def rows():
        nonlocal held
        for path in paths:
            found = _rows(path)
            if shuffle:
                found = list(found)
                held = held or any(shuffle["field"] in row for row in found)
                found = shuffled(found, shuffle["field"], shuffle.get("seed", 0))
            yield from found

    parts, size = [], 0
    for row in rows():
        doc = compiled.render(**row).strip()
        if doc:
            parts.append(doc)
            size += len(doc) + 2
        if size >= max_chars:
            break
    if shuffle and not held:
        raise ShuffleError(f"no row of the text's files has the field {shuffle['field']!r}")
    return "\n\n".join(parts)[:max_chars]


def load_text(spec: dict, base_dir: str | Path = ".") -> str:
    """Return the text a `text:` config entry names, cut to max_chars."""
    source = spec["source"]
    if source == "builtin":
        text = BUILTIN[spec["name"]]()
    elif source == "files":  # read no further than max_chars: a text file may be huge
        paths = [Path(base_dir, p) for p in spec["paths"]]
        if spec.get("template"):
            return _read_rows(paths, spec["template"], spec["max_chars"], spec.get("shuffle"))
        return _read_files(paths, spec["max_chars"])
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


def document_text(doc) -> str:
    """Every string in a task document (question, choices, passage, answer), joined: what a
    contamination check compares and what a plan counts tokens of."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict):
        return " ".join(document_text(v) for v in doc.values())
    if isinstance(doc, list):
        return " ".join(document_text(v) for v in doc)
    return ""


# ---------------------------------------------------------------- contamination
def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _separator(body: str) -> str:
    """What separates a text's paragraphs: blank lines where it has them (a JSON Lines text's
    rendered rows, most prose), else line ends (WikiText's raw files: a paragraph a line)."""
    return "\n\n" if PARAGRAPH_BREAK.search(body) else "\n"


def documents(body: str) -> list[str]:
    """A text's documents: its paragraphs (see `_separator`)."""
    pattern = PARAGRAPH_BREAK if _separator(body) == "\n\n" else re.compile(r"\n")
    return [p for p in pattern.split(body) if p.strip()]


class Contamination:
    """What of a text holds an evaluation question (Brown et al. 2020, GPT-3 appendix C, and a
    fact test for probes): a document sharing a word `n`-gram with a task document, or naming
    both a probe question's subject and its answer (a fact the probes ask, too short for
    n-grams: "What is the capital of Nigeria?" is 7 words)."""

    def __init__(self, task_documents, n: int = 13):
        self.n, self.grams, self.facts = n, set(), {}
        for doc in task_documents:
            self.grams |= ngrams(words(document_text(doc)), n)
            if isinstance(doc, dict) and {"subject", "choices", "gold"} <= set(doc):
                answer = tuple(words(str(doc["choices"][doc["gold"]])))
                self.facts.setdefault(tuple(words(str(doc["subject"]))), set()).add(answer)
        self.longest = max((len(k) for k in self.facts), default=0)

    def why(self, document: str) -> str | None:
        """Why a text document is contaminated ("13-gram: ...", "fact: subject -> answer"), or None."""
        tokens = words(document)
        shared = ngrams(tokens, self.n) & self.grams
        if shared:
            return f"{self.n}-gram: {' '.join(min(shared))}"
        fact = self.fact(tokens)
        return f"fact: {fact}" if fact else None

    def fact(self, tokens: list[str]) -> str | None:
        """The first probe fact ("subject -> answer") that a document's words name, or None."""
        phrases = set()
        for k in range(1, self.longest + 1):
            phrases |= ngrams(tokens, k)
        for subject in sorted(phrases & self.facts.keys()):
            answers = sorted(a for a in self.facts[subject] if a in phrases)
            if answers:
                return f"{' '.join(subject)} -> {' '.join(answers[0])}"
        return None

    def clean(self, body: str) -> tuple[str, list[tuple[str, str]]]:
        """The text without its contaminated documents, and those dropped (document, why)."""
        kept, dropped = [], []
        for doc in documents(body):
            why = self.why(doc)
            (dropped.append((doc, why)) if why else kept.append(doc))
        return _separator(body).join(kept), dropped
