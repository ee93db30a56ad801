"""Write an edited model as a plain Hugging Face checkpoint that needs no kedit to load.

Why: an edited model is only useful if it can be shipped.  ``export_checkpoint`` saves the model's current
(edited) weights with ``save_pretrained`` (safetensors), the tokenizer, and a ``kedit_edits.json`` that
records which edit sets produced it, so ``AutoModelForCausalLM.from_pretrained(out_dir)`` reproduces the
edited model's logits exactly and the provenance travels with the weights.

GGUF-loaded models carry a ``quantization_config`` and refuse ``save_pretrained``; for them the weights are
copied into a fresh model built from a copy of the config without that attribute (the original model and
its config are left untouched).

Example:
    >>> import tempfile
    >>> from kedit.testing.tiny import tiny_model
    >>> model, tok = tiny_model("gpt2")
    >>> out = export_checkpoint(model, tok, tempfile.mkdtemp() + "/ckpt")
    >>> (out / "kedit_edits.json").exists()
    True
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from torch import nn

import kedit
from kedit.errors import LedgerError
from kedit.ledger.delta import EditSet
from kedit.ledger.io import config_hash
from kedit.models.fingerprint import weights_fingerprint

__all__ = ["export_checkpoint", "EDITS_FILE"]

log = logging.getLogger(__name__)

EDITS_FILE = "kedit_edits.json"


def _model_to_save(model: nn.Module) -> nn.Module:
    """``model`` itself, or a fresh unquantised copy when its config carries a ``quantization_config``."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise LedgerError(
            f"export_checkpoint needs a Hugging Face PreTrainedModel. Got {type(model).__name__} instead."
        )
    if not hasattr(config, "quantization_config") and getattr(model, "hf_quantizer", None) is None:
        return model
    from transformers import AutoModelForCausalLM

    clean = copy.deepcopy(config)
    if hasattr(clean, "quantization_config"):
        delattr(clean, "quantization_config")
    log.info("Dropping quantization_config from a copy of the config to export %s", type(model).__name__)
    dtype = next(model.parameters()).dtype
    fresh = AutoModelForCausalLM.from_config(clean, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise LedgerError(
            f"Could not rebuild an unquantised {type(model).__name__} for export: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}. Dequantise the model (load it with a float dtype) first."
        )
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.eval()
    return fresh


def _edits_record(model_fingerprint: str, edit_sets: Sequence[EditSet]) -> dict:
    return {
        "kedit_version": kedit.__version__,
        "weights_fingerprint": model_fingerprint,
        "edit_sets": [
            {
                "method": e.method,
                "request_ids": [r.id for r in e.requests],
                "base_fingerprint": e.base_fingerprint,
                "config_hash": config_hash(e.config),
                "tensors": list(e.names()),
            }
            for e in edit_sets
        ],
    }


def export_checkpoint(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    edit_sets: Sequence[EditSet] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (with its current, edited weights) and ``tokenizer`` to ``out_dir`` atomically.

    Args:
        model: a transformers causal LM (typically after ``Ledger.apply``).
        tokenizer: its tokenizer, or None to save weights only.
        out_dir: the checkpoint directory to create.
        edit_sets: the edit sets the weights contain, in order (e.g. ``ledger.history``), recorded in
            ``kedit_edits.json``.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir`` as a Path.

    Example:
        >>> import tempfile
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> export_checkpoint(model, tok, tempfile.mkdtemp() + "/m").name
        'm'
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise LedgerError(f"{out} already exists; pass overwrite=True or choose another directory.")
    edit_sets = list(edit_sets or [])
    bad = [i for i, e in enumerate(edit_sets) if not isinstance(e, EditSet)]
    if bad:
        raise LedgerError(f"export_checkpoint: edit_sets{bad} are not EditSets; pass e.g. ledger.history.")
    to_save = _model_to_save(model)
    record = _edits_record(weights_fingerprint(to_save), edit_sets)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        to_save.save_pretrained(str(tmp))  # transformers 5 always writes safetensors
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / EDITS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Exported checkpoint with %d edit set(s) to %s", len(edit_sets), out)
    return out
