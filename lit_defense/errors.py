"""Errors a user can act on.

Every error raised for bad input names the bad value and the fix. The CLI turns these (and
plain ``ValueError``/``FileNotFoundError`` raised by our own code) into one line on stderr and
exit code 2, never a deep traceback.
"""

from __future__ import annotations


class LitDefenseError(Exception):
    """Base class of the errors lit-defense raises for bad input."""


class ConfigError(LitDefenseError, ValueError):
    """A configuration value is wrong (unknown name, impossible number, mismatched shapes)."""


class DataNotFoundError(LitDefenseError, FileNotFoundError):
    """A dataset, checkpoint or other file the run needs is missing or unreadable."""


class DataFormatError(LitDefenseError, ValueError):
    """A data file exists but is corrupted or is not in the expected format."""


class NonFiniteLossError(LitDefenseError, ArithmeticError):
    """Training diverged: the loss became NaN or infinite."""
