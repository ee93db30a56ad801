"""AlphaEdit preset: MEMIT keys/values with a null-space-projected writer (§4)."""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import field
from kedit.methods.base import EditContext, MultiLayerConfig
from kedit.methods.memit import Memit
from kedit.methods.registry import register_method
from kedit.stages.keys import compute_keys
from kedit.stages.spread import spread_over_layers
from kedit.stages.writers import alphaedit_delta, null_space_projector

__all__ = ["AlphaEditConfig", "AlphaEdit"]


@dataclasses.dataclass(frozen=True)
class AlphaEditConfig(MultiLayerConfig):
    """AlphaEdit (Fang et al., 2025).

    Args:
        layers: edited layers.
        nullspace_threshold: eigenvalues of E[kkᵀ] below this span the preserved null space.
        relative_threshold: threshold relative to the largest eigenvalue instead of absolute.
        l2: α, the ridge term of the projected system.
        target / stats / seed: as MEMIT.
    """

    nullspace_threshold: float = field(2e-2, "Eigenvalues of E[kkᵀ] below this span the null space (absolute).")
    relative_threshold: bool = field(False, "Interpret nullspace_threshold relative to the largest eigenvalue.")
    l2: float = field(10.0, "α: ridge term of the projected system (L2 in the AlphaEdit code).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("nullspace_threshold", self.nullspace_threshold > 0, "a float > 0")
        self._check("l2", self.l2 > 0, "a float > 0")


class AlphaEdit(Memit):
    """Projection P per layer from the unedited statistics; past keys accumulate in the state."""

    tags = frozenset({"deterministic", "needs_stats", "batched", "closed_form", "stateful"})

    def __init__(self, config):
        super().__init__(config)
        self._P: dict[tuple[str, int], torch.Tensor] = {}

    def projector(self, ctx: EditContext, layer: int) -> torch.Tensor:
        key = (ctx.fingerprint, layer)
        if key not in self._P:
            C0 = ctx.stats(self.config.stats).C0(layer)
            self._P[key] = null_space_projector(C0, self.config.nullspace_threshold,
                                                relative=self.config.relative_threshold)
        return self._P[key]

    def prepare(self, ctx: EditContext) -> None:
        super().prepare(ctx)
        for layer in self.config.layers:
            self.projector(ctx, layer)

    def initial_state(self, ctx: EditContext) -> dict[str, torch.Tensor]:
        return {}

    def preservation_weight(self, layer: int, state) -> float:
        """α (``l2``), the fixed regularisation weight of the projected system, so schedulers can scale it.

        AlphaEdit has no λ: preservation is enforced by P, and α I is the only fixed weight that
        holds the update back.  LyapLock's compatibility mode (``lyaplock+alphaedit``) scales it as
        α → a·Z(t)·α.  This is a derived contract: spec/methods.md §6.4 gives the rule "host λ →
        a·Z(t)·λ" for MEMIT/PRUNE/RECT hosts and the reference has no code for the compatibility
        experiments.
        """
        return self.config.l2

    def compute(self, ctx, requests, state):
        cfg = self.config
        ctx.stats(cfg.stats).ensure(cfg.layers)
        templates, values = self.values(ctx, requests)
        new_state = dict(state)

        def solve(layer, K, R):
            return alphaedit_delta(K, R, self.projector(ctx, layer), state.get(f"past_kk.{layer}"),
                                   self.preservation_weight(layer, state), what=f"AlphaEdit layer {layer}")

        def remember_post_edit_keys():
            keys = compute_keys(ctx.model, ctx.tokenizer, ctx.adapter, requests, cfg.layers, templates)
            for layer, K in keys.items():
                past = state.get(f"past_kk.{layer}")
                new_state[f"past_kk.{layer}"] = K @ K.T if past is None else past + K @ K.T

        deltas = spread_over_layers(ctx.model, ctx.tokenizer, ctx.adapter, requests, templates, values.z,
                                    cfg.layers, solve, after_all=remember_post_edit_keys)
        return deltas, new_state, values.meta()


register_method("alphaedit", AlphaEditConfig, AlphaEdit,
                summary="Null-space constrained MEMIT with a running past-edit cache (Fang et al. 2025).",
                tags=AlphaEdit.tags)
