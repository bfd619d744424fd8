"""What a `recovery:` entry says, without torch: its id, the id of the adapter it evaluates, the
checks of its settings and the texts it trains on. Attaching, saving and loading adapters is
`adapters.py`; training is `training.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

from knowledge_recovery.errors import ConfigError
from knowledge_recovery.registry import (Settings, recovery_method, recovery_methods,
                                         setting, setting_fields, takers)


@dataclass(frozen=True, kw_only=True)
class RecoverySettings(Settings):
    """What any recovery entry may set (the settings of a method that trains nothing)."""

    name: str | None = setting(None, help="overrides the id derived from the settings",
                               **{"$ref": "#/$defs/name"})


@dataclass(frozen=True, kw_only=True)
class TrainedSettings(RecoverySettings):
    """What any trained recovery entry may set besides its method's settings."""

    max_params: int | None = setting(None, minimum=1, help="Parameter budget; a method over it "
                                     "is a config error")
    training: dict | None = setting(None, help="this entry's changes to the grid's `training:`",
                                    **{"$ref": "#/$defs/training"})
    text: dict | None = setting(None, help="the text this entry trains on instead of the grid's "
                                "`text:` (compression still calibrates on the grid's)",
                                **{"$ref": "#/$defs/text_source"})


TRAINED_ONLY = frozenset(f.name for f in setting_fields(TrainedSettings)) - frozenset(
    f.name for f in setting_fields(RecoverySettings))


def entry_id(entry: dict) -> str:
    return entry.get("name") or recovery_method(entry["method"]).parse(entry).id()


def train_id(entry: dict) -> str:
    """Id of the adapter a recovery entry evaluates: entries that differ only in settings chosen
    at evaluation (IDP's selection) share one."""
    record = recovery_method(entry["method"])
    return entry.get("name") or record.parse({**entry, **record.eval_only}).id()


def eval_only_settings(entry: dict) -> set[str]:
    return set(recovery_method(entry["method"]).eval_only)


def check_settings(entry: dict, key: str) -> None:
    """Every key of an entry is a setting of its method."""
    methods = recovery_methods()
    record = methods[entry["method"]]
    for name in sorted(set(entry) - record.setting_names - {"method"}):
        others = takers(methods, name)
        reason = "it trains nothing" if name in TRAINED_ONLY else (
            f"it is one of {', '.join(others)}" if others else "")
        raise ConfigError(f"{key}.{name}", f"not a setting of method {entry['method']!r}"
                          + (f" ({reason})" if reason else ""))


def check_entry(entry: dict, key: str) -> None:
    """Settings of an entry (defaults filled in) that contradict each other."""
    recovery_method(entry["method"]).parse(entry).check(key)


def training_texts(entry: dict) -> list[dict] | None:
    """The text sources a trained entry reads, in order (IDP's curated pools: one per prompt;
    an entry's own `text`); None: the grid's `text`."""
    return entry.get("texts") or ([entry["text"]] if entry.get("text") else None)
