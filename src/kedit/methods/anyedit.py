"""AnyEdit presets (Jiang et al. 2025; methods.md §8): autoregressive window-by-window shifts for
long answers, written by MEMIT's closed form (``anyedit``, MEMIT_ARE) or the UnKE layer fit
(``anyedit_unke``, AnyEdit*).

Window j's shift sits at the token before the window, sees the question and all earlier windows
(their shifts frozen in place) and is trained on the mean NLL of window j's tokens.
"""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import Config, field
from kedit.methods.base import EditContext, StatsConfig
from kedit.methods.defaults import default_memit_layers
from kedit.methods.long_form import CHAT_CHOICES, LayerFitConfig, LongFormMethod, ShiftConfig, UnkeWriterMixin, stats_field
from kedit.methods.registry import register_method
from kedit.stages.sequence_writer import memit_sequence_deltas
from kedit.stages.shifts import ShiftedSequence, optimise_shift
from kedit.stages.windows import lookup_positions, split_windows, window_weights

__all__ = ["AnyEditConfig", "AnyEditUnkeConfig", "AnyEdit", "AnyEditUnke", "MemitSequenceWriterMixin",
           "WindowedTargetsMixin"]


def _window_fields(window_size: int, early_stop: float):
    return (field(window_size, "Answer tokens per window (overlap 0)."),
            field(ShiftConfig(early_stop_loss=early_stop), "Per-window shift optimisation."))


@dataclasses.dataclass(frozen=True)
class AnyEditConfig(Config):
    """AnyEdit with the MEMIT writer (MEMIT_ARE).

    Args:
        window_size: answer tokens per window (Llama3 40, Qwen2.5 50).
        target: per-window shift optimisation (early stop 1e-2).
        layers: MLP output projections written; the shifts sit after the last.
        mom2_update_weight: λ of the preservation term λC0.
        stats: key statistics options.
        chat: 'auto', 'on' or 'off'.
        seed: unused by the closed form; kept for a uniform config.
    """

    window_size: int = _window_fields(40, 1e-2)[0]
    target: ShiftConfig = _window_fields(40, 1e-2)[1]
    layers: list[int] = field([1, 2], "MLP output projections written; the shifts sit after the last.")
    mom2_update_weight: float = field(15000.0, "λ: weight of the preservation term λC0.")
    stats: StatsConfig = field(StatsConfig(), "Key statistics options.")
    chat: str = field("auto", "'auto', 'on' or 'off': chat template around questions.")
    seed: int = field(0, "Seed (kept for a uniform config).")

    def __post_init__(self) -> None:
        self._check("window_size", self.window_size >= 1, "an int >= 1")
        self._check("layers", bool(self.layers) and len(set(self.layers)) == len(self.layers)
                    and all(x >= 0 for x in self.layers), "a non-empty list of distinct layer indices >= 0")
        self._check("mom2_update_weight", self.mom2_update_weight > 0, "a float > 0")
        self._check("chat", self.chat in CHAT_CHOICES, f"one of {CHAT_CHOICES}")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None):
        return cls(layers=default_memit_layers(n_layers))

    @property
    def target_layer(self) -> int:
        return max(self.layers)


@dataclasses.dataclass(frozen=True)
class AnyEditUnkeConfig(Config):
    """AnyEdit with the UnKE writer (AnyEdit*, UnKE_ARE).

    Args:
        window_size: answer tokens per window.
        target: per-window shift optimisation (early stop 5e-3).
        fit: the layer fit (UnKE writer).
        stats: text corpus settings (preservation passages).
        chat: 'auto', 'on' or 'off'.
        seed: seed of the preservation sampling.
    """

    window_size: int = _window_fields(40, 5e-3)[0]
    target: ShiftConfig = _window_fields(40, 5e-3)[1]
    fit: LayerFitConfig = field(LayerFitConfig(), "The layer fit (UnKE writer).")
    stats: StatsConfig = stats_field()
    chat: str = field("auto", "'auto', 'on' or 'off': chat template around questions.")
    seed: int = field(0, "Seed of the preservation sampling.")

    def __post_init__(self) -> None:
        self._check("window_size", self.window_size >= 1, "an int >= 1")
        self._check("chat", self.chat in CHAT_CHOICES, f"one of {CHAT_CHOICES}")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None):
        return cls(fit=LayerFitConfig.for_model(n_layers))

    @property
    def target_layer(self) -> int:
        return max(self.fit.layers)


class WindowedTargetsMixin:
    """AnyEdit's window-by-window shifts (§8)."""

    def targets(self, ctx, request, enc):
        cfg = self.config
        seq = ShiftedSequence(ctx.model, ctx.adapter, cfg.target_layer, enc.ids)
        windows = split_windows(enc.n_answer, cfg.window_size)
        positions = lookup_positions(enc.n_prompt, windows)
        done, losses = [], []
        for j, (window, position) in enumerate(zip(windows, positions)):
            weights = window_weights(len(enc.ids), enc.n_prompt, window).to(seq.ids.device)
            result = optimise_shift(seq, position, weights, cfg.target.options(), frozen_shifts=done,
                                    upto=enc.n_prompt + window[1], what=f"AnyEdit window {j} of {request.id}")
            done.append((position, result.delta))
            losses.append(result.loss)
        z = torch.stack([seq.h(p) + d.double() for p, d in done])
        return positions, z, {"windows": len(windows), "shift_loss": losses}


class MemitSequenceWriterMixin:
    """MEMIT_ARE as a writer (intra-sequence preservation keys)."""

    def prepare(self, ctx: EditContext) -> None:
        ctx.stats(self.config.stats).ensure(self.config.layers)

    def write(self, ctx, requests, rows, positions, targets):
        cfg = self.config
        stats = ctx.stats(cfg.stats)
        stats.ensure(cfg.layers)
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        deltas = memit_sequence_deltas(ctx.model, ctx.adapter, cfg.layers, rows, positions, targets, stats.C0,
                                       cfg.mom2_update_weight, pad)
        return deltas, {}


class AnyEdit(WindowedTargetsMixin, MemitSequenceWriterMixin, LongFormMethod):
    tags = frozenset({"deterministic", "gradient_based", "needs_stats"})


class AnyEditUnke(WindowedTargetsMixin, UnkeWriterMixin, LongFormMethod):
    pass


register_method("anyedit", AnyEditConfig, AnyEdit, summary="Window-by-window shifts for long answers, MEMIT writer "
                "(Jiang et al. 2025).", tags=AnyEdit.tags)
register_method("anyedit_unke", AnyEditUnkeConfig, AnyEditUnke, summary="AnyEdit* : window-by-window shifts, UnKE "
                "layer-fit writer.", tags=AnyEditUnke.tags)
