"""An explicit on-disk cache of layer statistics keyed by content (STYLE.md M4).

The file name is the hash of the full key (weights fingerprint, module, corpus digest, token
budget, sequence length, dtype, kedit version); the key is also stored in the safetensors
metadata and checked on load, so a stale or foreign file is never trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from kedit.errors import DataError, NonFiniteError
from kedit.paths import cache_dir as default_cache_dir
from kedit.stats.corpus import corpus_digest, default_corpus
from kedit.stats.second_moment import LayerMoment, collect_second_moments

__all__ = ["StatsCache"]

log = logging.getLogger(__name__)


class StatsCache:
    """Key second moments of one base model, computed once and reused.

    Args:
        model, tokenizer, adapter: the UNEDITED model (statistics must not see edits).
        fingerprint: weights fingerprint of that model.
        corpus: text file or folder (default: WikiText-2 test in the shared data folder).
        token_budget: tokens to read; a few × d_k is enough (FastMEMIT).
        seq_len: packed row length.
        cache_dir: cache root (default ``$KEDIT_CACHE_DIR`` or ``~/.cache/kedit``).
    """

    def __init__(self, model, tokenizer, adapter, fingerprint: str, *, corpus=None, token_budget: int = 20_000,
                 seq_len: int = 256, cache_dir=None, progress: bool = True):
        from kedit import __version__

        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.fingerprint = fingerprint
        self.corpus = Path(corpus) if corpus else default_corpus()
        self.token_budget = int(token_budget)
        self.seq_len = int(seq_len)
        self.root = default_cache_dir(cache_dir) / "stats"
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.version = __version__
        self._memory: dict[int, torch.Tensor] = {}
        self._corpus_digest: str | None = None
        self.tokens_used: dict[int, int] = {}
        self.seconds = 0.0

    def key(self, layer: int) -> dict[str, str]:
        if self._corpus_digest is None:
            self._corpus_digest = corpus_digest(self.corpus)
        return {
            "fingerprint": self.fingerprint,
            "module": self.adapter.mlp_out_name(layer),
            "corpus": self._corpus_digest,
            "token_budget": str(self.token_budget),
            "seq_len": str(self.seq_len),
            "dtype": "float64",
            "kedit_version": self.version,
        }

    def path(self, layer: int) -> Path:
        blob = json.dumps(self.key(layer), sort_keys=True).encode()
        return self.root / f"mom2-{hashlib.sha256(blob).hexdigest()[:24]}.safetensors"

    def _load(self, layer: int) -> torch.Tensor | None:
        path = self.path(layer)
        if not path.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        expected = self.key(layer)
        if any(meta.get(k) != v for k, v in expected.items()):
            log.warning("ignoring %s: its recorded key does not match %s", path, expected)
            return None
        tensors = load_file(str(path))
        self.tokens_used[layer] = int(meta.get("tokens", "0"))
        return LayerMoment.from_state_dict(tensors).moment()

    def _save(self, layer: int, stat: LayerMoment) -> None:
        path = self.path(layer)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        meta = {**self.key(layer), "tokens": str(stat.count)}
        save_file({k: v.contiguous() for k, v in stat.state_dict().items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    def ensure(self, layers: Sequence[int]) -> None:
        """Compute (in one pass) every missing layer among ``layers``."""
        import time

        missing = []
        for layer in layers:
            if layer in self._memory:
                continue
            loaded = self._load(layer)
            if loaded is None:
                missing.append(layer)
            else:
                self._memory[layer] = loaded
        if not missing:
            return
        start = time.perf_counter()
        stats = collect_second_moments(
            self.model, self.tokenizer, self.adapter, missing, corpus=self.corpus,
            token_budget=self.token_budget, seq_len=self.seq_len, progress=self.progress,
        )
        self.seconds += time.perf_counter() - start
        for layer, stat in stats.items():
            if not torch.isfinite(stat.sum_kk).all():
                raise NonFiniteError(f"key statistics of {self.adapter.mlp_out_name(layer)} contain NaN/inf")
            self._save(layer, stat)
            self.tokens_used[layer] = stat.count
            self._memory[layer] = stat.moment()

    def C0(self, layer: int) -> torch.Tensor:
        """E[k kᵀ] at ``layer`` (float64, d_k × d_k)."""
        self.ensure([layer])
        if layer not in self._memory:
            raise DataError(
                f"{self.corpus}: the corpus yields fewer than seq_len={self.seq_len} tokens, so no key statistics "
                f"were collected for {self.adapter.mlp_out_name(layer)}; use a longer corpus or a smaller seq_len"
            )
        C0 = self._memory[layer]
        if not torch.isfinite(C0).all():
            raise NonFiniteError(f"key statistics of {self.adapter.mlp_out_name(layer)} contain NaN/inf "
                                 f"(cache file {self.path(layer)}); delete it to recompute")
        return C0

    def report(self) -> dict[str, object]:
        return {"tokens_used": dict(self.tokens_used), "seconds": round(self.seconds, 3),
                "token_budget": self.token_budget, "corpus": str(self.corpus)}
