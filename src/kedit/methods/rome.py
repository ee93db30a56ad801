"""ROME preset: one MLP layer, value target at the MLP output, rank-one writer (§2)."""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import Config, field
from kedit.methods.base import EditMethod, StatsConfig, ValueTargetConfig
from kedit.methods.defaults import default_rome_layer
from kedit.methods.registry import register_method
from kedit.models.adapters import resolve_module
from kedit.stages.keys import compute_keys
from kedit.stages.spread import restoring
from kedit.stages.writers import rome_delta

__all__ = ["RomeConfig", "Rome"]


@dataclasses.dataclass(frozen=True)
class RomeConfig(Config):
    """ROME (Meng et al., 2022).

    Args:
        layer: the edited MLP layer.
        mom2_adjustment: u = C0⁻¹ k* (True) or u = k* (False).
        rome_fix: use the context-averaged key in the denominator too (R-ROME, Gupta et al.);
            False reproduces the original code's bare-prompt key (can "disable" edits).
        target / stats / seed: as MEMIT; ROME's target sits at the MLP output of ``layer``.
    """

    layer: int = field(1, "The edited MLP layer.")
    mom2_adjustment: bool = field(True, "Use u = C0⁻¹k* (True) or u = k* (False).")
    rome_fix: bool = field(True, "R-ROME: context-averaged key in the denominator (False = original code).")
    target: ValueTargetConfig = field(ValueTargetConfig(), "Value optimisation options (site: MLP output).")
    stats: StatsConfig = field(StatsConfig(), "Key statistics options.")
    seed: int = field(0, "Seed of the sampled context templates.")

    def __post_init__(self) -> None:
        self._check("layer", isinstance(self.layer, int) and self.layer >= 0, "a layer index >= 0")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None) -> "RomeConfig":
        return cls(layer=default_rome_layer(n_layers))


class Rome(EditMethod):
    """Requests of a batch are written one after another (ROME is a single-fact editor)."""

    tags = frozenset({"deterministic", "needs_stats", "closed_form"})

    def prepare(self, ctx) -> None:
        if self.config.mom2_adjustment:
            ctx.stats(self.config.stats).ensure([self.config.layer])

    def compute(self, ctx, requests, state):
        cfg = self.config
        C0 = ctx.stats(cfg.stats).C0(cfg.layer) if cfg.mom2_adjustment else None
        templates = ctx.templates(cfg.target.context_templates, cfg.seed)
        name = ctx.adapter.weight_name(cfg.layer)
        weight = dict(ctx.model.named_parameters())[name]
        module = resolve_module(ctx.model, ctx.adapter.mlp_out_name(cfg.layer), ctx.adapter)
        bias = getattr(module, "bias", None)
        total = torch.zeros_like(weight)
        losses, steps = [], []
        with restoring(ctx.model, [name]):
            for request in requests:
                values = ctx.values([request], templates, cfg.target.options(), layer=cfg.layer, site="mlp")
                W = ctx.adapter.to_out_in(weight.detach()).double()
                k_star = compute_keys(ctx.model, ctx.tokenizer, ctx.adapter, [request], [cfg.layer], templates)[cfg.layer][:, 0]
                b = bias.detach().double() if bias is not None else 0.0
                if cfg.rome_fix:
                    k_cur = k_star
                else:
                    k_cur = compute_keys(ctx.model, ctx.tokenizer, ctx.adapter, [request], [cfg.layer], ["{}"])[cfg.layer][:, 0]
                o_cur = W @ k_cur + b
                delta = rome_delta(values.z[:, 0], W, k_star, C0, k_cur=k_cur, o_cur=o_cur)
                stored = ctx.adapter.from_out_in(delta).to(weight.dtype)
                with torch.no_grad():
                    weight.add_(stored)
                total += stored
                losses += values.loss
                steps += values.steps
        return {name: total}, state, {"value_loss": losses, "value_steps": steps}


register_method("rome", RomeConfig, Rome, summary="Rank-one model editing of one MLP layer (Meng et al. 2022).",
                tags=Rome.tags)
