"""Error hierarchy: every user mistake is a ``SmartFedError``; the CLI prints one line, exit 2."""

from __future__ import annotations


class SmartFedError(Exception):
    """Base class for errors caused by user input (files, flags, configs).

    The message must say what is wrong, where (file / field) and how to fix it, on one line.
    """


class ConfigError(SmartFedError, ValueError):
    """An invalid configuration value or flag."""


class PoolCompatibilityError(SmartFedError):
    """A LoRA adapter that cannot be used with the base model or the rest of the pool."""


class AdapterFileError(SmartFedError):
    """A missing, empty, corrupt or non-finite adapter file."""


class ModelLoadError(SmartFedError):
    """A base model that cannot be found or loaded."""


class DataError(SmartFedError):
    """A missing dataset file or a malformed row."""


class CheckpointError(SmartFedError):
    """A router checkpoint or run directory that cannot be used (wrong pool, corrupt, missing)."""


class WireFormatError(SmartFedError):
    """A federated message that does not follow SmartFed's wire contract."""
