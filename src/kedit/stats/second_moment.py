"""Key second moments E[k kᵀ] of rewrite-module inputs (methods.md §1.5).

Collected on the unedited model for every requested layer in one pass (early stop after the
deepest hooked layer), over a token budget: FastMEMIT observes that a few × d_k key vectors
give a usable estimate, so the default budget is far below the reference's 100k articles.
``E[v kᵀ]`` and ``E[v vᵀ]`` with ``v = W0 k`` follow exactly from ``E[k kᵀ]`` and ``W0``
(:func:`value_moments`), so they are derived rather than collected.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from kedit.models.adapters import Adapter
from kedit.models.hooks import eval_mode, trace
from kedit.stats.corpus import read_corpus

__all__ = ["LayerMoment", "collect_second_moments", "value_moments"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerMoment:
    """Streaming uncentered second moment: ``add`` batches of keys, read ``moment()``.

    Mirrors the Stat protocol of the MEMIT code (add / state_dict / load_state_dict) so
    statistics are streamable and mergeable.
    """

    sum_kk: torch.Tensor  # (d_k, d_k), float64
    count: int = 0

    @classmethod
    def empty(cls, d_k: int) -> "LayerMoment":
        return cls(torch.zeros(d_k, d_k, dtype=torch.float64))

    def add(self, keys: torch.Tensor) -> None:
        k = keys.reshape(-1, keys.shape[-1]).to(torch.float64)  # (n, d_k)
        self.sum_kk += k.T @ k
        self.count += k.shape[0]

    def merge(self, other: "LayerMoment") -> None:
        self.sum_kk += other.sum_kk
        self.count += other.count

    def moment(self) -> torch.Tensor:
        """C0 = (1/N) Σ k kᵀ."""
        return self.sum_kk / max(self.count, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sum_kk": self.sum_kk, "count": torch.tensor(self.count)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "LayerMoment":
        return cls(state["sum_kk"].to(torch.float64), int(state["count"]))


def _token_batches(tokenizer, corpus, *, token_budget: int, seq_len: int, batch_size: int):
    """Pack the corpus into rows of ``seq_len`` tokens until ``token_budget`` tokens."""
    buffer: list[int] = []
    rows: list[list[int]] = []
    used = 0
    eos = tokenizer.eos_token_id
    for paragraph in read_corpus(corpus):
        buffer.extend(tokenizer(paragraph, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= seq_len and used < token_budget:
            take = min(seq_len, token_budget - used)
            rows.append(buffer[:take])
            buffer = buffer[seq_len:]
            used += take
            if len(rows) == batch_size:
                yield rows
                rows = []
        if used >= token_budget:
            break
    if rows:
        yield rows


def collect_second_moments(
    model: nn.Module,
    tokenizer,
    adapter: Adapter,
    layers: Sequence[int],
    *,
    corpus,
    token_budget: int,
    seq_len: int = 256,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[int, LayerMoment]:
    """One pass over the corpus collecting E[k kᵀ] at the rewrite-module input of ``layers``.

    Every non-pad token counts (rows are packed, so there is no padding except a short tail).
    Returns a LayerMoment per layer; its ``count`` is the number of tokens used.
    """
    names = {adapter.mlp_out_name(i): i for i in layers}
    d_k = {}
    stats: dict[int, LayerMoment] = {}
    device = next(model.parameters()).device
    bar = tqdm(total=token_budget, unit="tok", desc=f"key statistics ({len(layers)} layers)", disable=not progress)
    start = time.perf_counter()
    with torch.no_grad(), eval_mode(model):
        for rows in _token_batches(tokenizer, corpus, token_budget=token_budget, seq_len=seq_len, batch_size=batch_size):
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            with trace(model, list(names), retain_input=True, retain_output=False, stop=True) as traced:
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            keep = mask.bool().to(device)
            for name, layer in names.items():
                keys = traced[name].input[keep]  # (n_tok, d_k)
                if layer not in stats:
                    d_k[layer] = keys.shape[-1]
                    stats[layer] = LayerMoment.empty(d_k[layer])
                stats[layer].add(keys.cpu())
            bar.update(int(keep.sum()))
    bar.close()
    n = next(iter(stats.values())).count if stats else 0
    log.info("key statistics: %d tokens over %d layers in %.1f s", n, len(layers), time.perf_counter() - start)
    return stats


def value_moments(C0: torch.Tensor, W0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[v kᵀ] = W0 C0 and E[v vᵀ] = W0 C0 W0ᵀ for v = W0 k (LyapLock, methods.md §6.2).

    Args:
        C0: E[k kᵀ], (d_k, d_k).
        W0: unedited weight in (d_v, d_k) orientation.
    """
    W = W0.to(C0.dtype)
    VK = W @ C0  # (d_v, d_k)
    return VK, VK @ W.T  # (d_v, d_v)
