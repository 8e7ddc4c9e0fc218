"""Exceptions that the CLI turns into exit codes and one-line messages. Standard library only, so
the CLI can catch them without importing the modules that raise them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad flag value; the message names the flag (exit code 2)."""


class SourceError(ValueError):
    """A configuration problem with an input or output location (exit code 2)."""


class ModelFileError(ValueError):
    """A model file is missing, not safetensors, or inconsistent with its description (exit code 2)."""


class LeaseHeld(RuntimeError):
    """Another run holds the table's lease (exit code 4)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it could not renew it in time); it must not commit."""
