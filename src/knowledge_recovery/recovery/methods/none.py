"""No recovery: the compressed model as it is."""
from __future__ import annotations

from knowledge_recovery.recovery.entries import RecoverySettings
from knowledge_recovery.registry import RecoveryMethod, register_recovery_method

register_recovery_method(RecoveryMethod(name="none", settings=RecoverySettings))
