"""PRUNE preset: sequential MEMIT, then the accumulated update's large singular values are
restrained once after the last batch (§5)."""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import field
from kedit.methods.memit import Memit, MemitConfig
from kedit.methods.registry import register_method
from kedit.stages.regularisers import prune_restrain

__all__ = ["PruneConfig", "Prune"]


@dataclasses.dataclass(frozen=True)
class PruneConfig(MemitConfig):
    """PRUNE (Ma et al., 2024) on MEMIT.

    Args:
        prune_reference_quirk: reproduce the reference code, which writes W_now + ΔW′
            (= W0 + ΔW + ΔW′) instead of the paper's W0 + ΔW′.
        (other fields as MemitConfig)
    """

    prune_reference_quirk: bool = field(False, "Write W_now + ΔW′ as the reference code does (paper: W0 + ΔW′).")


class Prune(Memit):
    """``finalize`` runs once after the last batch of a sequential run (``Editor.finalize``)."""

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        for layer in self.config.layers:
            ctx.base_weight(ctx.adapter.weight_name(layer))

    def finalize(self, ctx) -> dict[str, torch.Tensor]:
        """Deltas that turn the current weights into W0 + ΔW′ (or W_now + ΔW′ with the quirk)."""
        params = dict(ctx.model.named_parameters())
        out = {}
        for layer in self.config.layers:
            name = ctx.adapter.weight_name(layer)
            W0 = ctx.adapter.to_out_in(ctx.base_weight(name)).double()
            W_now = ctx.adapter.to_out_in(params[name].detach()).double()
            restrained = prune_restrain(W_now - W0, W0)
            target = W_now + restrained if self.config.prune_reference_quirk else W0 + restrained
            out[name] = ctx.adapter.from_out_in(target - W_now).to(params[name].dtype)
        return out


register_method("prune", PruneConfig, Prune,
                summary="Sequential MEMIT with singular-value restraint of the total update (PRUNE, Ma et al. 2024).",
                tags=Prune.tags)
