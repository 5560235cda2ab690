"""The errors genneg reports to a user: each names what is wrong, and the CLI shows it as one
line (every one of them is a :class:`GennegError`)."""

from __future__ import annotations


class GennegError(Exception):
    """Base of the errors genneg raises for bad input, bad files or a run that cannot go on."""


class ConfigError(GennegError, ValueError):
    """A config that cannot be read: the message names the offending key or file and line."""


class BuildError(GennegError, ValueError):
    """A component could not be built from its config entry."""


class RunError(GennegError, RuntimeError):
    """A run that cannot start or continue (existing directory, mismatching config...)."""


class DataError(RunError, ValueError):
    """A dataset the run cannot use (NaN/inf, too few points, a shape the models reject)."""


class CheckpointError(GennegError, RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe to load, or without the weights asked for."""


class OracleError(GennegError, ValueError):
    """An oracle raised, or returned something that is not a valid ``OracleResult``."""


class ClassTooRareError(GennegError, RuntimeError):
    """A synthetic set found too few samples of one class (infracting, or valid) within its
    sample budget (Algorithm 1's inner loop cannot balance the set)."""
