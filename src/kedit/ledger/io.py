"""Save and load EditSets as a directory: ``deltas.safetensors`` plus ``manifest.json`` (STYLE.md F1, F2).

Why two files: the safetensors header (str -> str) makes the tensors self-describing for any safetensors
reader (kedit version, base fingerprint, method, config hash, request ids), while the manifest keeps what
does not fit a flat string map (full config, requests, per-tensor shapes).  Loading cross-checks the two
and fails loudly on any disagreement.  Dense deltas are stored under their parameter name; a
:class:`SparseRows` delta as ``<name>::index`` and ``<name>::values``.

Example:
    >>> import tempfile, torch
    >>> e = EditSet({"w": torch.ones(2, 2)}, "demo", {"lr": 0.1}, (), "fp")
    >>> d = save_edit_set(e, tempfile.mkdtemp() + "/e")
    >>> load_edit_set(d).deltas["w"].sum().item()
    4.0
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import kedit
from kedit.data.requests import EditRequest
from kedit.errors import DataError, LedgerError
from kedit.ledger.delta import EditSet, SparseRows

__all__ = ["save_edit_set", "load_edit_set", "config_hash"]

log = logging.getLogger(__name__)

FORMAT = "kedit.edit_set"
FORMAT_VERSION = 1
DELTAS_FILE = "deltas.safetensors"
MANIFEST_FILE = "manifest.json"
_SEP = "::"
_MANIFEST_KEYS = ("format", "format_version", "kedit_version", "method", "config", "config_hash", "requests",
                  "base_fingerprint", "tensors", "meta")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        bad = [k for k, v in value.items() if not _json_ok(v)] if isinstance(value, dict) else []
        raise LedgerError(
            f"The edit set's {what} must be JSON-serialisable to be saved ({exc}); offending keys: {sorted(map(str, bad))}. "
            f"Convert them to str/int/float/list/dict (e.g. str(path), str(dtype)) before building the EditSet."
        ) from exc


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def config_hash(config: dict) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``config``.

    Example:
        >>> config_hash({"a": 1}) == config_hash({"a": 1})
        True
    """
    return hashlib.sha256(_dumps(config, "config").encode()).hexdigest()[:16]


def _version_tuple(version: str) -> tuple[int, int, int]:
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if not match:
        raise LedgerError(f"Cannot parse kedit_version {version!r} in the edit set; expected 'MAJOR.MINOR.PATCH'.")
    return tuple(int(g or 0) for g in match.groups())  # type: ignore[return-value]


def _check_version(file_version: str, where: Path) -> None:
    mine, theirs = _version_tuple(kedit.__version__), _version_tuple(file_version)
    if theirs[0] > mine[0]:
        raise LedgerError(
            f"{where} was written by kedit {file_version}, newer than the installed kedit {kedit.__version__} "
            f"(major version differs); upgrade kedit to load it."
        )
    if theirs[:2] > mine[:2]:
        msg = f"{where} was written by kedit {file_version}, newer than the installed {kedit.__version__}; loading anyway."
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)


def save_edit_set(edit_set: EditSet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``edit_set`` to the directory ``path`` atomically and return it.

    Args:
        edit_set: the deltas and provenance to store.
        path: target directory (created; its parent must exist or is created).
        overwrite: replace an existing directory at ``path``.

    Example:
        >>> import tempfile, torch
        >>> save_edit_set(EditSet({"w": torch.ones(1)}, "m", {}, (), "fp"), tempfile.mkdtemp() + "/x").name
        'x'
    """
    if not isinstance(edit_set, EditSet):
        raise LedgerError(f"save_edit_set needs an EditSet. Got {type(edit_set).__name__} instead.")
    path = Path(path)
    if path.exists() and not overwrite:
        raise LedgerError(f"{path} already exists; pass overwrite=True or choose another directory.")
    chash = config_hash(edit_set.config)
    meta_json = _dumps(edit_set.meta, "meta")
    request_ids = _dumps([r.id for r in edit_set.requests], "request ids")
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    sparse: dict[str, int] = {}
    for name in edit_set.names():
        if _SEP in name:
            raise LedgerError(f"Parameter name {name!r} contains {_SEP!r}, which the ledger file format reserves.")
        delta = edit_set.deltas[name]
        if isinstance(delta, SparseRows):
            tensors[name + _SEP + "index"] = delta.index.detach().cpu().contiguous().clone()
            tensors[name + _SEP + "values"] = delta.values.detach().cpu().contiguous().clone()
            sparse[name] = delta.dim
            described[name] = {"kind": "sparse_rows", "dim": delta.dim, "shape": list(delta.values.shape),
                               "dtype": str(delta.values.dtype).removeprefix("torch."), "rows": delta.index.numel()}
        else:
            tensors[name] = delta.detach().cpu().contiguous().clone()
            described[name] = {"kind": "dense", "shape": list(delta.shape),
                               "dtype": str(delta.dtype).removeprefix("torch.")}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kedit_version": kedit.__version__,
        "base_fingerprint": edit_set.base_fingerprint,
        "method": edit_set.method,
        "config_hash": chash,
        "request_ids": request_ids,
        "sparse": json.dumps(sparse, sort_keys=True),
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kedit_version": kedit.__version__,
        "method": edit_set.method,
        "config": edit_set.config,
        "config_hash": chash,
        "requests": [r.to_dict() for r in edit_set.requests],
        "base_fingerprint": edit_set.base_fingerprint,
        "tensors": described,
        "meta": json.loads(meta_json),
    }
    manifest_text = json.dumps(manifest, indent=2, sort_keys=True)  # requests were validated as JSON above
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(tensors, str(tmp / DELTAS_FILE), metadata=header)
        (tmp / MANIFEST_FILE).write_text(manifest_text + "\n", encoding="utf-8")
        _replace_dir(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Saved %s edit set (%d tensors) to %s", edit_set.method, len(described), path)
    return path


def _replace_dir(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``path``; an existing ``path`` is swapped out first and removed afterwards."""
    old = None
    if path.exists() and overwrite:
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fail(path: Path, problem: str) -> LedgerError:
    return LedgerError(f"{path}: {problem}. Re-save the edit set with kedit.ledger.save_edit_set.")


def load_edit_set(path: str | os.PathLike) -> EditSet:
    """Read an EditSet written by :func:`save_edit_set`, checking manifest and tensors agree.

    Raises LedgerError on a missing directory or file, a newer major kedit version or file format,
    missing/unexpected tensors, shape/dtype or header disagreement (warns on a newer minor version).

    Example:
        >>> load_edit_set("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        kedit.errors.LedgerError: ...
    """
    path = Path(path)
    if not path.is_dir():
        raise LedgerError(f"No edit set at {path}: expected a directory with {MANIFEST_FILE} and {DELTAS_FILE} written by save_edit_set.")
    missing = sorted(f for f in (MANIFEST_FILE, DELTAS_FILE) if not (path / f).is_file())
    if missing:
        raise _fail(path, f"missing file(s) {missing}")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path / MANIFEST_FILE, f"unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise _fail(path / MANIFEST_FILE, "the manifest is not a JSON object")
    absent = sorted(k for k in _MANIFEST_KEYS if k not in manifest)
    if absent:
        raise _fail(path / MANIFEST_FILE, f"manifest lacks key(s) {absent}")
    if manifest["format"] != FORMAT:
        raise _fail(path / MANIFEST_FILE, f"format is {manifest['format']!r}, expected {FORMAT!r}")
    if not isinstance(manifest["format_version"], int) or manifest["format_version"] > FORMAT_VERSION:
        raise LedgerError(
            f"{path}: file format version {manifest['format_version']!r} is newer than this kedit reads "
            f"({FORMAT_VERSION}); upgrade kedit."
        )
    _check_version(manifest["kedit_version"], path)

    try:
        with safe_open(str(path / DELTAS_FILE), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path / DELTAS_FILE))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise _fail(path / DELTAS_FILE, f"unreadable safetensors file ({type(exc).__name__}: {exc})") from exc

    chash = config_hash(manifest["config"])
    expected_header = {
        "base_fingerprint": manifest["base_fingerprint"],
        "method": manifest["method"],
        "config_hash": manifest["config_hash"],
        "kedit_version": manifest["kedit_version"],
        "request_ids": _dumps([r.get("id") for r in manifest["requests"]], "request ids"),
    }
    disagree = sorted(k for k, v in expected_header.items() if header.get(k) != v)
    if disagree:
        detail = ", ".join(f"{k}: manifest {expected_header[k]!r} vs tensors {header.get(k)!r}" for k in disagree)
        raise _fail(path, f"manifest and {DELTAS_FILE} disagree on {disagree} ({detail})")
    if chash != manifest["config_hash"]:
        raise _fail(path / MANIFEST_FILE, f"config hash {manifest['config_hash']} does not match the stored config (hash {chash}); the config was edited")

    described: dict[str, dict] = manifest["tensors"]
    expected_keys: set[str] = set()
    for name, info in described.items():
        if info.get("kind") == "sparse_rows":
            expected_keys |= {name + _SEP + "index", name + _SEP + "values"}
        elif info.get("kind") == "dense":
            expected_keys.add(name)
        else:
            raise _fail(path / MANIFEST_FILE, f"tensor {name!r} has unknown kind {info.get('kind')!r}")
    missing_t, unexpected = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
    if missing_t or unexpected:
        raise _fail(path, f"manifest and {DELTAS_FILE} disagree: missing tensors {missing_t}, unexpected tensors {unexpected}")
    header_sparse = json.loads(header.get("sparse", "{}"))
    manifest_sparse = {n: i.get("dim") for n, i in described.items() if i["kind"] == "sparse_rows"}
    if header_sparse != manifest_sparse:
        raise _fail(path, f"sparse tensors disagree: manifest {manifest_sparse} vs {DELTAS_FILE} header {header_sparse}")

    deltas: dict[str, torch.Tensor | SparseRows] = {}
    problems = []
    for name, info in sorted(described.items()):
        values = tensors[name + _SEP + "values"] if info["kind"] == "sparse_rows" else tensors[name]
        if list(values.shape) != list(info.get("shape", [])) or str(values.dtype).removeprefix("torch.") != info.get("dtype"):
            problems.append(f"{name}: manifest {info.get('shape')} {info.get('dtype')} vs file {list(values.shape)} {values.dtype}")
            continue
        if info["kind"] == "sparse_rows":
            deltas[name] = SparseRows(tensors[name + _SEP + "index"], values, int(info["dim"]))
        else:
            deltas[name] = values
    if problems:
        raise _fail(path, "tensor shape/dtype disagreement: " + "; ".join(problems))

    requests = []
    for i, raw in enumerate(manifest["requests"]):
        try:
            requests.append(EditRequest.from_dict(raw))
        except (DataError, TypeError) as exc:
            raise _fail(path / MANIFEST_FILE, f"requests[{i}] is invalid ({exc})") from exc
    return EditSet(
        deltas=deltas,
        method=manifest["method"],
        config=manifest["config"],
        requests=tuple(requests),
        base_fingerprint=manifest["base_fingerprint"],
        meta=manifest["meta"],
    )
