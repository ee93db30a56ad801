"""LyapLock preset: MEMIT keys/values, the Lyapunov-queue weighted closed form (methods.md §6).

State per edited layer (all d_k×d_k or scalar, so memory is flat in the number of edits):
``S_KK``/``S_VK`` past-edit sums, queue ``Z``, constants ``a``/``Z_min``/``D0`` (set after the first
batch), the last preservation loss ``D``; plus the batch counter ``t``.
"""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import field
from kedit.methods.base import MultiLayerConfig
from kedit.methods.memit import Memit
from kedit.methods.registry import register_method
from kedit.stages.lyaplock import advance_queue, lyaplock_delta, preservation_loss
from kedit.stages.spread import spread_over_layers
from kedit.stats.second_moment import value_moments

__all__ = ["LyapLockConfig", "LyapLock", "unedited_moments"]


@dataclasses.dataclass(frozen=True)
class LyapLockConfig(MultiLayerConfig):
    """LyapLock (2025).

    Args:
        layers: edited layers.
        mom2_update_weight: λ (1000 in the reference, not MEMIT's 15000).
        alpha: budget multiplier: D̄ = α·D₀ with D₀ the loss after the first batch.
        V: weight of the editing terms (drift-plus-penalty V).
        b: constant queue increment.
        target / stats / seed: as MEMIT.
    """

    mom2_update_weight: float = field(1000.0, "λ: base weight of the preservation term.")
    alpha: float = field(60.0, "Budget multiplier: D̄ = α·D₀ (D₀ measured after the first batch).")
    V: float = field(1.0, "Drift-plus-penalty weight of the editing terms.")
    b: float = field(0.0, "Constant increment of the virtual queue.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("mom2_update_weight", self.mom2_update_weight > 0, "a float > 0")
        self._check("alpha", self.alpha > 0, "a float > 0")
        self._check("V", self.V > 0, "a float > 0")


class LyapLock(Memit):
    tags = frozenset({"deterministic", "needs_stats", "batched", "closed_form", "stateful"})

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        for layer in self.config.layers:
            ctx.base_weight(ctx.adapter.weight_name(layer))

    def initial_state(self, ctx):
        return {"t": torch.tensor(0.0, dtype=torch.float64)}

    def compute(self, ctx, requests, state):
        cfg = self.config
        stats = ctx.stats(cfg.stats)
        stats.ensure(cfg.layers)
        templates, values = self.values(ctx, requests)
        new = dict(state)
        first = float(state["t"]) == 0
        params = dict(ctx.model.named_parameters())
        info: dict[str, dict] = {"D": {}, "budget": {}, "Z": {}, "weight": {}}

        def solve(layer, K, R):
            C0, VK, VV = unedited_moments(ctx, stats, layer)
            W = ctx.adapter.to_out_in(params[ctx.adapter.weight_name(layer)].detach()).double()
            if first:
                weight = cfg.mom2_update_weight
                delta = lyaplock_delta(K, R, W, C0, VK, None, None, weight, cfg.V, what=f"LyapLock layer {layer}")
            else:
                weight = float(state[f"{layer}.a"] * state[f"{layer}.Z"]) * cfg.mom2_update_weight
                delta = lyaplock_delta(K, R, W, C0, VK, state[f"{layer}.S_KK"], state[f"{layer}.S_VK"], weight,
                                       cfg.V, what=f"LyapLock layer {layer}")
            W_after = W + delta
            D = preservation_loss(W_after, C0, VK, VV)
            budget = advance_queue(state, new, f"{layer}.", D, alpha=cfg.alpha, b=cfg.b, first=first)
            KK = K.double() @ K.double().T
            new[f"{layer}.S_KK"] = KK if first else state[f"{layer}.S_KK"] + KK
            new[f"{layer}.S_VK"] = W_after @ KK if first else state[f"{layer}.S_VK"] + W_after @ KK
            info["D"][layer], info["budget"][layer] = D, budget
            info["Z"][layer], info["weight"][layer] = float(new[f"{layer}.Z"]), weight
            return delta

        deltas = spread_over_layers(ctx.model, ctx.tokenizer, ctx.adapter, requests, templates, values.z,
                                    cfg.layers, solve)
        new["t"] = state["t"] + 1
        return deltas, new, {**values.meta(), "lyaplock": info}


def stats_weight(ctx, layer: int) -> torch.Tensor:
    """The UNEDITED rewrite weight W0 at ``layer`` (V0 = W0 K0 is tied to the statistics, §6.5)."""
    return ctx.base_weight(ctx.adapter.weight_name(layer))


def unedited_moments(ctx, stats, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E[kkᵀ], E[vkᵀ], E[vvᵀ]) of the unedited model at ``layer``, the three moments of D(t) (§6.2).

    ``stats`` is the method's :class:`~kedit.stats.cache.StatsCache`; v = W0 k with W0 from
    :func:`stats_weight`, so the moments stay tied to the weights the statistics were taken on.
    """
    C0 = stats.C0(layer)
    W0 = ctx.adapter.to_out_in(stats_weight(ctx, layer)).double()
    return (C0, *value_moments(C0, W0))


register_method("lyaplock", LyapLockConfig, LyapLock,
                summary="Sequential editing with a Lyapunov virtual queue on the preservation loss (2025).",
                tags=LyapLock.tags)
