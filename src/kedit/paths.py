"""Explicit locations: the cache directory and the shared data folder (no hidden globals)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_dir"]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Cache root: ``override``, else ``$KEDIT_CACHE_DIR``, else ``~/.cache/kedit``."""
    root = Path(override or os.environ.get("KEDIT_CACHE_DIR") or Path.home() / ".cache" / "kedit")
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Benchmark data folder: ``override``, else ``$KEDIT_DATA_DIR``, else ``../shared/data``
    relative to the current directory, else relative to the source checkout."""
    if override:
        return Path(override)
    env = os.environ.get("KEDIT_DATA_DIR")
    if env:
        return Path(env)
    here = Path.cwd() / ".." / "shared" / "data"
    if here.exists():
        return here.resolve()
    repo = Path(__file__).resolve().parents[3]
    return (repo / ".." / "shared" / "data").resolve()
