"""Frozen configuration dataclasses: strict YAML/dict round trips (STYLE.md P2, P3).

Every method and stage config subclasses :class:`Config`.  ``from_dict`` refuses unknown keys,
naming them sorted with the closest valid names, and converts values by each field's declared
type only (no guessing from the string's look).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from kedit.errors import ConfigError, closest, param_message

__all__ = ["Config", "field"]

C = TypeVar("C", bound="Config")


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text in its metadata (every config field has one)."""
    if isinstance(default, (list, dict, set)):
        factory = (lambda d=default: type(d)(d))
        return dataclasses.field(default_factory=factory, metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/JSON value to the declared field type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list. Got {value!r} instead.")
        inner = args[0] if args else Any
        converted = [_convert(v, inner, where) for v in value]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping. Got {value!r} instead.")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}. Got {value!r} instead.")
        return value
    if isinstance(annotation, type) and issubclass(annotation, Config):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping. Got {value!r} instead.")
        return annotation.from_dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be a bool. Got {value!r} instead.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an int. Got {value!r} instead.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a float. Got {value!r} instead.")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a str. Got {value!r} instead.")
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all kedit configs: frozen, strict, serialisable.

    Subclasses are frozen dataclasses whose fields are made with :func:`field`. Validation of
    ranges and cross-field rules goes in ``__post_init__`` via :meth:`_check`.
    """

    kind: ClassVar[str] = "config"

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a plain mapping; unknown keys raise ConfigError with suggestions."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a mapping. Got {type(data).__name__} instead.")
        data = {k: v for k, v in data.items() if k != "kedit_version"}
        known = cls.field_names()
        unknown = sorted(set(data) - set(known))
        if unknown:
            hints = []
            for key in unknown:
                near = closest(key, known, n=3)
                if near:
                    hints.append(f"{key!r} (did you mean {', '.join(repr(n) for n in near)}?)")
                else:
                    hints.append(repr(key))
            raise ConfigError(
                f"Unknown key(s) for {cls.__name__}: {', '.join(hints)}. "
                f"Valid keys: {', '.join(sorted(known))}."
            )
        hints_ = typing.get_type_hints(cls)
        kwargs = {
            name: _convert(value, hints_[name], f"The {name!r} parameter of {cls.__name__}")
            for name, value in data.items()
        }
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        from kedit import __version__

        text = yaml.safe_dump({"kedit_version": __version__, **self.to_dict()}, sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def config_hash(self) -> str:
        """Content hash of the resolved config (stable across key order)."""
        blob = json.dumps({"class": type(self).__name__, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self: C, **changes: Any) -> C:
        """``dataclasses.replace`` with unknown-key checking."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            self.from_dict({k: None for k in unknown})  # raises with suggestions
        return dataclasses.replace(self, **changes)

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ConfigError(param_message(name, type(self).__name__, expected, getattr(self, name)))
