"""Every error clrun reports to a user as one line (``clrun: error: ...``, exit 2), in one place.

Each message names the key or file, the value, and what is allowed or how to proceed."""

from __future__ import annotations


class ClrunError(Exception):
    """An input clrun refuses before training: configuration, data, run directory or checkpoint."""


class ConfigError(ClrunError, ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


class DatasetError(ClrunError, RuntimeError):
    """A dataset that cannot be read or found: the message names the directory and files expected."""


class CheckpointError(ClrunError):
    """A checkpoint that is not a clrun checkpoint, is damaged, or cannot be loaded safely."""


class ResumeMismatch(ConfigError):
    """``resume`` asked of a run directory that holds a different experiment; the message names the keys."""
