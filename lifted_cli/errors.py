"""The errors that end a command with one line on stderr, each with its exit status.

``lifted`` prints ``lifted <command>: error: <message>`` and exits with ``exit_code``: 2 for input that
is refused before any work starts (a bad value, an invalid combination, a bad file), 1 for a failure
while working (divergence, missing data). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LiftedError(Exception):
    """Base class; the message is one line."""

    exit_code = 1


class ConfigError(LiftedError, ValueError):
    """A bad configuration value or combination: the message names the value and what is allowed."""

    exit_code = 2


class InputError(LiftedError):
    """A file given as input (checkpoint, state_dict, tensor file) that cannot be used."""

    exit_code = 2


class DataError(LiftedError):
    """MNIST could not be found or fetched."""


class RunError(LiftedError):
    """A run that cannot go on: divergence, a refused resume."""


class WriteError(RunError):
    """A result could not be written (a full disk, a read-only folder); the file it would replace is intact."""


class DivergenceError(RunError):
    """A NaN or inf in the iterates or the statistics."""
