"""MEMIT preset: fixed MLP output projections + value target + least-squares writer (§1, §3)."""
from __future__ import annotations

import dataclasses

from kedit.config import field
from kedit.methods.base import EditContext, EditMethod, MultiLayerConfig
from kedit.methods.registry import register_method
from kedit.stages.spread import spread_over_layers
from kedit.stages.writers import memit_delta

__all__ = ["MemitConfig", "Memit"]


@dataclasses.dataclass(frozen=True)
class MemitConfig(MultiLayerConfig):
    """MEMIT (Meng et al., 2023).

    Args:
        layers: edited layers (MLP output projections); the value target sits after the last.
        mom2_update_weight: λ, weight of the preservation term λ‖ΔK0‖².
        target: value optimisation options.
        stats: key statistics options.
        seed: seed of the context templates.
    """

    mom2_update_weight: float = field(15000.0, "λ: weight of the preservation term λ‖ΔK0‖².")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("mom2_update_weight", self.mom2_update_weight > 0, "a float > 0")


class Memit(EditMethod):
    tags = frozenset({"deterministic", "needs_stats", "batched", "closed_form"})

    def prepare(self, ctx: EditContext) -> None:
        ctx.stats(self.config.stats).ensure(self.config.layers)

    def preservation_weight(self, layer: int, state) -> float:
        """λ of the preservation term; schedulers (LyapLock) scale it from their state."""
        return self.config.mom2_update_weight

    def values(self, ctx: EditContext, requests):
        cfg = self.config
        templates = ctx.templates(cfg.target.context_templates, cfg.seed)
        result = ctx.values(requests, templates, cfg.target.options(), layer=max(cfg.layers), site="block")
        return templates, result

    def compute(self, ctx, requests, state):
        cfg = self.config
        stats = ctx.stats(cfg.stats)
        stats.ensure(cfg.layers)
        templates, values = self.values(ctx, requests)

        def solve(layer, K, R):
            lam = self.preservation_weight(layer, state)
            return memit_delta(K, R, stats.C0(layer), lam, what=f"MEMIT layer {layer}")

        deltas = spread_over_layers(ctx.model, ctx.tokenizer, ctx.adapter, requests, templates, values.z,
                                    cfg.layers, solve)
        return deltas, state, values.meta()


register_method("memit", MemitConfig, Memit, summary="Mass-editing closed form over several MLP layers (Meng et al. 2023).",
                tags=Memit.tags)
