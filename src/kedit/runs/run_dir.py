"""What a run directory keeps between processes: its finished summary and its pre-edit scores.

A long comparison runs as several processes on one output folder (one method each, then a last one
that tabulates them all), and any of them may be killed and resumed.  Two things make that cheap:
a method whose run already wrote ``summary.json`` is taken as it is, and the scores of the unedited
model (1,000 CounterFact requests take about as long to score as 100 edits, the probes a few
minutes more) are kept in ``pre_edit.json`` and read back, by a resumed run or by another method of
the same comparison.  They are used only for the same scoring protocol, requests and base weights.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from kedit.runs.checkpoint import CHECKPOINT_DIR

__all__ = ["PRE_EDIT_FILE", "SUMMARY_FILE", "write_json", "finished_summary", "has_checkpoint", "pre_edit_key", "read_pre_edit",
           "write_pre_edit", "add_pre_probes", "pre_edit_file", "pre_probe_results", "shared_pre_edit"]

log = logging.getLogger(__name__)

PRE_EDIT_FILE = "pre_edit.json"
SUMMARY_FILE = "summary.json"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any, *, compact: bool = False) -> None:
    """Write ``data`` as JSON atomically (a temporary file renamed over ``path``): a run killed
    mid-write leaves the old file or the new one, never half of one.  ``compact``: one line, no
    spaces, non-ASCII kept (score archives kept in the repository)."""
    tmp = path.with_name(path.name + ".tmp")
    text = (json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str) if compact
            else json.dumps(data, indent=2, default=str))
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finished_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The summary of a run that finished in an earlier process, None if it has not finished."""
    path = Path(run_dir) / SUMMARY_FILE
    return _read(path) if path.is_file() else None


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether an earlier process left a checkpoint to resume from."""
    return (Path(run_dir) / CHECKPOINT_DIR).is_dir()


def pre_edit_key(scoring: str, request_ids: list[str], weights_fingerprint: str) -> dict[str, Any]:
    """What saved pre-edit scores must match to be reused."""
    return {"protocol": scoring, "request_ids": list(request_ids), "weights_fingerprint": weights_fingerprint}


def pre_edit_file(source: str | os.PathLike) -> Path:
    """``source`` itself, or the ``pre_edit.json`` inside it when it is a run directory."""
    path = Path(source)
    return path / PRE_EDIT_FILE if path.is_dir() else path


def read_pre_edit(source: str | os.PathLike, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved pre-edit record at ``source`` (a ``pre_edit.json`` or a run directory holding one)
    if it was measured under ``key``; None (with a warning when the file exists) otherwise."""
    path = pre_edit_file(source)
    if not path.is_file():
        return None
    saved = _read(path)
    if {k: saved.get(k) for k in key} != key:
        log.warning("%s belongs to other requests, protocol or weights; scoring the unedited model again", path)
        return None
    log.info("pre-edit scores read from %s", path)
    return saved


def write_pre_edit(run_dir: str | os.PathLike, key: dict[str, Any], cache: Any, result: dict[str, Any],
                   probes: dict[str, Any] | None = None) -> None:
    """Keep the pre-edit scores (``cache``: a JSON-ready locality cache or None) in ``run_dir``."""
    record = {**key, "cache": cache, "result": result}
    if probes is not None:
        record["probes"] = probes
    write_json(Path(run_dir) / PRE_EDIT_FILE, record)


def add_pre_probes(run_dir: str | os.PathLike, results: dict[str, Any], probe_n: int) -> None:
    """Add the pre-edit probe results, measured with ``probe_n`` items per task, to ``run_dir``'s file."""
    path = Path(run_dir) / PRE_EDIT_FILE
    write_json(path, {**_read(path), "probes": {"probe_n": probe_n, "results": results}})


def pre_probe_results(saved: dict[str, Any] | str | os.PathLike | None,
                      probe_n: int | None = None) -> dict[str, Any] | None:
    """The pre-edit probe results of a saved record (or of a run directory's file), None when it
    has none or, given ``probe_n``, when they were measured with another number of items."""
    if saved is not None and not isinstance(saved, dict):
        path = pre_edit_file(saved)
        saved = _read(path) if path.is_file() else None
    probes = (saved or {}).get("probes") or {}
    if not probes or (probe_n is not None and probes.get("probe_n") != probe_n):
        return None
    return probes.get("results")


def shared_pre_edit(folder: str | os.PathLike, methods: list[str]) -> Path | None:
    """The first ``pre_edit.json`` among the run directories ``folder/<method>``: what another
    method of the same comparison can start from (its key is checked when it is read)."""
    for method in methods:
        path = Path(folder) / method / PRE_EDIT_FILE
        if path.is_file():
            return path
    return None
