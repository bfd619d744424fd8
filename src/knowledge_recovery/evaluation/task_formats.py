"""lm-eval's own tasks on documents from local files.

A `type: lm_eval` task entry with a `path` keeps the task YAML that lm-eval ships (prompt, target
delimiter, choices, metrics, filters, generation settings) and changes only where the documents
come from: the file is converted into the schema that task reads from the hub, and a task YAML
that `include`s lm-eval's own points `dataset_path: json` at the converted file.

One record per release format, the way the method registries work: the lm-eval tasks it serves,
the fields its rows have, how to read and convert them. `find_format` picks the record for an
entry (or refuses, naming the fields the file has and those each format needs).
"""
from __future__ import annotations

import bz2
import csv
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LETTERS = "ABCDEFGHIJ"


def read_rows(path: Path) -> list[dict]:
    """The documents of a local task file (.jsonl, .json list or {"data": list}, .csv, .tsv);
    a ValueError names the file and, for JSON, the line and column at fault."""
    try:
        if path.suffix == ".jsonl":
            rows = []
            # split on newlines only: splitlines() also splits inside strings at U+0085, U+2028
            for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path} line {n} is not valid JSON: {err.msg} "
                                         f"(column {err.colno})") from None
                    if not isinstance(rows[-1], dict):
                        raise ValueError(f"{path} line {n} is not a JSON object")
        elif path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err.msg} (line {err.lineno}, "
                                 f"column {err.colno})") from None
            rows = data.get("data") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"{path} must hold a list of objects, or {{\"data\": [...]}}")
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not rows:
        raise ValueError(f"{path} has no documents")
    return rows


@dataclass(frozen=True)
class TaskFormat:
    name: str
    tasks: tuple  # lm-eval task names it serves; a name ending in "_" serves every task it starts
    fields: frozenset  # fields every row has (after `read`)
    convert: Callable[[list[dict], Path], list[dict]]  # (rows, path) -> rows in the task's schema
    read: Callable[[Path], list[dict]] = read_rows
    suffixes: tuple = (".jsonl", ".json", ".csv", ".tsv")  # the files `read` takes
    note: str = ""  # what differs from the hub's documents, if anything

    def serves(self, task: str) -> bool:
        return any(task == t or (t.endswith("_") and task.startswith(t)) for t in self.tasks)


FORMATS: dict[str, TaskFormat] = {}


def register_format(record: TaskFormat) -> TaskFormat:
    if record.name in FORMATS:
        raise ValueError(f"task format {record.name!r} is registered twice")
    FORMATS[record.name] = record
    return record


def _same(rows, path):
    return rows


# ---------------------------------------------------------------- readers
def _read_headerless_csv(path: Path) -> list[dict]:
    """MMLU's release: question,A,B,C,D,answer per line, no header."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        raise ValueError(f"{path} has no documents")
    bad = next((n for n, r in enumerate(rows, 1) if len(r) != 6), None)
    if bad:
        raise ValueError(f"{path} line {bad} has {len(rows[bad - 1])} columns; MMLU rows have 6 "
                         "(question, A, B, C, D, answer)")
    return [dict(zip(("question", "A", "B", "C", "D", "answer"), r)) for r in rows]


def _read_text(path: Path) -> list[dict]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [{"text": fh.read()}]


def _labels_path(path: Path) -> Path:
    """PIQA's labels: `<name>-labels.lst` beside `<name>.jsonl`, one label a line."""
    return path.with_name(f"{path.stem}-labels.lst")


def _labels_beside(path: Path) -> list[str]:
    labels = _labels_path(path)
    if not labels.is_file():
        raise ValueError(f"{path} has no label field and no label file {labels.name} beside it")
    return labels.read_text(encoding="utf-8").split()


# ---------------------------------------------------------------- converters
def _arc_original(rows, path):
    return [{"id": r.get("id", str(n)), "question": r["question"]["stem"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for n, r in enumerate(rows)]


def _arc_foundry(rows, path):
    return [{"id": str(n), "question": r["query"].removeprefix("Question: "),
             "choices": {"text": list(r["choices"]), "label": list(LETTERS[:len(r["choices"])])},
             "answerKey": LETTERS[int(r["gold"])]} for n, r in enumerate(rows)]


def _piqa_original(rows, path):
    labels = _labels_beside(path)
    if len(labels) != len(rows):
        raise ValueError(f"{path} has {len(rows)} rows but its label file {len(labels)} labels")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)}
            for r, lab in zip(rows, labels)]


def _boolq_foundry(rows, path):
    out = []
    for r in rows:  # "Passage: <passage>\nQuestion: <question>?"; a passage may hold "\nQuestion: "
        query = r["query"]
        cut = query.rindex("\nQuestion: ")
        out.append({"passage": query[:cut].removeprefix("Passage: "),
                    "question": query[cut + len("\nQuestion: "):].removesuffix("?"),
                    "label": int(r["gold"])})
    return out


def _boolq_original(rows, path):
    return [{"passage": r["passage"], "question": r["question"],
             "label": int(r["answer"] in (True, 1, "true", "True"))} for r in rows]


def _hellaswag_text(rows, path):
    # The text release holds "activity_label: ctx" already cleaned; ctx_b cannot be told from
    # ctx_a, so lm-eval's capitalisation of ctx_b's first letter is not redone (FORMAT note).
    out = []
    for r in rows:
        label, _, ctx = r["query"].partition(": ")
        out.append({"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": r["endings"],
                    "label": str(r["label"])})
    return out


def _winogrande_foundry(rows, path):
    out = []
    for r in rows:  # context_options[i] = sentence[:blank] + option_i
        a, b = r["context_options"]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        n = a.rfind(" ", 0, n) + 1  # the blank starts a word
        out.append({"sentence": f"{a[:n]}_ {r['continuation']}", "option1": a[n:],
                    "option2": b[n:], "answer": str(int(r["gold"]) + 1)})
    return out


def _openbookqa_tsv(rows, path):
    out = []
    for r in rows:
        parts = re.split(r"\s*\(([A-Z])\)\s*", r["Choices"])
        out.append({"id": r.get("ID", ""), "question_stem": r["Question Stem"],
                    "choices": {"text": parts[2::2], "label": parts[1::2]},
                    "answerKey": r["Answer Key"]})
    return out


def _triviaqa_foundry(rows, path):
    return [{"question": r["context"].removeprefix("Question: ").removesuffix("\nAnswer:"),
             "answer": {"value": r["answer"], "aliases": list(r["aliases"])}} for r in rows]


def _lambada_foundry(rows, path):
    return [{"text": r["context"] + ("" if r["continuation"][:1].isspace() else " ")
             + r["continuation"]} for r in rows]


HEADING = re.compile(r"^ = [^=].* = $")


def _wikitext_raw(rows, path):
    """One page per top-level heading (" = Title = "), lines joined with newlines."""
    pages, lines = [], []
    for line in rows[0]["text"].splitlines():
        if HEADING.match(line) and lines:
            pages.append("\n".join(lines))
            lines = []
        lines.append(line)
    if lines:
        pages.append("\n".join(lines))
    return [{"page": p} for p in pages]


def _mmlu_csv(rows, path):
    return [{"question": r["question"], "subject": path.stem.removesuffix("_test"),
             "choices": [r["A"], r["B"], r["C"], r["D"]],
             "answer": "ABCD".index(r["answer"].strip())} for r in rows]


FOUNDRY_MC = frozenset({"query", "choices", "gold"})
for record in [
    TaskFormat("arc", ("arc_easy", "arc_challenge"), frozenset({"question", "choices", "answerKey"}),
               _same),
    TaskFormat("arc-original", ("arc_easy", "arc_challenge"), frozenset({"question", "answerKey"}),
               _arc_original),
    TaskFormat("arc-llm-foundry", ("arc_easy", "arc_challenge"), FOUNDRY_MC, _arc_foundry),
    TaskFormat("piqa", ("piqa",), frozenset({"goal", "sol1", "sol2", "label"}), _same),
    TaskFormat("piqa-original", ("piqa",), frozenset({"goal", "sol1", "sol2"}), _piqa_original),
    TaskFormat("boolq", ("boolq",), frozenset({"passage", "question", "label"}), _same),
    TaskFormat("boolq-original", ("boolq",), frozenset({"passage", "question", "answer"}),
               _boolq_original),
    TaskFormat("boolq-llm-foundry", ("boolq",), FOUNDRY_MC, _boolq_foundry),
    TaskFormat("hellaswag", ("hellaswag",),
               frozenset({"activity_label", "ctx_a", "ctx_b", "endings", "label"}), _same),
    TaskFormat("hellaswag-text", ("hellaswag",), frozenset({"query", "endings", "label"}),
               _hellaswag_text,
               note="ctx_b's first letter is not capitalised as lm-eval does from the hub"),
    TaskFormat("winogrande", ("winogrande",),
               frozenset({"sentence", "option1", "option2", "answer"}), _same),
    TaskFormat("winogrande-llm-foundry", ("winogrande",),
               frozenset({"context_options", "continuation", "gold"}), _winogrande_foundry),
    TaskFormat("openbookqa", ("openbookqa",), frozenset({"question_stem", "choices", "answerKey"}),
               _same),
    TaskFormat("openbookqa-tsv", ("openbookqa",),
               frozenset({"Question Stem", "Choices", "Answer Key"}), _openbookqa_tsv),
    TaskFormat("nq_open", ("nq_open",), frozenset({"question", "answer"}), _same),
    TaskFormat("triviaqa", ("triviaqa",), frozenset({"question", "answer"}), _same),
    TaskFormat("triviaqa-llm-foundry", ("triviaqa",), frozenset({"context", "answer", "aliases"}),
               _triviaqa_foundry),
    TaskFormat("lambada", ("lambada_openai", "lambada_standard"), frozenset({"text"}), _same),
    TaskFormat("lambada-llm-foundry", ("lambada_openai", "lambada_standard"),
               frozenset({"context", "continuation"}), _lambada_foundry),
    TaskFormat("wikitext-raw", ("wikitext",), frozenset({"text"}), _wikitext_raw, read=_read_text,
               suffixes=(".raw", ".txt", ".bz2", ".tokens"),
               note="pages split at top-level headings; blank lines the file lacks stay absent"),
    TaskFormat("mmlu-csv", ("mmlu_",), frozenset({"question", "A", "B", "C", "D", "answer"}),
               _mmlu_csv, read=_read_headerless_csv, suffixes=(".csv",)),
]:
    register_format(record)


def find_format(task: str, path: Path, name: str | None = None) -> tuple[TaskFormat, list[dict]]:
    """The format of `path` for lm-eval task `task` (`name` forces one) and the file's rows.
    A ValueError says what is wrong: no converter for the task, or the fields the file has
    against those each format of the task needs."""
    candidates = [f for f in FORMATS.values() if f.serves(task)]
    if not candidates:
        served = sorted({t for f in FORMATS.values() for t in f.tasks})
        raise ValueError(f"no converter for lm-eval task {task!r} from a local file (tasks with "
                         f"one: {', '.join(served)}; '_' ends a prefix)")
    if name is not None:
        if name not in FORMATS or FORMATS[name] not in candidates:
            raise ValueError(f"format {name!r} does not serve task {task!r} (formats that do: "
                             f"{', '.join(f.name for f in candidates)})")
        candidates = [FORMATS[name]]
    found, read, errors = None, {}, []  # rows by reader: formats sharing one read the file once
    for fmt in candidates:
        if path.suffix not in fmt.suffixes:
            continue
        if fmt.read not in read:
            try:
                read[fmt.read] = fmt.read(path)
            except (ValueError, OSError, UnicodeDecodeError) as err:
                read[fmt.read] = None
                errors.append(f"as {fmt.name}: {err}")
        rows = read[fmt.read]
        if rows is None:
            continue
        if all(fmt.fields <= set(r) for r in rows):
            return fmt, rows
        found = found or sorted(set(rows[0]))
    needs = "; ".join(f"{f.name}: {', '.join(sorted(f.fields))}" for f in candidates)
    has = (f"its rows have {', '.join(found)}" if found else "it could not be read as any of "
           "them" + (f" ({'; '.join(errors)})" if errors else ""))
    raise ValueError(f"{path} is in no format lm-eval task {task!r} can be converted from: {has} "
                     f"(formats and the fields they need: {needs})")


def convert(task: str, path: Path, name: str | None = None) -> tuple[TaskFormat, list[dict]]:
    """The file's documents in the schema of lm-eval's `task` (a ValueError names what fails)."""
    fmt, rows = find_format(task, path, name)
    try:
        docs = fmt.convert(rows, path)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"{path} could not be converted as {fmt.name} for {task!r}: "
                         f"{type(err).__name__}: {err}") from None
    if not docs:
        raise ValueError(f"{path} has no documents")
    return fmt, docs


@functools.lru_cache(maxsize=1)
def lm_eval_task_index() -> dict:
    from lm_eval.tasks import TaskManager

    return TaskManager().task_index  # indexing lm-eval's task folder takes seconds: once


def builtin_task(task: str):
    """lm-eval's index entry of a task it ships (its YAML path and config)."""
    entry = lm_eval_task_index().get(task)
    if entry is None or not str(entry.kind).endswith("TASK"):
        raise ValueError(f"lm-eval has no task {task!r}")
    return entry


def builtin_group(name: str):
    """lm-eval's index entry of a group it ships (`mmlu`), or None if `name` is no group."""
    entry = lm_eval_task_index().get(name)
    return entry if entry is not None and str(entry.kind).endswith("GROUP") else None


def leaf_tasks(name: str) -> list[str]:
    """The tasks an lm-eval group (or tag) is made of, through its subgroups, sorted."""
    index, out = lm_eval_task_index(), set()

    def walk(n: str) -> None:
        entry = index.get(n)
        kind = str(entry.kind) if entry is not None else ""
        if kind.endswith("GROUP"):
            for sub in entry.cfg.get("task", []):
                if isinstance(sub, str):  # inline task configs have no file to read
                    walk(sub)
        elif kind.endswith("TAG"):
            for sub in entry.tags:
                walk(sub)
        elif kind.endswith("TASK"):
            out.add(n)

    walk(name)
    return sorted(out)


def folder_files(folder: Path) -> list[Path]:
    """The files of a task folder, sorted; hidden ones (editors', the OS's) are not data."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))


def entry_files(name: str, source: Path) -> tuple:
    """(lm-eval's group entry or None, {lm-eval task: file}) of a `type: lm_eval` entry with a
    `path`: a task reads its file, a group a folder with a file per subtask (`group_files`).
    A ValueError says which was given where the other is needed."""
    group = builtin_group(name)
    if source.is_dir() != (group is not None):
        raise ValueError(
            f"{source} is a folder, which is read for an lm-eval group (a file per subtask); "
            f"{name!r} is a task: give its file" if group is None else
            f"{name!r} is an lm-eval group: give a folder with a file per subtask (such as "
            f"MMLU's <subject>_test.csv), not the file {source}")
    return group, group_files(name, source) if group else {name: source}


def source_files(path: Path) -> list[Path]:
    """Every file a local task source is read from: a folder's files, or the file and what a
    format reads beside it (PIQA's labels), so that replacing any of them prepares it again."""
    if path.is_dir():
        return folder_files(path)
    return [path] + [p for p in (_labels_path(path),) if p.is_file()]


SPLIT_SUFFIX = re.compile(r"_(test|validation|val|dev|train)$")


def group_files(group: str, folder: Path) -> dict[str, Path]:
    """{subtask: file} for a folder holding a file per subtask of lm-eval group `group`, as
    MMLU is released (`<subject>_test.csv` for `mmlu_<subject>`): a file's name, less its split
    suffix, ends one subtask's name (`<group>_<name>` first). A ValueError names a file that
    matches no subtask or a second file for one, or a folder with no file."""
    leaves = leaf_tasks(group)
    out: dict[str, Path] = {}
    for path in folder_files(folder):
        stem = SPLIT_SUFFIX.sub("", path.name.split(".")[0])
        if f"{group}_{stem}" in leaves:
            task = f"{group}_{stem}"
        else:
            matches = [t for t in leaves if t.endswith(f"_{stem}")]
            if len(matches) != 1:
                why = f"several ({', '.join(matches)})" if matches else "none"
                raise ValueError(f"{path}: no single subtask of lm-eval group {group!r} is named "
                                 f"after it (subtasks ending in '_{stem}': {why})")
            task = matches[0]
        if task in out:
            raise ValueError(f"{out[task].name} and {path.name} in {folder} are both {task!r}")
        out[task] = path
    if not out:
        raise ValueError(f"{folder} holds no file (a file per subtask of {group!r})")
    return out


def local_task_yaml(task: str, yaml_path: Path, cfg: dict, data_file: Path) -> dict:
    """A task YAML that is lm-eval's own (`include`) with its documents from `data_file`, in
    the split the task evaluates (its test split, else its validation split)."""
    split = "test" if cfg.get("test_split") else "validation"
    return {"include": str(yaml_path), "task": task, "dataset_path": "json",
            "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(data_file)}},
            "training_split": None, "fewshot_split": None,
            "validation_split": "validation" if split == "validation" else None,
            "test_split": "test" if split == "test" else None}
