"""Exception types and the one message template every kedit error uses (STYLE.md S4).

Each exception subclasses a builtin so callers' existing ``except ValueError`` keeps working.
"""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = [
    "ConfigError",
    "DataError",
    "UnsupportedModelError",
    "NonFiniteError",
    "LedgerError",
    "param_message",
    "record_message",
    "closest",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


class DataError(ValueError):
    """A dataset record or an edit request is malformed."""


class UnsupportedModelError(LookupError):
    """The model architecture has no adapter, or a module path does not resolve."""


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in statistics, targets or weights."""


class LedgerError(ValueError):
    """A weight delta cannot be applied, reverted or loaded."""


def param_message(param: str, owner: str, expected: str, got: object) -> str:
    """The template: "The 'layers' parameter of MemitConfig must be ... Got [] instead."."""
    return f"The {param!r} parameter of {owner} must be {expected}. Got {got!r} instead."


def record_message(source: str, index: int | None, field: str, problem: str) -> str:
    """The data template: "path: record 17: field 'subject' must occur in 'prompt' (...)"."""
    where = source if index is None else f"{source}: record {index}"
    return f"{where}: field {field!r} {problem}"


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidate names closest to ``name`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)
