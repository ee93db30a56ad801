"""Shared plumbing for the JSON benchmark loaders: read a list of records, slice it, and pull typed
fields out of one record with errors that name the file, the record and the field (STYLE.md S3/S4).

Kept private so each loader module holds only its dataset's mapping onto ``EditRequest``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from kedit.errors import ConfigError, DataError, param_message, record_message

__all__: list[str] = []

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING = object()


def read_json_list(path: str | os.PathLike, what: str) -> tuple[list[Any], str]:
    """Parse ``path`` as a JSON list; return it with the path string used in error messages.

    A missing file is a FileNotFoundError (callers may catch that builtin); everything else that
    makes the file unusable is a DataError naming the path.
    """
    p = Path(path)
    source = str(p)
    if not p.is_file():
        problem = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"{what} file {source!r} {problem}; pass the path of the JSON file "
            "(the benchmark data folder is $KEDIT_DATA_DIR or ../shared/data)"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{source}: is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} (char {err.pos})"
        ) from None
    if not isinstance(records, list):
        raise DataError(f"{source}: must be a JSON list of records (got {json_type(records)})")
    return records, source


def select(records: list[T], *, n: int | None, start: int, source: str, owner: str) -> list[tuple[int, T]]:
    """``records[start:start+n]`` paired with their index in the file (used in error messages)."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(param_message("start", owner, "an int >= 0", start))
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(param_message("n", owner, "None or an int >= 0", n))
    if start > 0 and start >= len(records):
        raise DataError(f"{source}: start={start} is past the last record (the file has {len(records)} records)")
    stop = len(records) if n is None else start + n
    if stop > len(records):
        logger.warning("%s: asked for n=%d records from start=%d but only %d remain", source, n, start, len(records) - start)
    return list(enumerate(records[start:stop], start=start))


def json_type(value: Any) -> str:
    """The JSON-side type name, so messages read 'must be a string (got int)'."""
    if value is None:
        return "null"
    return type(value).__name__


class Record:
    """One dict record plus where it came from; typed getters raise DataError with the location."""

    def __init__(self, value: Any, source: str, index: int, prefix: str = "") -> None:
        self.source, self.index, self.prefix = source, index, prefix
        if not isinstance(value, dict):
            where = f"field {prefix.rstrip('.')!r}" if prefix else "the record"
            raise DataError(f"{source}: record {index}: {where} must be a JSON object (got {json_type(value)})")
        self.value = value

    def fail(self, field: str, problem: str) -> DataError:
        return DataError(record_message(self.source, self.index, self.prefix + field, problem))

    def raw(self, field: str, default: Any = _MISSING) -> Any:
        if field not in self.value or (self.value[field] is None and default is not _MISSING):
            if default is _MISSING:
                raise self.fail(field, f"is missing (keys present: {sorted(self.value)})")
            return default
        return self.value[field]

    def text(self, field: str, default: Any = _MISSING, *, strip: bool = False) -> Any:
        """A non-empty string field; ``strip`` for answers (scoring adds the leading space)."""
        value = self.raw(field, default)
        if value is default and default is not _MISSING:
            return value
        return self.check_text(field, value, strip)

    def text_list(self, field: str) -> tuple[str, ...]:
        """A list of non-empty strings; absent or null means empty."""
        value = self.raw(field, [])
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of strings (got {json_type(value)})")
        return tuple(self.check_text(f"{field}[{i}]", item, False) for i, item in enumerate(value))

    def child(self, field: str) -> "Record":
        return Record(self.raw(field), self.source, self.index, f"{self.prefix}{field}.")

    def ident(self, field: str) -> str | int:
        """A case id: int or string; the record index when absent."""
        value = self.raw(field, self.index)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.fail(field, f"must be an int or a string (got {json_type(value)})")
        return value

    def check_text(self, field: str, value: Any, strip: bool) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string (got {json_type(value)})")
        if not value.strip():
            raise self.fail(field, f"must be non-empty (got {value!r})")
        return value.strip() if strip else value


def build(record: Record, factory: Callable[[], T]) -> T:
    """Run ``factory`` (an EditRequest constructor) and re-raise its DataError with the file/record prefix.

    EditRequest validates in ``__post_init__`` under the generic source name "EditRequest"; the
    loaders check the dataset fields first, so this is the backstop that keeps the location.
    """
    try:
        return factory()
    except DataError as err:
        message = str(err)
        generic = "EditRequest: "
        if not message.startswith(generic):
            raise
        where = f"{record.source}: record {record.index}: "
        raise DataError(where + message[len(generic):]) from None
