"""LyapLock as a scheduler over host methods: LyapLock+MEMIT, +RECT, +PRUNE and +AlphaEdit (methods.md §6.4).

The reference repository has no code for the paper's compatibility experiments; the contract
derived in the spec is used: the host's fixed preservation weight λ becomes a·Z(t)·λ, and the
queue runs on the host's own preservation loss D(t) measured on the weights it writes.

AlphaEdit has no λ; its fixed regularisation weight is the ridge term α (``l2``), so
``lyaplock+alphaedit`` scales α → a·Z(t)·α (``AlphaEdit.preservation_weight``; a contract derived
here, not in the spec).  PRUNE's restraint still runs once after the last batch: ``Editor.finalize``
finds the host's ``finalize`` through the class hierarchy.
"""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import field
from kedit.methods.alphaedit import AlphaEdit, AlphaEditConfig
from kedit.methods.lyaplock import unedited_moments
from kedit.methods.memit import Memit, MemitConfig
from kedit.methods.prune import Prune, PruneConfig
from kedit.methods.rect import Rect, RectConfig
from kedit.methods.registry import register_method
from kedit.stages.lyaplock import advance_queue, preservation_loss

__all__ = ["QueueScheduled", "LyapLockMemitConfig", "LyapLockRectConfig", "LyapLockPruneConfig",
           "LyapLockAlphaEditConfig"]


class QueueScheduled:
    """Mixin: a virtual queue per layer scales ``preservation_weight`` (host λ → a·Z(t)·λ)."""

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        for layer in self.config.layers:
            ctx.base_weight(ctx.adapter.weight_name(layer))

    def initial_state(self, ctx):
        return {**super().initial_state(ctx), "queue.t": torch.tensor(0.0, dtype=torch.float64)}

    def preservation_weight(self, layer: int, state) -> float:
        base = super().preservation_weight(layer, state)
        if float(state["queue.t"]) == 0:
            return base
        return float(state[f"queue.{layer}.a"] * state[f"queue.{layer}.Z"]) * base

    def compute(self, ctx, requests, state):
        deltas, new, info = super().compute(ctx, requests, state)
        new = dict(new)
        first = float(state["queue.t"]) == 0
        stats = ctx.stats(self.config.stats)
        params = dict(ctx.model.named_parameters())
        queue_info = {"D": {}, "budget": {}, "Z": {}, "weight": {}}
        for layer in self.config.layers:
            name = ctx.adapter.weight_name(layer)
            C0, VK, VV = unedited_moments(ctx, stats, layer)
            W_after = ctx.adapter.to_out_in(params[name].detach() + deltas[name]).double()
            D = preservation_loss(W_after, C0, VK, VV)
            budget = advance_queue(state, new, f"queue.{layer}.", D, alpha=self.config.alpha, b=self.config.b,
                                   first=first)
            queue_info["D"][layer], queue_info["budget"][layer] = D, budget
            queue_info["Z"][layer] = float(new[f"queue.{layer}.Z"])
            queue_info["weight"][layer] = self.preservation_weight(layer, state)
        new["queue.t"] = state["queue.t"] + 1
        return deltas, new, {**info, "lyaplock": queue_info}


_QUEUE_FIELDS = {
    "alpha": (60.0, "Budget multiplier: D̄ = α·D₀ (D₀ measured after the first batch)."),
    "b": (0.0, "Constant increment of the virtual queue."),
}


@dataclasses.dataclass(frozen=True)
class LyapLockMemitConfig(MemitConfig):
    """MEMIT with LyapLock's adaptive preservation weight a·Z(t)·λ (alpha, b as in LyapLockConfig)."""

    alpha: float = field(*_QUEUE_FIELDS["alpha"])
    b: float = field(*_QUEUE_FIELDS["b"])


@dataclasses.dataclass(frozen=True)
class LyapLockRectConfig(RectConfig):
    """RECT with LyapLock's adaptive preservation weight a·Z(t)·λ (alpha, b as in LyapLockConfig)."""

    alpha: float = field(*_QUEUE_FIELDS["alpha"])
    b: float = field(*_QUEUE_FIELDS["b"])


@dataclasses.dataclass(frozen=True)
class LyapLockPruneConfig(PruneConfig):
    """PRUNE with LyapLock's adaptive preservation weight a·Z(t)·λ during the batches (alpha, b as in
    LyapLockConfig); the singular-value restraint after the last batch is unchanged."""

    alpha: float = field(*_QUEUE_FIELDS["alpha"])
    b: float = field(*_QUEUE_FIELDS["b"])


@dataclasses.dataclass(frozen=True)
class LyapLockAlphaEditConfig(AlphaEditConfig):
    """AlphaEdit whose ridge term follows the queue, l2 → a·Z(t)·l2 (derived contract, see the module
    docstring).  ``alpha`` and ``b`` are the queue's, as in LyapLockConfig: ``alpha`` is the budget
    multiplier, not AlphaEdit's α (that one is ``l2``)."""

    alpha: float = field(*_QUEUE_FIELDS["alpha"])
    b: float = field(*_QUEUE_FIELDS["b"])


class LyapLockMemit(QueueScheduled, Memit):
    tags = Memit.tags | {"stateful"}


class LyapLockRect(QueueScheduled, Rect):
    tags = Rect.tags | {"stateful"}


class LyapLockPrune(QueueScheduled, Prune):
    """``finalize`` is PRUNE's: the restraint applies to W_now − W0 after the queue-weighted batches."""

    tags = Prune.tags | {"stateful"}


class LyapLockAlphaEdit(QueueScheduled, AlphaEdit):
    """The queue scales AlphaEdit's ``preservation_weight`` (its ridge term α); P and the past-key
    cache are AlphaEdit's own."""

    tags = AlphaEdit.tags


register_method("lyaplock+memit", LyapLockMemitConfig, LyapLockMemit,
                summary="MEMIT whose λ follows LyapLock's virtual queue (compatibility mode).", tags=LyapLockMemit.tags)
register_method("lyaplock+rect", LyapLockRectConfig, LyapLockRect,
                summary="RECT whose λ follows LyapLock's virtual queue (compatibility mode).", tags=LyapLockRect.tags)
register_method("lyaplock+prune", LyapLockPruneConfig, LyapLockPrune,
                summary="PRUNE whose λ follows LyapLock's virtual queue (compatibility mode).",
                tags=LyapLockPrune.tags)
register_method("lyaplock+alphaedit", LyapLockAlphaEditConfig, LyapLockAlphaEdit,
                summary="AlphaEdit whose ridge term α follows LyapLock's virtual queue (derived compatibility mode).",
                tags=LyapLockAlphaEdit.tags)
