"""Evaluation tasks as lm-eval task folders: knowledge probes, local data files, built-in tasks.

`prepare_task` turns one `tasks:` config entry into a folder of lm-eval YAML + JSONL that the
evaluate step registers with `TaskManager(include_path=...)`, so evaluation itself is offline.
"""
from __future__ import annotations

import json
import random
from importlib import metadata
from pathlib import Path

import yaml

from knowledge_recovery.evaluation import task_formats
from knowledge_recovery.text import sandboxed

# ---------------------------------------------------------------- knowledge probes
# Each relation: (packages it reads, question template, fact source).


def _countries():
    from countryinfo import all_countries

    out = []
    for c in all_countries():
        try:
            out.append(c.info())
        except Exception:  # a few entries lack fields; they are skipped, not guessed
            continue
    return sorted(out, key=lambda d: d.get("name", ""))


def _country_facts(field):
    facts = {}
    for info in _countries():
        name, value = info.get("name"), info.get(field)
        if name and isinstance(value, str) and value.strip():
            facts[name] = value.strip()
    return facts


def _country_currency():
    import pycountry

    facts = {}
    for info in _countries():
        codes = info.get("currencies") or []
        cur = pycountry.currencies.get(alpha_3=codes[0]) if len(codes) == 1 else None
        if info.get("name") and cur is not None:
            facts[info["name"]] = cur.name
    return facts


def _country_language():
    import pycountry

    facts = {}
    for info in _countries():
        codes = info.get("languages") or []
        lang = pycountry.languages.get(alpha_2=codes[0]) if codes else None
        if info.get("name") and lang is not None:
            facts[info["name"]] = lang.name.split(" (")[0]  # "Malay (macrolanguage)" -> "Malay"
    return facts


def _country_demonym():
    # countryinfo joins a two-part demonym with a bare comma ("Antiguan,Barbudan")
    return {name: ", ".join(part.strip() for part in value.split(","))
            for name, value in _country_facts("demonym").items()}


def _element_symbol():
    import periodictable

    return {el.name: el.symbol for el in periodictable.elements if el.number > 0}


RELATIONS = {
    "country_capital": (["countryinfo"], "Question: What is the capital of {subject}?",
                        lambda: _country_facts("capital")),
    "country_subregion": (["countryinfo"], "Question: In which region of the world is {subject}?",
                          lambda: _country_facts("subregion")),
    "country_currency": (["countryinfo", "pycountry"],
                         "Question: What is the official currency of {subject}?", _country_currency),
    "country_language": (["countryinfo", "pycountry"],
                         "Question: What is the main official language of {subject}?",
                         _country_language),
    "country_demonym": (["countryinfo"], "Question: What is a person from {subject} called?",
                        _country_demonym),
    "element_symbol": (["periodictable"], "Question: What is the chemical symbol of {subject}?",
                       _element_symbol),
}


def make_probes(relation: str, per_relation: int | str, num_choices: int, seed: int) -> list[dict]:
    """Deterministic multiple-choice questions; distractors are other answers of the same relation.
    per_relation "all": a question for every fact."""
    _, template, source = RELATIONS[relation]
    facts = source()
    answers = sorted(set(facts.values()))
    if len(answers) < num_choices:
        raise ValueError(f"relation {relation!r} has only {len(answers)} distinct answers")
    rng = random.Random(f"{seed}:{relation}")
    subjects = sorted(facts)
    rng.shuffle(subjects)
    rows = []
    for subject in subjects[:None if per_relation == "all" else per_relation]:
        gold = facts[subject]
        choices = rng.sample([a for a in answers if a != gold], num_choices - 1)
        choices.insert(rng.randrange(num_choices), gold)
        rows.append({"question": template.format(subject=subject), "choices": choices,
                     "gold": choices.index(gold), "subject": subject, "relation": relation})
    return rows


def relation_size(relation: str) -> tuple[int, int]:
    """(facts, distinct answers) of a relation: the most questions and choices it can give."""
    facts = RELATIONS[relation][2]()
    return len(facts), len(set(facts.values()))


def probe_sources(relation: str) -> dict:
    return {pkg: metadata.version(pkg) for pkg in RELATIONS[relation][0]}


# ---------------------------------------------------------------- templates from configs
# lm-eval renders task templates with an unsandboxed Jinja environment, so a template can run
# code (`{{ cycler.__init__.__globals__.os.system(...) }}`) or read what is not the document. A
# template from a config may only read the document's fields, through these filters, and call
# nothing (`template_problem`, static); and it must render every document of its file in Jinja's
# immutable sandbox (`render_problem`), which refuses what a computed key reaches at run time.
SAFE_FILTERS = {"join", "trim", "lower", "upper", "capitalize", "title", "replace", "first", "last",
                "length", "string", "int", "float", "default", "list", "round", "striptags"}


def template_problem(source: str) -> str | None:
    """Why a Jinja template from a config is refused (a syntax error, a call, an attribute or
    key starting with '_', an import, a filter outside SAFE_FILTERS), or None."""
    from jinja2 import Environment, TemplateSyntaxError, nodes

    try:
        tree = Environment().parse(source)
    except TemplateSyntaxError as err:
        return f"not a valid template: {err.message} (line {err.lineno})"
    # Jinja's globals and the names it binds itself (`self`: the template)
    not_document = set(Environment().globals) | {"self", "caller", "varargs", "kwargs"}
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in not_document:
            return (f"templates may read only the document's fields: {node.name!r} is one of "
                    f"Jinja's globals")
        if isinstance(node, (nodes.Call, nodes.Import, nodes.FromImport, nodes.Include,
                             nodes.Extends, nodes.Macro, nodes.CallBlock)):
            return f"templates may not call, import or include ({type(node).__name__.lower()})"
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            return f"templates may not read attribute {node.attr!r}"
        if (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
                and str(node.arg.value).startswith("_")):
            return f"templates may not read key {node.arg.value!r}"
        if isinstance(node, (nodes.Filter, nodes.Test)) and node.name not in SAFE_FILTERS | {
                "defined", "none", "string", "number"}:
            return f"filter or test {node.name!r} is not allowed (allowed: {sorted(SAFE_FILTERS)})"
    return None


# ---------------------------------------------------------------- lm-eval task folders
def _mc_task_yaml(name: str, data_file: Path, text: str, choices: str, target: str, meta: dict):
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        "doc_to_choice": choices,
        "doc_to_target": target,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, **meta},
    }


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def template_fields(source: str) -> set[str]:
    """The document fields a Jinja template reads."""
    from jinja2 import Environment, meta

    env = Environment()
    return meta.find_undeclared_variables(env.parse(source)) - set(env.globals)


def missing_field(rows: list[dict], template: str) -> str | None:
    """Why a template cannot render every row of a file (a field some row lacks), or None."""
    fields = template_fields(template)
    for n, row in enumerate(rows, 1):
        lacking = sorted(fields - set(row))
        if lacking:
            return (f"uses field {lacking[0]!r}, which document {n} of the file lacks "
                    f"(its fields: {', '.join(sorted(row)) or 'none'})")
    return None


def render_problem(rows: list[dict], template: str) -> str | None:
    """Why a template (passed by `template_problem`) does not render every row of a file in
    Jinja's immutable sandbox (a computed key reaching an attribute such as `__class__`, or any
    other error), or None."""
    compiled = sandboxed(template)
    for n, row in enumerate(rows, 1):
        try:
            compiled.render(**row)
        except Exception as err:  # noqa: BLE001 - whatever stops it, named with its document
            return f"does not render document {n} of the file: {type(err).__name__}: {err}"
    return None


def lm_eval_task_names() -> set[str]:
    """Every task and group name lm-eval knows. Indexing its task folder takes ~10 s, so the
    list is cached per lm-eval version (in the user's cache folder)."""
    import os

    version = metadata.version("lm_eval")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                 "knowledge-recovery", f"lm_eval-{version}-tasks.json")
    try:
        return set(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    names = sorted(task_formats.lm_eval_task_index())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(names))
        os.replace(tmp, cache)
    except OSError:  # a read-only home: no cache, the check still runs
        pass
    return set(names)


def lm_eval_task_problem(name: str) -> str | None:
    """Why lm-eval does not know a task name, or None."""
    import difflib

    known = lm_eval_task_names()
    if name in known:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=3)
    return f"lm-eval has no task {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")


# The summary's task groups, for lm-eval names starting with these (a task entry's `group`
# overrides). As in the LLaMA paper's grouping, except that tasks read from a given passage
# (BoolQ, RACE, SQuAD, DROP) are "reading".
TASK_GROUPS = {
    "world knowledge": ("triviaqa", "nq_open", "naturalquestions", "mmlu", "webqs"),
    "commonsense": ("arc_", "piqa", "hellaswag", "winogrande", "openbookqa", "siqa", "social_iqa",
                    "copa"),
    "reading": ("boolq", "race", "squad", "drop"),
    "language modelling": ("wikitext", "lambada", "pile", "c4"),
}


def task_group(entry: dict) -> str:
    """The summary group of a task entry: its `group`, else world knowledge for the probes,
    else by its lm-eval name (TASK_GROUPS), else "other"."""
    if entry.get("group"):
        return entry["group"]
    if entry["type"] == "probes":
        return "world knowledge"
    name = entry["name"].lower()
    return next((g for g, prefixes in TASK_GROUPS.items() if name.startswith(prefixes)), "other")


def task_names(entry: dict) -> list[str]:
    """lm-eval task names of one `tasks:` entry (a probes entry yields one task per relation)."""
    if entry["type"] == "probes":
        return [f"{entry['name']}_{rel}" for rel in entry["relations"]]
    return [entry["name"]]


def result_groups(task_entries: list[dict], result_tasks) -> dict[str, str]:
    """{task name in the results: its group}; lm-eval subtasks (`mmlu_anatomy`) belong to the
    entry that named their group (`mmlu`)."""
    out = {}
    for task in result_tasks:
        entry = next((e for e in task_entries if task in task_names(e)
                      or task.startswith(e["name"] + "_")), None)
        out[task] = task_group(entry) if entry else "other"
    return out


def from_hub(entry: dict) -> bool:
    """Whether a task entry's documents come from the hub (a lm-eval task without a path)."""
    return entry["type"] == "lm_eval" and not entry.get("path")


def prepare_task(entry: dict, out_dir: Path, seed: int, base_dir=".",
                 final_dir: Path | None = None) -> dict:
    """Write the lm-eval folder for one task entry into out_dir; its YAMLs point at final_dir,
    where out_dir will be moved (default: out_dir itself), as given: a relative final_dir is
    read from the working directory (lm-eval resolves `data_files` there, not from the YAML's
    folder), so a grid's task YAMLs do not name the folder it ran in. Returns what the manifest
    records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final_dir = final_dir or out_dir
    kind = entry["type"]
    if kind == "probes":
        info = {}
        for rel in entry["relations"]:
            name = f"{entry['name']}_{rel}"
            rows = make_probes(rel, entry["per_relation"], entry["num_choices"], seed)
            _write_jsonl(out_dir / f"{name}.jsonl", rows)
            meta = {"relation": rel, "sources": probe_sources(rel), "seed": seed}
            spec = _mc_task_yaml(name, final_dir / f"{name}.jsonl", "{{question}}\nAnswer:",
                                 "{{choices}}", "{{gold}}", meta)
            (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
            info[name] = {"documents": len(rows), **meta}
        return info
    if kind == "local":
        src = Path(base_dir, entry["path"])
        rows = task_formats.read_rows(src)
        # Copied as JSONL so the task no longer depends on the file's format or location.
        _write_jsonl(out_dir / f"{entry['name']}.jsonl", rows)
        spec = _mc_task_yaml(entry["name"], final_dir / f"{entry['name']}.jsonl", entry["text"],
                             entry["choices"], entry["target"], {"source_file": str(src)})
        (out_dir / f"{entry['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        return {entry["name"]: {"documents": len(rows), "source_file": str(src)}}
    if entry.get("path"):  # a harness task or group, its documents from local files
        src = Path(base_dir, entry["path"])
        group, files = task_formats.entry_files(entry["name"], src)
        info = {}
        for name, path in files.items():
            fmt, docs = task_formats.convert(name, path, entry.get("format"))
            builtin = task_formats.builtin_task(name)
            _write_jsonl(out_dir / f"{name}.jsonl", docs)
            spec = task_formats.local_task_yaml(name, builtin.yaml_path, builtin.cfg,
                                                final_dir / f"{name}.jsonl")
            (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
            info[name] = {"documents": len(docs), "source_file": str(path), "format": fmt.name,
                          "lm_eval_yaml": str(builtin.yaml_path),
                          **({"differs_from_hub": fmt.note} if fmt.note else {})}
        if not group:
            return info
        # lm-eval's group as one flat group of the subtasks found, scored its way (MMLU: the
        # accuracy over all questions); subtasks the folder lacks are not fetched from the hub
        spec = {"group": entry["name"], "task": sorted(files),
                **{k: group.cfg[k] for k in ("aggregate_metric_list", "metadata")
                   if k in group.cfg}}
        (out_dir / f"{entry['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        return {entry["name"]: {"documents": sum(i["documents"] for i in info.values()),
                                "source_folder": str(src), "lm_eval_yaml": str(group.yaml_path),
                                "subtasks": info,
                                "subtasks_absent": sorted(set(task_formats.leaf_tasks(
                                    entry["name"])) - set(files))}}
    # A harness task from the hub: building it downloads its dataset into the datasets cache.
    from lm_eval.tasks import TaskManager, get_task_dict

    get_task_dict([entry["name"]], TaskManager())
    return {entry["name"]: {"builtin": True}}
