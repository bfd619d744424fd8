"""Preflight on model shapes: every compression entry fits the layer widths of every model whose
config is at hand, and every trained recovery entry attaches to it within its budget. Built on
empty (meta-device) models, before any job runs; the compress and train steps repeat the checks
for models first fetched by the run.

`python -m knowledge_recovery.pipeline.preflight BASE_DIR` runs the checks on the config given as
JSON on stdin (what `run` does in a child process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from knowledge_recovery.compression.entries import check_widths, needs_calibration
from knowledge_recovery.errors import ConfigError
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.registry import recovery_method


def known_model_config(model: dict, base: Path, downloaded: Path | None = None):
    """The transformers config of a model whose shape is known before any job runs: tiny random
    models, local folders, hub models with config.json in the HF cache, any model the download
    step has fetched already (a resumed run), and any model the config gives a `shape:`. Else
    None."""
    if model["source"] == "tiny-random":
        from knowledge_recovery.models.checkpoints import tiny_config

        return tiny_config(model)
    found = model_config_file(model, base, downloaded)
    if found is None and not model.get("shape"):
        return None
    from transformers import AutoConfig

    if found is None:  # the config's `shape:`, until the model is downloaded
        shape = dict(model["shape"])
        return AutoConfig.for_model(shape.pop("model_type"), **shape)
    return AutoConfig.from_pretrained(found.parent)


def model_config_file(model: dict, base: Path, downloaded: Path | None = None) -> Path | None:
    """The config.json `known_model_config` reads for a model that is not tiny random."""
    folders = [base / downloaded] if downloaded is not None else []
    if model["source"] == "local":
        folders.append(base / model["path"])
    if model["source"] == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model["repo"], "config.json",
                                        revision=model.get("revision", "main"))
        if isinstance(cached, str):
            folders.append(Path(cached).parent)
    return next((f / "config.json" for f in folders if (f / "config.json").is_file()), None)


# Where a passed preflight is remembered: Snakemake's own folder in the working directory.
PASSED_DIR = Path(".snakemake") / "knowledge_recovery_preflight"


def fingerprint(config: dict, base: Path) -> str:
    """What the checks read: the config, each model's config.json, the local task files, the
    versions of the libraries that build the models and this package's code. The same
    fingerprint passed before: the checks would pass again (the compress and train steps repeat
    them on the real model in any case)."""
    import hashlib
    import json
    from importlib import metadata

    from knowledge_recovery.evaluation.task_formats import source_files

    layout = Layout(config)
    files = [model_config_file(m, base, Path(layout.checkpoint(m["name"])))
             for m in config["models"] if m["source"] != "tiny-random"]
    files += [f for t in config["tasks"] if t.get("path")
              for f in source_files(Path(base, t["path"]))]
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(json.dumps(
        [config, {p: metadata.version(p) for p in ("torch", "transformers", "peft", "lm_eval")},
         [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f is not None]],
        sort_keys=True, default=str).encode())
    for source in sorted(package.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


def empty_model(model_cfg):
    """The model of a config on the meta device: its modules and shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_cfg)


def check_recovery_entry(entry: dict, key: str, model_cfg, model_name: str) -> int:
    """Build one entry on an empty model of this config; returns its parameter count."""
    from knowledge_recovery.recovery.adapters import attach_checked, trainable_parameters

    return trainable_parameters(attach_checked(empty_model(model_cfg), entry, key, model_name,
                                               init=False))


def check_models(config: dict, base: Path) -> None:
    """Run the shape checks on every model whose shape is known (imports torch, transformers and
    peft: seconds, so only the main Snakemake process does it)."""
    from knowledge_recovery.compression.apply import linear_widths

    layout = Layout(config)
    for m in config["models"]:
        model_cfg = known_model_config(m, base, Path(layout.checkpoint(m["name"])))
        if model_cfg is None:
            continue
        check_context(config, model_cfg, m["name"])
        widths = linear_widths(empty_model(model_cfg))
        for i, c in enumerate(config["compression"]):
            check_widths(c, f"compression[{i}]", widths, m["name"])
        for i, r in enumerate(config["recovery"]):
            if recovery_method(r["method"]).trains:
                check_recovery_entry(r, f"recovery[{i}]", model_cfg, m["name"])


def check_lm_eval_tasks(config: dict, base_dir: Path = Path(".")) -> None:
    """Every `lm_eval` task names a task lm-eval has; a `path` that is a folder serves an
    lm-eval group, and each of its files converts for one subtask of it."""
    from knowledge_recovery.evaluation import task_formats
    from knowledge_recovery.evaluation.tasks import lm_eval_task_problem

    for i, t in enumerate(config["tasks"]):
        problem = t["type"] == "lm_eval" and lm_eval_task_problem(t["name"])
        if problem:
            raise ConfigError(f"tasks[{i}].name", problem)
        if t["type"] != "lm_eval" or not t.get("path"):
            continue
        try:
            _, files = task_formats.entry_files(t["name"], Path(base_dir, t["path"]))
            for task, path in files.items():
                task_formats.convert(task, path, t.get("format"))
        except ValueError as err:
            raise ConfigError(f"tasks[{i}].path", str(err)) from None


def check_context(config: dict, model_cfg, model_name: str) -> None:
    """Sequences the grid feeds a model fit its context: calibration windows, and training
    windows with a recovery entry's virtual tokens in front."""
    context = getattr(model_cfg, "max_position_embeddings", None)
    if not context:
        return
    if any(needs_calibration(c) for c in config["compression"]) and \
            config["calibration"]["seq_len"] > context:
        raise ConfigError("calibration.seq_len", f"{config['calibration']['seq_len']} tokens is "
                          f"beyond the context of model {model_name!r} ({context})")
    for i, r in enumerate(config["recovery"]):
        if not recovery_method(r["method"]).trains:
            continue
        seq_len = r["training"]["seq_len"]
        total = seq_len + r.get("num_virtual_tokens", 0)
        if total > context:
            key = ("training.seq_len" if seq_len == config["training"]["seq_len"]
                   else f"recovery[{i}].training.seq_len")
            virtual = f" + {total - seq_len} virtual" if total > seq_len else ""
            raise ConfigError(key, f"{seq_len}{virtual} tokens is beyond the context of model "
                              f"{model_name!r} ({context})")


def run(config: dict, base: Path) -> None:
    """`check_models` and `check_lm_eval_tasks`, in a child process unless this one has already
    imported torch: the checks import torch, transformers, peft and lm-eval (~350 MB), which the
    main Snakemake process, alive for the whole grid (on a cluster's login node too), never needs
    again. A problem found there is raised here as the same ConfigError."""
    if "torch" in sys.modules:  # nothing left to save
        check_models(config, base)
        check_lm_eval_tasks(config, base)
        return
    proc = subprocess.run([sys.executable, "-m", __name__, str(base)], input=json.dumps(config),
                          capture_output=True, text=True)
    if proc.returncode == CONFIG_PROBLEM:
        problem = json.loads(proc.stdout)
        raise ConfigError(problem["key"], problem["message"])
    if proc.returncode:
        raise RuntimeError(f"the preflight checks on the models failed:\n{proc.stderr[-4000:]}")


CONFIG_PROBLEM = 3  # the child's exit status when it found a config problem (JSON on stdout)


def main(argv=None) -> int:
    base = Path((argv or sys.argv[1:])[0])
    config = json.load(sys.stdin)
    try:
        check_models(config, base)
        check_lm_eval_tasks(config, base)
    except ConfigError as err:
        print(json.dumps({"key": err.key, "message": err.message}))
        return CONFIG_PROBLEM
    return 0


if __name__ == "__main__":
    sys.exit(main())
