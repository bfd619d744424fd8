"""What a `recovery:` entry says, without torch: its id, the id of the adapter it evaluates, the
checks of its settings and the texts it trains on. Attaching, saving and loading adapters is
`adapters.py`; training is `training.py`.
"""
from __future__ import annotations

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.registry import recovery_method, recovery_methods, takers

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
