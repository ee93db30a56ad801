"""NaKE preset (methods.md §10): UnKE's key target and layer, with the update direction of every
step chosen by Nash bargaining between the preservation and edit gradients (Algorithm 1,
eq. 7: GᵀG Λ = 1/Λ, step along G Λ).

T and η are not given in the paper's text: UnKE's 50 steps and AdamW at 2e-4 are the defaults
[unverified]; ``fit.optimizer="sgd"`` applies G Λ as Algorithm 1 writes it.  The bargaining
writer is also available to AnyEdit* and μKE* via ``fit.combine="nash"``.
"""
from __future__ import annotations

import dataclasses

from kedit.config import field
from kedit.methods.long_form import LayerFitConfig
from kedit.methods.registry import register_method
from kedit.methods.unke import Unke, UnkeConfig

__all__ = ["NakeConfig", "Nake"]


@dataclasses.dataclass(frozen=True)
class NakeConfig(UnkeConfig):
    """NaKE = UnKE target + bargaining writer (``fit.combine='nash'``, diagnostics on).

    Args:
        target, stats, chat, seed: as UnKE.
        fit: the layer fit with ``combine='nash'``.
    """

    fit: LayerFitConfig = field(LayerFitConfig(combine="nash", diagnostics=True), "The bargaining layer fit.")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None):
        return cls(fit=LayerFitConfig.for_model(n_layers, combine="nash", diagnostics=True))


class Nake(Unke):
    pass


register_method("nake", NakeConfig, Nake, summary="UnKE with Nash-bargaining update directions between edit and "
                "preservation gradients.", tags=Nake.tags)
