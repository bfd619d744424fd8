"""Recovery methods, through their registry records: build an adapter for a `recovery:` entry,
check it against a model and its budget, save and load it.

The base model stays frozen and adapters stay unmerged, so a pruned or quantized model keeps
exactly the compression its cell claims. Training is in `training.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.registry import recovery_method


def train(model, entry: dict, tokenizer, texts: list[str], cfg: dict, seed: int, **kwargs):
    """Train an attached adapter in place on its texts (`training_texts`, read): the method's
    own way, else `training.train` on the one text. Returns (best trainable state, history)."""
    record = recovery_method(entry["method"])
    if record.train:
        return record.train(model, record.parse(entry), tokenizer, texts, cfg, seed, **kwargs)
    from knowledge_recovery.recovery.training import train as train_on

    if len(texts) != 1:
        raise ValueError(f"method {entry['method']!r} trains on one text, got {len(texts)}")
    return train_on(model, tokenizer, texts[0], cfg, seed, **kwargs)


def sample_vocab_embeddings(model, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the input embedding for `count` random token ids (Lester et al.'s initialisation)."""
    emb = model.get_input_embeddings().weight
    ids = torch.randint(emb.shape[0], (count,), generator=torch.Generator().manual_seed(seed))
    return ids, emb[ids.to(emb.device)].detach().float().clone()


def attach(model, entry: dict, seed: int = 0, init: bool = True):
    """Wrap a frozen base model with the entry's untrained adapter (`init=False`: leave the
    library's initialisation, for counting parameters on a meta-device model)."""
    record = recovery_method(entry["method"])
    if not record.trains:
        raise ValueError(f"method {entry['method']!r} trains nothing")
    return record.build(model, record.parse(entry), seed, init)


def attach_checked(model, entry: dict, key: str, model_name: str, seed: int = 0,
                   init: bool = True):
    """`attach`, with failures and a missed parameter budget raised as ConfigError naming `key`.
    Used by preflight on meta-device models (init=False) and by the train step on the real one."""
    try:
        wrapped = attach(model, entry, seed, init)
    except ValueError as err:
        field = recovery_method(entry["method"]).fit_setting
        raise ConfigError(f"{key}.{field}", f"cannot be built on model {model_name!r}: {err}") from None
    count = trainable_parameters(wrapped)
    if entry.get("max_params") and count > entry["max_params"]:
        raise ConfigError(f"{key}.max_params", f"{entry['method']} has {count:,} trainable "
                          f"parameters on model {model_name!r}, over the budget of "
                          f"{entry['max_params']:,}")
    return wrapped


def save(model, entry: dict, path) -> None:
    recovery_method(entry["method"]).save(model, path)


def load(base, entry: dict, path):
    """Attach a saved adapter of the entry's method to a base model, for inference."""
    return recovery_method(entry["method"]).load(base, path).eval()


def saved_entry(path) -> dict:
    """The recovery entry a saved adapter was trained from (the train step's manifest beside
    its folder), with the evaluation-only settings training assumes."""
    from knowledge_recovery.artifacts import read_json

    manifest = Path(path).parent / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no train manifest beside the adapter {path} (give "
                                f"the `adapter` folder of a finished train step)")
    settings = read_json(manifest)["settings"]
    return {**recovery_method(settings["method"]).eval_only, **settings}


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def zero_count(params) -> int:
    """Zero weights among `params`: take the base model's parameters before attaching an adapter,
    and count again after training; the two must agree, or the cell's sparsity claim is void."""
    return sum(int((p == 0).sum()) for p in params)
