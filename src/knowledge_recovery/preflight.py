"""Preflight on model shapes: every compression entry fits the layer widths of every model whose
config is at hand, and every trained recovery entry attaches to it within its budget. Built on
empty (meta-device) models, before any job runs; the compress and train steps repeat the checks
for models first fetched by the run."""
from __future__ import annotations

from pathlib import Path

from .compression import check_widths, linear_widths, needs_calibration
from .errors import ConfigError
from .paths import Layout
from .recovery import attach_checked, trainable_parameters
from .registry import recovery_method


def known_model_config(model: dict, base: Path, downloaded: Path | None = None):
    """The transformers config of a model whose shape is known before any job runs: tiny random
    models, local folders, hub models with config.json in the HF cache, and any model the
    download step has fetched already (a resumed run). Else None."""
    if model["source"] == "tiny-random":
        from .models import tiny_config

        return tiny_config(model)
    folders = [base / downloaded] if downloaded is not None else []
    if model["source"] == "local":
        folders.append(base / model["path"])
    if model["source"] == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model["repo"], "config.json",
                                        revision=model.get("revision", "main"))
        if isinstance(cached, str):
            folders.append(Path(cached).parent)
    for folder in folders:
        if (folder / "config.json").is_file():
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(folder)
    return None


def empty_model(model_cfg):
    """The model of a config on the meta device: its modules and shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_cfg)


def check_recovery_entry(entry: dict, key: str, model_cfg, model_name: str) -> int:
    """Build one entry on an empty model of this config; returns its parameter count."""
    return trainable_parameters(attach_checked(empty_model(model_cfg), entry, key, model_name,
                                               init=False))


def check_models(config: dict, base: Path) -> None:
    """Run the shape checks on every model whose shape is known (imports torch, transformers and
    peft: seconds, so only the main Snakemake process does it)."""
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
    from . import task_formats
    from .tasks import lm_eval_task_problem

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
