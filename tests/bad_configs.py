"""A corpus of malformed configs, each a change to config/smoke.yaml and the key (or file) its
error must name. Used in-process (test_config.py) and through real Snakemake (test_pipeline.py).

A case is (id, change, key, words): `change(config, folder)` edits the config dict in place and
may write files into `folder` (paths in the config are relative to it); or `change` is a string,
the whole file's text. `key` is the config key the error names (None: Snakemake's own reader
refuses the file), `words` a fragment of the message.
"""
import copy
from pathlib import Path

import yaml
from conftest import REPO

SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
TEMPLATE = {"text": "{{question}}", "choices": "{{choices}}", "target": "{{gold}}"}


def _set(path, value):
    def change(config, _folder):
        node = config
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return change


def _append(section, entry):
    return lambda config, _folder: config[section].append(copy.deepcopy(entry))


def _lm_eval_file(lines: str, task="arc_easy"):
    def change(config, folder):
        Path(folder, "docs.jsonl").write_text(lines)
        config["tasks"].append({"name": task, "type": "lm_eval", "path": "docs.jsonl"})
    return change


def _lm_eval_folder(files: dict, task="mmlu"):
    def change(config, folder):
        Path(folder, "group").mkdir()
        for name, text in files.items():
            Path(folder, "group", name).write_text(text)
        config["tasks"].append({"name": task, "type": "lm_eval", "path": "group"})
    return change


def _local_task(lines: str, name="task.jsonl", **template):
    def change(config, folder):
        Path(folder, name).write_text(lines)
        config["tasks"].append({"name": "mine", "type": "local", "path": name,
                                **{**TEMPLATE, **template}})
    return change


def _text_file(body: bytes | None):
    def change(config, folder):
        if body is not None:
            Path(folder, "text.txt").write_bytes(body)
        config["text"] = {"source": "files", "paths": ["text.txt"]}
    return change


def _curated(bodies: list | None):
    """IDP entries 1 and 2 (one adapter) made a curated pool, on text files with these bodies
    (None: a file not written)."""
    def change(config, folder):
        texts = []
        for j, body in enumerate(bodies or []):
            if body is not None:
                Path(folder, f"curated{j}.txt").write_bytes(body)
            texts.append({"source": "files", "paths": [f"curated{j}.txt"]})
        for i in (1, 2):
            config["recovery"][i]["scheme"] = "curated"
            if bodies is not None:
                config["recovery"][i]["texts"] = texts
    return change


ROW = '{"question": "Q?", "choices": ["a", "b"], "gold": 0}\n'
CASES = [
    ("unknown compression method", _set(("compression", 1, "method"), "wanda2"),
     "compression[1].method", "is not one of"),
    ("bits not offered", _set(("compression", 1, "bits"), 5), "compression[1].bits", "5"),
    ("group size zero", _set(("compression", 1, "group_size"), 0),
     "compression[1].group_size", "less than the minimum of 1"),
    ("group size not dividing the layers", _set(("compression", 1, "group_size"), 48),
     "compression[1].group_size", "does not divide"),
    ("sparsity above 1", _append("compression", {"method": "magnitude", "sparsity": 1.5}),
     "compression[2].sparsity", "1.5"),
    ("sparsity zero", _append("compression", {"method": "magnitude", "sparsity": 0}),
     "compression[2].sparsity", "0"),
    ("N:M with N = M", _append("compression", {"method": "wanda", "pattern": "4:4"}),
     "compression[2].pattern", "N < M"),
    ("sparsity and pattern both", _append("compression", {"method": "sparsegpt", "sparsity": 0.5,
                                                          "pattern": "2:4"}),
     "compression[2]", "exactly one"),
    ("damping above 1", _set(("compression", 1, "damping"), 2), "compression[1].damping", "2"),
    ("a setting of another method", _set(("compression", 1, "sparsity"), 0.5),
     "compression[1].sparsity", "not a setting"),
    ("duplicate compression", _append("compression", SMOKE["compression"][1]),
     "compression[2]", "duplicate"),
    ("packed export of a pruned model", _append("compression", {"method": "magnitude",
                                                                "sparsity": 0.5,
                                                                "export_packed": True}),
     "compression[2].export_packed", "quantization stage"),
    ("IDP pool of zero", _set(("recovery", 1, "pool_size"), 0), "recovery[1].pool_size", "0"),
    ("LoRA rank zero", _set(("recovery", 3, "r"), 0), "recovery[3].r", "0"),
    ("LoRA target absent from the model", _set(("recovery", 3, "target_modules"),
                                               ["query_key_value"]),
     "recovery[3].target_modules", "query_key_value"),
    ("budget too small", _set(("recovery", 3, "max_params"), 100), "recovery[3].max_params", "100"),
    ("unknown recovery method", _append("recovery", {"method": "qlora"}),
     "recovery[4].method", "is not one of"),
    ("IDP score layer beyond the model", lambda c, f: [c["recovery"][i].update(score_layers=[5])
                                                       for i in (1, 2)],
     "recovery[1].score_layers", "5"),
    ("IDP score layer beyond the model beside a valid variant",  # not "give one a name"
     _set(("recovery", 2, "score_layers"), [0, 5]), "recovery[2].score_layers", "do not exist"),
    ("zero virtual tokens", _set(("recovery", 1, "num_virtual_tokens"), 0),
     "recovery[1].num_virtual_tokens", "0"),
    ("entry training override out of range", _set(("recovery", 3, "training"), {"steps": -1}),
     "recovery[3].training.steps", "0"),
    ("negative steps", _set(("training", "steps"), -1), "training.steps", "-1"),
    ("convergence rule without its threshold", _set(("training", "stop_when"), {"window": 50}),
     "training.stop_when", "min_improvement"),
    ("IDP curated pool without texts", _curated(None), "recovery[1].texts", "curated"),
    ("IDP curated pool, a text short", _curated([b"A text. " * 400]), "recovery[1].texts", "2 prompts"),
    ("IDP curated text file missing", _curated([b"A text. " * 400, None]),
     "recovery[1].texts[1].paths[0]", "no such file"),
    ("IDP texts on a routed pool", lambda c, f: [c["recovery"][i].update(
        texts=[{"source": "builtin", "name": "python-reference"}] * 2) for i in (1, 2)],
     "recovery[1].texts", "only scheme 'curated'"),
    ("impossible step count", _set(("training", "steps"), 10 ** 15), "training.steps", "maximum"),
    ("steps as a string", _set(("training", "steps"), "1e15"), "training.steps", "integer"),
    ("negative learning rate", _set(("training", "lr"), -1), "training.lr", "-1"),
    ("training windows beyond the context", _set(("training", "seq_len"), 4096),
     "training.seq_len", "beyond the context"),
    ("calibration windows beyond the context", _set(("calibration", "seq_len"), 4096),
     "calibration.seq_len", "beyond the context"),
    ("validation fraction too large", _set(("training", "val_fraction"), 0.7),
     "training.val_fraction", "0.7"),
    ("unknown model source", _set(("models", 0, "source"), "ftp"), "models[0].source",
     "is not one of"),
    ("unknown architecture", _set(("models", 0, "architecture"), "gpt5"),
     "models[0].architecture", "gpt5"),
    ("duplicate model", _append("models", SMOKE["models"][0]), "models[1]", "duplicate"),
    ("missing local model", _set(("models", 0), {"name": "m", "source": "local",
                                                 "path": "no/such/model"}),
     "models[0].path", "no such model"),
    ("pip option as a package", _set(("models", 0), {"name": "m", "source": "pypi-gguf",
                                                     "package": "--index-url=http://x/ a",
                                                     "file": "m.gguf"}),
     "models[0].package", "requirement"),
    ("no models", _set(("models",), []), "models", "should be non-empty"),
    ("unknown relation", _set(("tasks", 0, "relations"), ["country_flag"]),
     "tasks[0].relations[0]", "country_flag"),
    ("more choices than a relation has", _set(("tasks", 0, "num_choices"), 200),
     "tasks[0].num_choices", "distinct answers"),
    ("more questions than a relation has", _set(("tasks", 0, "per_relation"), 500),
     "tasks[0].per_relation", "facts"),
    ("missing task file", lambda c, f: c["tasks"].append(
        {"name": "mine", "type": "local", "path": "missing.jsonl", **TEMPLATE}),
     "tasks[1].path", "no such task file"),
    ("malformed JSON line", _local_task(ROW + ROW + '{"question": "Q?", "choices": [\n'),
     "tasks[1].path", "line 3 is not valid JSON"),
    ("empty task file", _local_task(""), "tasks[1].path", "no documents"),
    ("template field the file lacks", _local_task(ROW, text="{{query}}"),
     "tasks[1].text", "'query'"),
    ("template that calls code", _local_task(
        ROW, text="{{ cycler.__init__.__globals__.os.system('touch pwned') }}"),
     "tasks[1].text", "may not"),
    ("template reaching a global by a computed key", _local_task(
        ROW, text="{{ cycler['__in' ~ 'it__']['__glo' ~ 'bals__']['os']['environ'] }}"),
     "tasks[1].text", "'cycler' is one of Jinja's globals"),
    ("template reading Jinja's lipsum", _local_task(ROW, text="{{ question }} {{ lipsum }}"),
     "tasks[1].text", "'lipsum' is one of Jinja's globals"),
    ("template reaching a field's class by a computed key", _local_task(
        ROW, text="{{ question['__cla' ~ 'ss__'] }}"),
     "tasks[1].text", "does not render document 1"),
    ("task file of an unknown type", _local_task(ROW, name="task.xml"),
     "tasks[1].path", "unsupported file type"),
    ("lm-eval task file of an unknown shape", _lm_eval_file(
        '{"stem": "Why?", "options": ["a", "b"], "key": 0}\n'), "tasks[1].path",
     "its rows have key, options, stem"),
    ("lm-eval task with no local converter", _lm_eval_file(ROW, task="sciq"), "tasks[1].path",
     "no converter for lm-eval task 'sciq'"),
    ("lm-eval group given a file", _lm_eval_file(ROW, task="mmlu"), "tasks[1].path",
     "'mmlu' is an lm-eval group: give a folder"),
    ("lm-eval task given a folder", _lm_eval_folder({"anatomy_test.csv": "Q?,a,b,c,d,A\n"},
                                                    task="arc_easy"), "tasks[1].path",
     "is a folder, which is read for an lm-eval group"),
    ("lm-eval group folder with a file of no subtask", _lm_eval_folder(
        {"anatomy_test.csv": "Q?,a,b,c,d,A\n", "astrology_test.csv": "Q?,a,b,c,d,A\n"}),
     "tasks[1].path", "astrology_test.csv: no single subtask of lm-eval group 'mmlu'"),
    ("lm-eval group folder with a malformed file", _lm_eval_folder(
        {"anatomy_test.csv": "Q?,a,b,c,d,A\n", "astronomy_test.csv": "Q?,a,b,A\n"}),
     "tasks[1].path", "astronomy_test.csv line 1 has 4 columns"),
    ("unknown lm-eval task", _append("tasks", {"name": "arc_easyy", "type": "lm_eval"}),
     "tasks[1].name", "arc_easy"),
    ("relations on a non-probe task", lambda c, f: c["tasks"].append(
        {"name": "arc_easy", "type": "lm_eval", "relations": ["country_capital"]}),
     "tasks[1].relations", "probes"),
    ("missing text file", _text_file(None), "text.paths[0]", "no such file"),
    ("empty recovery text", _text_file(b" \n\n "), "text.paths", "empty"),
    ("too short recovery text", _text_file(b"A short text. " * 5), "text.paths", "fewer than"),
    ("recovery text not UTF-8", _text_file(b"\xff\xfe" + b"x" * 5000), "text.paths", "UTF-8"),
    ("unknown builtin text", _set(("text", "name"), "nope"), "text.name", "nope"),
    ("empty results folder name", _set(("results_dir",), ""), "results_dir", "non-empty"),
    ("experiment name with a slash", _set(("experiment",), "../etc"), "experiment", "match"),
    ("unknown top-level key", _set(("compresion",), []), "<top level>", "compresion"),
    ("evaluation batch of zero", _set(("evaluation", "batch_size"), 0),
     "evaluation.batch_size", "0"),
    ("zero threads", _set(("threads",), 0), "threads", "0"),
    ("a deployed symmetric grid OpenVINO cannot hold", _set(("compression", 1, "deploy"), "openvino"),
     "compression[1].symmetric", "absmax/8"),
    ("a deployed 3-bit grid", lambda c, _f: c["compression"].append(
        {"method": "rtn", "bits": 3, "group_size": 32, "deploy": "openvino"}),
     "compression[2].bits", "4- or 8-bit"),
    ("an unknown deployment target", _set(("compression", 1, "deploy"), "tensorrt"),
     "compression[1].deploy", "tensorrt"),
    ("a one-input representation sample", _set(("displacement",), {"inputs": 1}),
     "displacement.inputs", "1"),
    ("YAML syntax error", "experiment: x\nmodels:\n  - name: a\n   source: b\n", None,
     "not valid JSON or YAML"),
    ("a key given twice", (REPO / "config" / "smoke.yaml").read_text() + "\nseed: 1\n",
     None, "duplicate key 'seed'"),
    ("not a mapping", "- experiment: x\n", None, "keys at top level"),
]


def write_case(case, folder: Path, **base) -> Path:
    """Write one case's config file (and its data files) into `folder`; return its path. `base`:
    keys set before the case's change."""
    _, change, _, _ = case
    path = folder / "smoke.yaml"
    if isinstance(change, str):
        path.write_text(change)
        return path
    config = {**copy.deepcopy(SMOKE), **base}
    change(config, folder)
    path.write_text(yaml.safe_dump(config))
    return path
