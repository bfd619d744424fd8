"""Config: loading, schema validation with defaults, and the checks the schema cannot express.

Every error raised here names the config key at fault, and is raised before any job runs.
`validate_schema` checks and fills defaults; `grid.normalise` derives ids once; `check` then
only reads; `preflight.check_models` builds the models whose shape is known.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from knowledge_recovery.compression import entries as compression
from knowledge_recovery.deployment import openvino
from knowledge_recovery.errors import ConfigError, ConfigFileError
from knowledge_recovery.evaluation import task_formats, tasks
from knowledge_recovery.models.files import model_files_problem
from knowledge_recovery.pipeline import grid, schema
from knowledge_recovery.recovery import entries as recovery
from knowledge_recovery.registry import compression_method, recovery_method, recovery_methods


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _validator(set_default: bool):
    """A JSON-schema validator of `schema.schema()`; with `set_default`, one that fills in the
    defaults of every `properties` it validates against, as Snakemake's `validate` does (which
    reads a schema only from a file)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    if set_default:
        validate_properties = base.VALIDATORS["properties"]

        def set_defaults(validator, properties, instance, subschema):
            if isinstance(instance, dict):
                for name, sub in properties.items():
                    if "default" in sub:
                        instance.setdefault(name, copy.deepcopy(sub["default"]))
            yield from validate_properties(validator, properties, instance, subschema)

        base = jsonschema.validators.extend(base, {"properties": set_defaults})
    return base(schema.schema())


def _validate(config: dict, set_default: bool) -> None:
    import jsonschema

    try:
        _validator(set_default).validate(config)
    except jsonschema.ValidationError as err:
        # The deepest error is the useful one ("sparsity: 1.5 is not < 1"), not "allOf failed".
        best = jsonschema.exceptions.best_match([err, *err.context]) if err.context else err
        raise ConfigError(_key(best.absolute_path), best.message) from None


def validate_schema(config: dict) -> dict:
    """Validate against the JSON schema; check each method entry's keys, as written, against its
    method's settings (the registry's); fill the schema's defaults in place; then check each
    compression entry's settings against each other."""
    _validate(copy.deepcopy(config), set_default=False)
    for i, c in enumerate(config.get("compression", [])):
        compression.check_settings(c, f"compression[{i}]")
    for i, r in enumerate(config.get("recovery", [])):
        recovery.check_settings(r, f"recovery[{i}]")
    _validate(config, set_default=True)
    for i, c in enumerate(config["compression"]):
        compression.check_entry(c, f"compression[{i}]")
    for i, r in enumerate(config["recovery"]):
        recovery.check_entry(r, f"recovery[{i}]")
    return config


def _check_results_dir(path: Path) -> None:
    """The results folder, or the nearest folder above it that exists, can be written (checked
    without writing: a dry run leaves no trace)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError("results_dir", f"{existing} is a file, not a folder")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise ConfigError("results_dir", f"{path}: {existing} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("results_dir", f"{path}: {existing} cannot be written by this user")


def check(config: dict, base_dir: str | os.PathLike = ".") -> None:
    """Checks of a normalised config that need no model: ids unique, settings consistent, files
    present. Reads the config, never changes it."""
    base = Path(base_dir)
    _check_results_dir(base / config["results_dir"])
    _unique([m["name"] for m in config["models"]], "models", "name")
    for i, m in enumerate(config["models"]):
        if m["source"] == "local":
            path = base / m["path"]
            if not (path.is_dir() or path.suffix == ".gguf" and path.is_file()):
                raise ConfigError(f"models[{i}].path",
                                  f"no such model folder or .gguf file: {m['path']}")
            problem = model_files_problem(path)
            if problem:
                raise ConfigError(f"models[{i}].path", problem)
        if m["source"] == "pypi-gguf":
            _check_requirement(m["package"], f"models[{i}].package")

    for i, c in enumerate(config["compression"]):
        reason = c.get("export_packed") and compression.unpackable_reason(c)
        if reason:
            raise ConfigError(f"compression[{i}].export_packed", reason)
        unsupported = c.get("deploy") and openvino.unsupported(c)
        if unsupported:
            raise ConfigError(f"compression[{i}].{unsupported[0]}", unsupported[1])
    _unique([c["id"] for c in config["compression"]], "compression", "id (set 'name' to tell them apart)")

    _unique([r["id"] for r in config["recovery"]], "recovery", "id (set 'name' to tell them apart)")

    _check_text(config["text"], "text", base, _text_needs(config, None))
    for i, r in enumerate(config["recovery"]):
        for j, spec in enumerate(recovery.training_texts(r) or []):
            _check_text(spec, f"recovery[{i}].texts[{j}]", base, _text_needs(config, r))

    if config["statistics"]["reference"] not in recovery_methods():
        raise ConfigError("statistics.reference", f"{config['statistics']['reference']!r} is not a "
                          f"recovery method (one of {sorted(recovery_methods())})")

    ids = {"recovery": {r["id"] for r in config["recovery"]},
           "compression": {c["id"] for c in config["compression"]}}
    for i, claim in enumerate(config["claims"]):
        for side in ("base", "other"):
            for what, value in claim[side].items():
                if value not in ids[what]:
                    raise ConfigError(f"claims[{i}].{side}.{what}", f"{value!r} is not the id of "
                                      f"a {what} entry (ids: {sorted(ids[what])})")
        if claim["measure"] in ("recovery_ratio", "lost_questions") and not (
                any(not recovery_method(r["method"]).trains for r in config["recovery"])
                and any(compression_method(c["method"]).family == "none"
                        for c in config["compression"])):
            # the references `stats.baselines` finds: the untrained cells, the dense one
            raise ConfigError(f"claims[{i}].measure", f"{claim['measure']!r} measures against the "
                              f"dense and the untrained compressed model: the grid needs an "
                              f"uncompressed entry (method 'dense') and a recovery entry that "
                              f"trains nothing (method 'none')")
        if claim["measure"] == "latency":
            timed = config["displacement"]["timing_batch_sizes"]
            if not config["displacement"]["enabled"]:
                raise ConfigError(f"claims[{i}].measure", "'latency' reads the represent steps' "
                                  "timing: displacement.enabled is false")
            if claim["batch_size"] not in timed:
                raise ConfigError(f"claims[{i}].batch_size", f"{claim['batch_size']} is not a "
                                  f"timed batch size (displacement.timing_batch_sizes: {timed})")

    _unique([t["name"] for t in config["tasks"]], "tasks", "name")
    for i, t in enumerate(config["tasks"]):
        if t["type"] == "local":
            for field in ("text", "choices", "target"):
                problem = tasks.template_problem(t[field])
                if problem:
                    raise ConfigError(f"tasks[{i}].{field}", problem)
            path = _task_file(t, i, base)
            if path.suffix not in (".jsonl", ".json", ".csv", ".tsv"):
                raise ConfigError(f"tasks[{i}].path", f"unsupported file type {path.suffix!r}")
            try:
                rows = task_formats.read_rows(path)
            except ValueError as err:
                raise ConfigError(f"tasks[{i}].path", str(err)) from None
            for field in ("text", "choices", "target"):
                problem = (tasks.missing_field(rows, t[field])
                           or tasks.render_problem(rows, t[field]))
                if problem:
                    raise ConfigError(f"tasks[{i}].{field}", f"{problem}: {t['path']}")
        if t["type"] == "probes":
            for rel in t["relations"]:
                facts, answers = tasks.relation_size(rel)
                if t["num_choices"] > answers:
                    raise ConfigError(f"tasks[{i}].num_choices", f"relation {rel!r} has only "
                                      f"{answers} distinct answers, fewer than {t['num_choices']}")
                if t["per_relation"] != "all" and t["per_relation"] > facts:
                    raise ConfigError(f"tasks[{i}].per_relation", f"relation {rel!r} has only "
                                      f"{facts} facts, fewer than {t['per_relation']} questions")
        if t["type"] == "lm_eval" and t.get("path"):
            # converted at preflight (`check_lm_eval_tasks`): whether the name is a task or a
            # group, which reads a folder, takes lm-eval's task index
            _task_file(t, i, base, folder=True)
        if "format" in t and not (t["type"] == "lm_eval" and t.get("path")):
            raise ConfigError(f"tasks[{i}].format", "only lm_eval tasks with a path have a format")
        if t["type"] != "probes" and "relations" in t:
            raise ConfigError(f"tasks[{i}].relations", "only 'probes' tasks have relations")


def check_shared_adapters(config: dict) -> None:
    """Recovery entries that train one adapter (one `train_id`, e.g. an IDP pool under several
    selections) train it alike. Run after the model checks: an entry that cannot be built on the
    model (a layer it lacks) is named for that, not as a duplicate of its neighbour."""
    first: dict[str, tuple[int, dict]] = {}
    for i, r in enumerate(config["recovery"]):
        if "train_id" in r:
            j, spec = first.setdefault(r["train_id"], (i, grid.training_spec(r)))
            mine = grid.training_spec(r)
            if spec != mine:
                differ = sorted(k for k in set(spec) | set(mine) if spec.get(k) != mine.get(k))
                raise ConfigError(f"recovery[{i}].{differ[0]}", f"trains adapter "
                                  f"{r['train_id']!r} like recovery[{j}] but with other settings ("
                                  + "; ".join(f"{k}: {mine.get(k)!r} here, {spec.get(k)!r} there"
                                              for k in differ)
                                  + "): give one of them a 'name'")


def sort_keys(value) -> None:
    """Every mapping in a config, in place, in key order: the steps' settings reach Snakemake as
    params, which it compares as text, so the same settings written in another order would
    re-run every job that reads them."""
    if isinstance(value, dict):
        items = sorted(value.items())
        value.clear()
        value.update(items)
        for v in value.values():
            sort_keys(v)
    elif isinstance(value, list):
        for v in value:
            sort_keys(v)


def prepare(config: dict, base_dir: str | os.PathLike = ".", check_models: bool = True) -> dict:
    """A schema-validated config made ready for the workflow, in place: normalised, checked, and
    (`check_models`) checked on the models whose shape is known and on lm-eval's task list,
    which imports torch, transformers, peft and lm-eval (seconds, in a child process: see
    `preflight.run`): processes that only need the grid skip it."""
    grid.normalise(config)
    sort_keys(config)
    check(config, base_dir)
    if check_models:
        from knowledge_recovery.pipeline import preflight

        # A no-op re-run skips what passed before: the checks import torch, transformers and
        # peft and build every model (seconds), the fingerprint reads files (milliseconds).
        passed = Path(base_dir, preflight.PASSED_DIR, preflight.fingerprint(config, Path(base_dir)))
        if not passed.is_file():
            preflight.run(config, Path(base_dir))
            passed.parent.mkdir(parents=True, exist_ok=True)
            passed.touch()
    check_shared_adapters(config)
    return config


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # merged keys (`<<: *defaults`) may be overridden
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict:
    """A config file as a dict; a syntax error or a duplicate key names its line and column."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)
    except OSError as err:
        raise ConfigFileError(path, err.strerror) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ConfigFileError(path, f"line {mark.line + 1}, column {mark.column + 1}: "
                              f"{err.problem}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(path, "must be a mapping of keys (experiment:, models:, ...)")
    return data


def load_config(config: dict | str | os.PathLike, base_dir=".", check_models: bool = True) -> dict:
    """A config dict or YAML file, validated, normalised and checked (a copy)."""
    if not isinstance(config, dict):
        config = read_yaml(config)
    config = copy.deepcopy(config)
    validate_schema(config)
    return prepare(config, base_dir, check_models)


def _task_file(entry: dict, i: int, base: Path, folder: bool = False) -> Path:
    """The file (or `folder`) a task entry reads (`path`, relative to the config's folder),
    which must exist."""
    path = base / entry["path"]
    if folder and path.is_dir():
        return path
    if not path.is_file():
        raise ConfigError(f"tasks[{i}].path", f"no such task file: {entry['path']}")
    return path


def _text_needs(config: dict, entry: dict | None) -> list[tuple[int, str]]:
    """The windows cut from a text: from the grid's `text` (entry None), two training windows
    of each trained entry that reads it and one calibration window; from an entry's own text,
    two of its training windows."""
    def windows(r):
        return 2 * r["training"]["seq_len"], "two training windows of seq_len tokens"

    if entry is not None:
        return [windows(entry)]
    needs = [windows(r) for r in config["recovery"]
             if "train_id" in r and not recovery.training_texts(r)]
    if any(compression.needs_calibration(c) for c in config["compression"]):
        needs.append((config["calibration"]["seq_len"] + 1, "one calibration window and a token"))
    return needs


def _check_text(spec: dict, key: str, base: Path, needs: list[tuple[int, str]]) -> None:
    """A text source's files exist and hold the windows the grid cuts from them. A token
    covers at least one byte of UTF-8 (plus a BOS token), so fewer bytes than that can never
    be enough. Only local files are read here (built-in and hub texts at download)."""
    from jinja2 import TemplateError

    from knowledge_recovery.text import RowError, ShuffleError, load_text

    if spec.get("template") is not None and spec["source"] != "files":
        raise ConfigError(f"{key}.template", "only a text from files (JSON Lines) is rendered "
                          "by a template")
    if spec.get("shuffle") is not None and spec.get("template") is None:
        raise ConfigError(f"{key}.shuffle", "only the rows of a templated text (JSON Lines, "
                          "`template`) have fields to shuffle")
    if spec["source"] != "files":
        return
    problem = spec.get("template") is not None and tasks.template_problem(spec["template"])
    if problem:
        raise ConfigError(f"{key}.template", problem)
    for j, p in enumerate(spec["paths"]):
        if not (base / p).is_file():
            raise ConfigError(f"{key}.paths[{j}]", f"no such file: {p}")
    try:
        body = load_text(spec, base)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}.paths", f"a text file is not UTF-8 ({err.reason})") from None
    except RowError as err:
        raise ConfigError(f"{key}.paths", str(err)) from None
    except ShuffleError as err:
        raise ConfigError(f"{key}.shuffle.field", str(err)) from None
    except TemplateError as err:  # a field a row lacks, a key the sandbox refuses
        raise ConfigError(f"{key}.template", f"does not render every row: {type(err).__name__}: "
                          f"{err}") from None
    if not body.strip():
        raise ConfigError(f"{key}.paths", "the text is empty")
    size = len(body.encode("utf-8")) + 1
    for tokens, what in needs:
        if size < tokens:
            raise ConfigError(f"{key}.paths", f"the text has {size - 1} bytes, so at most "
                              f"{size} tokens, fewer than the {tokens} the grid needs ({what})")


def _check_requirement(package: str, key: str) -> None:
    """A package to download must be a plain requirement ("name==1.0"), not a pip option, a
    URL or a path: it goes to `pip download`."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(package)
    except InvalidRequirement as err:
        raise ConfigError(key, f"{package!r} is not a package requirement: {err}") from None
    if req.url or package.lstrip().startswith("-"):
        raise ConfigError(key, f"{package!r} must name a package on the index, not a URL or option")


def _unique(values, key, what):
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(f"{key}[{i}]", f"duplicate {what}: {v!r}")
        seen.add(v)


if __name__ == "__main__":  # `python -m knowledge_recovery.pipeline.config FILE...`: YAML syntax only
    import sys

    try:
        for arg in sys.argv[1:]:
            read_yaml(arg)
    except ConfigFileError as err:
        raise SystemExit(str(err)) from None
