"""RECT preset: MEMIT whose per-layer updates keep only the largest relative changes (§5)."""
from __future__ import annotations

import dataclasses

from kedit.config import field
from kedit.methods.memit import Memit, MemitConfig
from kedit.methods.registry import register_method
from kedit.stages.regularisers import rect_sparsify

__all__ = ["RectConfig", "Rect"]


@dataclasses.dataclass(frozen=True)
class RectConfig(MemitConfig):
    """RECT (Gu et al., 2024) on MEMIT.

    Args:
        keep_fraction: fraction of update entries kept (the reference's ``k_percent = 40``).
        (other fields as MemitConfig)
    """

    keep_fraction: float = field(0.4, "Fraction of update entries with the largest relative change that are kept.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("keep_fraction", 0 < self.keep_fraction <= 1, "a float in (0, 1]")


class Rect(Memit):
    """MEMIT deltas are computed as usual (layers see each other's dense updates), then each one is
    rectified against the current weight before it is written, as the reference does."""

    def compute(self, ctx, requests, state):
        deltas, state, info = super().compute(ctx, requests, state)
        params = dict(ctx.model.named_parameters())
        kept = {name: rect_sparsify(d, params[name].detach(), self.config.keep_fraction) for name, d in deltas.items()}
        return kept, state, info


register_method("rect", RectConfig, Rect, summary="MEMIT with relative-change sparsified updates (RECT, Gu et al. 2024).",
                tags=Rect.tags)
