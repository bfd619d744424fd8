"""Recovery methods, through their registry records: build an adapter for a `recovery:` entry,
check it against a model and its budget, save and load it.

The base model stays frozen and adapters stay unmerged, so a pruned or quantized model keeps
exactly the compression its cell claims. Training is in `training.py`.
"""
from __future__ import annotations

import torch

from .errors import ConfigError
from .registry import recovery_method, recovery_methods, takers

# Keys any entry may set besides its method's settings; trained methods also take these.
COMMON_SETTINGS = frozenset({"method", "name"})
TRAINED_SETTINGS = frozenset({"max_params", "training"})


def entry_id(entry: dict) -> str:
    return entry.get("name") or recovery_method(entry["method"]).id_format(entry)


def train_id(entry: dict) -> str:
    """Id of the adapter a recovery entry evaluates: entries that differ only in settings chosen
    at evaluation (IDP's selection) share one."""
    record = recovery_method(entry["method"])
    return entry.get("name") or record.id_format({**entry, **record.eval_only})


def eval_only_settings(entry: dict) -> set[str]:
    return set(recovery_method(entry["method"]).eval_only)


def check_settings(entry: dict, key: str) -> None:
    """Every key of an entry is a setting of its method."""
    methods = recovery_methods()
    record = methods[entry["method"]]
    allowed = record.settings | COMMON_SETTINGS | (TRAINED_SETTINGS if record.trains else set())
    for name in sorted(set(entry) - allowed):
        others = takers(methods, name)
        reason = "it trains nothing" if name in TRAINED_SETTINGS else (
            f"it is one of {', '.join(others)}" if others else "")
        raise ConfigError(f"{key}.{name}", f"not a setting of method {entry['method']!r}"
                          + (f" ({reason})" if reason else ""))


def check_entry(entry: dict, key: str) -> None:
    """Settings of an entry (defaults filled in) that contradict each other."""
    record = recovery_method(entry["method"])
    if record.check:
        record.check(entry, key)


def training_texts(entry: dict) -> list[dict] | None:
    """The text sources a trained entry reads, in order (IDP's curated pools: one per prompt);
    None: the grid's `text`."""
    return entry.get("texts")


def train(model, entry: dict, tokenizer, texts: list[str], cfg: dict, seed: int, **kwargs):
    """Train an attached adapter in place on its texts (`training_texts`, read): the method's
    own way, else `training.train` on the one text. Returns (best trainable state, history)."""
    record = recovery_method(entry["method"])
    if record.train:
        return record.train(model, entry, tokenizer, texts, cfg, seed, **kwargs)
    from .training import train as train_on

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
    return record.build(model, entry, seed, init)


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


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def zero_count(params) -> int:
    """Zero weights among `params`: take the base model's parameters before attaching an adapter,
    and count again after training; the two must agree, or the cell's sparsity claim is void."""
    return sum(int((p == 0).sum()) for p in params)
