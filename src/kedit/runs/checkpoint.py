"""Resumable runs: atomic checkpoints of a sequential run's weights, method state and progress, and
the finished batches of an independent run read back from its journal.

A checkpoint holds the exact accumulated deltas (float64 differences, so re-applying them gives
the saved weights bit for bit), the method's sequential state (AlphaEdit past keys, LyapLock
queues — all fixed-size tensors), the torch RNG state and the index of the next batch.  It is
written into a temporary folder and renamed over the previous one, so a run killed at any moment
leaves either the old or the new checkpoint, never half of one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kedit.errors import LedgerError

log = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "finished_batches", "journal_batches", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoint"
_FILES = ("progress.json", "deltas.safetensors", "state.safetensors", "rng.safetensors")
# What an independent run's manifest must share with the one it resumes.
_SAME_RUN = ("method", "config_hash", "dataset", "request_ids", "batch_size", "mode", "seed")


def _differences(saved: dict[str, Any], expected: dict[str, Any], pair: str) -> str:
    """``"key: <pair>"`` for every key of ``expected`` that ``saved`` holds differently ('' if none)."""
    return ", ".join(f"{k}: " + pair.format(saved.get(k), v) for k, v in sorted(expected.items())
                     if saved.get(k) != v)


def save_checkpoint(out_dir: str | os.PathLike, editor, *, next_batch: int, progress: dict[str, Any]) -> Path:
    """Write ``out_dir/checkpoint`` atomically after ``next_batch`` batches were applied."""
    out = Path(out_dir)
    final = out / CHECKPOINT_DIR
    tmp = out / f".{CHECKPOINT_DIR}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    deltas = {k: v.contiguous() for k, v in editor.ledger.current_delta(exact=True).items()}
    save_file(deltas, str(tmp / "deltas.safetensors"))
    save_file({k: v.contiguous() for k, v in editor.state.items()}, str(tmp / "state.safetensors"))
    save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    record = {"next_batch": next_batch, "base_fingerprint": editor.ledger.base_fingerprint,
              "method": editor.spec.name, "config_hash": editor.config.config_hash(), **progress}
    (tmp / "progress.json").write_text(json.dumps(record, indent=1))
    old = out / f".{CHECKPOINT_DIR}.old{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: str | os.PathLike, editor) -> dict[str, Any]:
    """Restore weights, method state and RNG from ``out_dir/checkpoint``; return its progress record.

    Refuses (LedgerError) a folder without a complete checkpoint, or one written for other base
    weights, another method or another config.
    """
    from kedit.ledger import EditSet

    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        raise LedgerError(f"{out_dir}: no '{CHECKPOINT_DIR}/' folder to resume from (was the run started with "
                          "--checkpoint-every?)")
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        raise LedgerError(f"{folder}: incomplete checkpoint, missing {sorted(missing)}")
    try:
        record = json.loads((folder / "progress.json").read_text())
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{folder / 'progress.json'}: not valid JSON ({exc})") from None
    expected = {"base_fingerprint": editor.ledger.base_fingerprint, "method": editor.spec.name,
                "config_hash": editor.config.config_hash()}
    details = _differences(record, expected, "checkpoint {!r} vs this run {!r}")
    if details:
        raise LedgerError(f"{folder}: the checkpoint belongs to a different run ({details})")
    deltas = load_file(str(folder / "deltas.safetensors"))
    if deltas:
        editor.ledger.apply(EditSet(deltas, editor.spec.name, editor.config.to_dict(), (),
                                    editor.ledger.base_fingerprint, meta={"resumed_from": str(folder)}))
    editor.state = dict(load_file(str(folder / "state.safetensors")))
    torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["cpu"])
    return record


def _run_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a run manifest must share with the one an independent run resumes."""
    return {**{k: manifest.get(k) for k in _SAME_RUN},
            "weights_fingerprint": (manifest.get("model") or {}).get("weights_fingerprint")}


def finished_batches(out_dir: str | os.PathLike, manifest: dict[str, Any],
                     batch_ids: list[list[Any]]) -> list[dict[str, Any]]:
    """The journal records of the batches an earlier process of this independent run finished.

    Independent batches all start from the base weights, so resuming one needs no saved weights:
    only each finished batch's per-request scores, which its journal line carries (``cases``).
    Records count in order while each is the next batch, names that batch's requests and carries
    its cases; the first that does not (a line cut off by the kill) ends them, and that batch is
    edited again.  An empty or missing run directory resumes from nothing; a run directory of
    another run (``manifest`` differs in method, config, data, requests, batching, seed or base
    weights) is refused, since mixing its scores with this run's would be silently wrong.
    """
    out = Path(out_dir)
    journal, old_manifest = out / "journal.jsonl", out / "manifest.json"
    if not old_manifest.is_file():
        return []
    try:
        old = json.loads(old_manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{old_manifest}: not valid JSON ({exc}); remove the run directory to start over") from None
    details = _differences(_run_identity(old), _run_identity(manifest), "{!r} there vs {!r} here")
    if details:
        raise LedgerError(f"{out}: the run directory belongs to a different run ({details[:500]}); "
                          "use another output folder or remove it")
    if old.get("cpu") and manifest.get("cpu") and old["cpu"] != manifest["cpu"]:
        # not refused: each request's edit is still one CPU's, as when slices of one benchmark run on two machines
        log.warning("%s: its finished requests were edited on %s, the rest will be on %s; an edit on an edge can "
                    "round differently on another CPU", out, old["cpu"], manifest["cpu"])
    return journal_batches(journal, batch_ids)


def journal_batches(journal: str | os.PathLike, batch_ids: list[list[Any]] | None = None) -> list[dict[str, Any]]:
    """The records of an independent run's ``journal.jsonl`` that count as finished batches: in order
    while each is the next batch, carries its cases and (given ``batch_ids``) names that batch's
    requests; the first that does not (a line cut off by a kill) ends them."""
    path = Path(journal)
    done: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        index = len(done)
        if (record.get("batch") != index or not isinstance(record.get("cases"), list) or batch_ids is not None
                and (index >= len(batch_ids) or record.get("request_ids") != batch_ids[index])):
            break
        done.append(record)
    return done
