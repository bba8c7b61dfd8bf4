"""Errors a user can act on.

Every error raised for bad input carries what was wrong and what to do about it. The CLI prints
``str(error)`` without a traceback and exits non-zero.
"""


class NeuroplasticError(Exception):
    """Base class: an error caused by input or environment, with a fix the user can apply."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")


class DataError(NeuroplasticError):
    """A dataset file is missing, truncated, malformed or fails its checksum."""


class ConfigError(NeuroplasticError):
    """An unknown config key, a value of the wrong type, or an unknown experiment."""


class DivergenceError(NeuroplasticError):
    """Training produced a non-finite loss or weight."""
