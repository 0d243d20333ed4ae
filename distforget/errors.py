"""Errors that distforget raises for bad input.

Every error a user can cause (config, data, checkpoints, storage) is a ``DistforgetError`` with a
message that names the bad value and what was expected; the command line prints it as one line.
"""

import difflib
from typing import Iterable


def did_you_mean(value: str, options: Iterable[str], n: int = 1) -> str:
    """`` (did you mean 'x'?)`` for the options closest to ``value``, or ``""``."""
    close = difflib.get_close_matches(value, list(options), n=n)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


class DistforgetError(ValueError):
    """Bad input: the message names the value and what was expected."""


class ConfigError(DistforgetError):
    """A config file, a key=value override or a search space is wrong."""


class DataError(DistforgetError):
    """A data source, a scenario or an image is wrong."""


class CheckpointError(DistforgetError):
    """A checkpoint does not match its architecture or its recorded hash."""
