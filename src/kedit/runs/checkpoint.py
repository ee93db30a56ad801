"""Resumable sequential runs: atomic checkpoints of weights, method state and progress.

A checkpoint holds the exact accumulated deltas (float64 differences, so re-applying them gives
the saved weights bit for bit), the method's sequential state (AlphaEdit past keys, LyapLock
queues — all fixed-size tensors), the torch RNG state and the index of the next batch.  It is
written into a temporary folder and renamed over the previous one, so a run killed at any moment
leaves either the old or the new checkpoint, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kedit.errors import LedgerError

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoint"
_FILES = ("progress.json", "deltas.safetensors", "state.safetensors", "rng.safetensors")


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
    wrong = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in sorted(wrong.items()))
        raise LedgerError(f"{folder}: the checkpoint belongs to a different run ({details})")
    deltas = load_file(str(folder / "deltas.safetensors"))
    if deltas:
        editor.ledger.apply(EditSet(deltas, editor.spec.name, editor.config.to_dict(), (),
                                    editor.ledger.base_fingerprint, meta={"resumed_from": str(folder)}))
    editor.state = dict(load_file(str(folder / "state.safetensors")))
    torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["cpu"])
    return record
