"""The method registry: filled only by ``register_method`` calls in each preset module (STYLE.md P1)."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from kedit.errors import ConfigError, closest

__all__ = ["MethodSpec", "register_method", "get_method", "list_methods", "METHODS"]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    method_cls: type
    summary: str
    tags: frozenset[str] = frozenset()
    expected_failures: dict[str, str] = dataclasses.field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, method_cls: type, *, summary: str, tags=(),
                    expected_failures: dict[str, str] | None = None) -> MethodSpec:
    """Register a preset; names are lower case, not ending in '_', and unique."""
    if not re.fullmatch(r"[a-z][a-z0-9_+\-]*", name) or name.endswith("_"):
        raise ValueError(f"Method name {name!r} must be lower case letters/digits/_/+/- and not end in '_'.")
    if name in METHODS:
        raise ValueError(f"Method {name!r} is already registered (by {METHODS[name].method_cls.__qualname__}).")
    spec = MethodSpec(name, config_cls, method_cls, summary, frozenset(tags), dict(expected_failures or {}))
    METHODS[name] = spec
    return spec


def _ensure_loaded() -> None:
    import kedit.methods  # noqa: F401  (imports every preset module)


def get_method(name: str) -> MethodSpec:
    _ensure_loaded()
    if name not in METHODS:
        near = closest(name, METHODS)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"Unknown method {name!r}.{hint} Available: {', '.join(sorted(METHODS))}.")
    return METHODS[name]


def list_methods() -> list[MethodSpec]:
    _ensure_loaded()
    return [METHODS[k] for k in sorted(METHODS)]


def build_config(name: str, config: Any = None, *, model_type: str | None = None, n_layers: int | None = None):
    """Resolve a config for method ``name`` from None (family defaults), a dict (YAML) or an instance."""
    spec = get_method(name)
    if isinstance(config, spec.config_cls):
        return config
    base = spec.config_cls.for_model(model_type, n_layers) if hasattr(spec.config_cls, "for_model") else spec.config_cls()
    if config is None:
        return base
    if not isinstance(config, dict):
        raise ConfigError(f"config for {name!r} must be a dict or {spec.config_cls.__name__}; got {type(config).__name__}")
    merged = {**base.to_dict(), **config}
    for key, value in config.items():  # nested stage configs merge field by field
        if isinstance(value, dict) and isinstance(base.to_dict().get(key), dict):
            merged[key] = {**base.to_dict()[key], **value}
    return spec.config_cls.from_dict(merged)
