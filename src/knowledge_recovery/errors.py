"""The one exception a config problem raises; a leaf module, so every other module may import it."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, with the key it is about."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key '{key}': {message}")
        self.key = key
        self.message = message



class ConfigFileError(ConfigError):
    """A config file that cannot be read as a config (YAML syntax, duplicate keys, not a mapping)."""

    def __init__(self, path, message: str):
        ValueError.__init__(self, f"config file '{path}': {message}")
        self.key = str(path)
        self.message = message
