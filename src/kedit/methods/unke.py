"""UnKE preset (Deng et al., ICLR 2025; methods.md §7): a key target at the last question token,
written by fitting one whole decoder block.

Step 1 ("causally driven" key target): δ added to block L's output at the last question token,
trained on the mean NLL of all answer tokens (no KL, 25 Adam steps at lr 0.5, no early stop);
k* = h + δ.  Step 2: block L is trained with AdamW so the question maps to k* at that position
while preservation samples keep their block outputs.
"""
from __future__ import annotations

import dataclasses

from kedit.config import Config, field
from kedit.methods.long_form import CHAT_CHOICES, LayerFitConfig, LongFormMethod, ShiftConfig, UnkeWriterMixin, stats_field
from kedit.methods.base import StatsConfig
from kedit.methods.registry import register_method
from kedit.stages.shifts import ShiftedSequence, optimise_shift
from kedit.stages.windows import window_weights

__all__ = ["UnkeConfig", "Unke"]


@dataclasses.dataclass(frozen=True)
class UnkeConfig(Config):
    """UnKE.

    Args:
        target: key-target (shift) optimisation.
        fit: the layer fit (blocks, steps, lr, preservation set, combine rule).
        stats: text corpus settings (preservation passages come from ``stats.corpus``).
        chat: 'auto' (chat template for questions when the tokenizer has one), 'on' or 'off'.
        seed: seed of the preservation sampling.
    """

    target: ShiftConfig = field(ShiftConfig(), "Key-target (shift) optimisation.")
    fit: LayerFitConfig = field(LayerFitConfig(), "The layer fit (UnKE writer).")
    stats: StatsConfig = stats_field()
    chat: str = field("auto", "'auto', 'on' or 'off': chat template around questions.")
    seed: int = field(0, "Seed of the preservation sampling.")

    def __post_init__(self) -> None:
        self._check("chat", self.chat in CHAT_CHOICES, f"one of {CHAT_CHOICES}")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None):
        return cls(fit=LayerFitConfig.for_model(n_layers))


class Unke(UnkeWriterMixin, LongFormMethod):
    def targets(self, ctx, request, enc):
        layer = max(self.config.fit.layers)
        seq = ShiftedSequence(ctx.model, ctx.adapter, layer, enc.ids)
        position = enc.n_prompt - 1
        weights = window_weights(len(enc.ids), enc.n_prompt, (0, enc.n_answer)).to(seq.ids.device)
        result = optimise_shift(seq, position, weights, self.config.target.options(), what=f"UnKE key target {request.id}")
        return [position], result.target[None], {"shift_loss": result.loss, "shift_steps": result.steps}

    def edit_row(self, enc, positions):
        """UnKE's edit set is the question alone (its last token carries k*)."""
        return enc.ids[: enc.n_prompt]


register_method("unke", UnkeConfig, Unke, summary="Key target at the last question token written by fitting a "
                "whole decoder block (Deng et al. 2025).", tags=Unke.tags)
