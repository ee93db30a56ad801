"""μKE presets (methods.md §9): Matryoshka-style shifts with affinity-weighted coefficients, on the
MEMIT writer (``muke``) or the UnKE writer (``muke_unke``, μKE*); ``muke_vanilla`` is the
Matryoshka-vanilla ablation (λ ≡ 1).

Unlike AnyEdit, every window's shift δ_i is trained with the whole remaining answer as context:
L_Mat(δ_i) = 1/(n−i+1) Σ_{j≥i} λ_i^j NLL(F_i^j) (eq. 10), applied token-wise (eq. 11), and
λ_i^j = 2 − mean cos of the gradients of NLL(F_i^i) and NLL(F_i^j) (eq. 12, T_aff = 3).
"""
from __future__ import annotations

import dataclasses

import torch

from kedit.config import Config, field
from kedit.methods.anyedit import AnyEditConfig, AnyEditUnkeConfig, MemitSequenceWriterMixin
from kedit.methods.long_form import LongFormMethod, ShiftConfig, UnkeWriterMixin
from kedit.methods.registry import register_method
from kedit.stages.shifts import ShiftedSequence, optimise_shift, shift_gradients
from kedit.stages.windows import (affinity_coefficients, affinity_scores, figure_weights, lookup_positions,
                                  matryoshka_weights, split_windows)

__all__ = ["MatryoshkaConfig", "MukeConfig", "MukeUnkeConfig", "Muke", "MukeUnke", "MatryoshkaTargetsMixin"]

COEFFICIENTS = ("affinity", "vanilla")
ORDERS = ("reference", "paper")


@dataclasses.dataclass(frozen=True)
class MatryoshkaConfig(Config):
    """The Matryoshka objective's coefficients (eq. 10–12).

    Args:
        coefficients: 'affinity' (eq. 12) or 'vanilla' (λ ≡ 1, Matryoshka-vanilla).
        affinity_order: 'reference' (default, reproduces the reported numbers) or 'paper'.
        affinity_steps: T_aff, the Adam iterates at which gradient cosines are averaged.
    """

    coefficients: str = field("affinity", "'affinity' (eq. 12) or 'vanilla' (λ ≡ 1, Matryoshka-vanilla).")
    affinity_order: str = field("reference", "'reference' (code: reversed pairing) or 'paper' (eq. 12 as written).")
    affinity_steps: int = field(3, "T_aff: Adam iterates at which gradient cosines are averaged.")

    def __post_init__(self) -> None:
        self._check("coefficients", self.coefficients in COEFFICIENTS, f"one of {COEFFICIENTS}")
        self._check("affinity_order", self.affinity_order in ORDERS, f"one of {ORDERS}")
        self._check("affinity_steps", self.affinity_steps >= 1, "an int >= 1")


@dataclasses.dataclass(frozen=True)
class MukeConfig(AnyEditConfig):
    """μKE with the MEMIT writer (memit_Mat).

    Args:
        window_size: answer tokens per window (Llama3 30, Qwen2.5 20).
        target: per-window shift optimisation (early stop 1e-2).
        layers, mom2_update_weight, stats, chat, seed: as AnyEdit.
        matryoshka: the objective's coefficients.
    """

    window_size: int = field(30, "Answer tokens per window (overlap 0).")
    target: ShiftConfig = field(ShiftConfig(early_stop_loss=1e-2), "Per-window shift optimisation.")
    matryoshka: MatryoshkaConfig = field(MatryoshkaConfig(), "Matryoshka coefficients (eq. 10–12).")


@dataclasses.dataclass(frozen=True)
class MukeVanillaConfig(MukeConfig):
    matryoshka: MatryoshkaConfig = field(MatryoshkaConfig(coefficients="vanilla"), "Matryoshka coefficients (λ ≡ 1).")


@dataclasses.dataclass(frozen=True)
class MukeUnkeConfig(AnyEditUnkeConfig):
    """μKE* (unke_Mat): Matryoshka shifts, UnKE writer.

    Args:
        window_size: answer tokens per window.
        target: per-window shift optimisation (early stop 5e-3).
        fit, stats, chat, seed: as AnyEdit*.
        matryoshka: as μKE.
    """

    window_size: int = field(30, "Answer tokens per window (overlap 0).")
    target: ShiftConfig = field(ShiftConfig(early_stop_loss=5e-3), "Per-window shift optimisation.")
    matryoshka: MatryoshkaConfig = field(MatryoshkaConfig(), "Matryoshka coefficients (eq. 10–12).")


class MatryoshkaTargetsMixin:
    """Shifts trained on the Matryoshka objective (§9)."""

    def coefficients(self, seq, enc, windows, positions, i) -> list[float] | None:
        cfg = self.config
        mat = cfg.matryoshka
        if mat.coefficients == "vanilla" or i == len(windows) - 1:
            return None
        wd = cfg.target.weight_decay
        n = len(enc.ids)

        def gradients(delta, js):
            weights = [figure_weights(n, enc.n_prompt, windows, i, j).to(seq.ids.device) for j in js]
            return shift_gradients(seq, positions[i], delta, weights, weight_decay=wd)

        scores = affinity_scores(gradients, windows, i, steps=mat.affinity_steps, lr=cfg.target.lr,
                                 d=seq.hidden.shape[-1], dtype=seq.hidden.dtype)
        return affinity_coefficients(scores, mat.affinity_order)

    def targets(self, ctx, request, enc):
        cfg = self.config
        seq = ShiftedSequence(ctx.model, ctx.adapter, cfg.target_layer, enc.ids)
        windows = split_windows(enc.n_answer, cfg.window_size)
        positions = lookup_positions(enc.n_prompt, windows)
        lambdas = [self.coefficients(seq, enc, windows, positions, i) for i in range(len(windows))]
        done, losses = [], []
        for i, position in enumerate(positions):
            weights = matryoshka_weights(len(enc.ids), enc.n_prompt, windows, i, lambdas[i]).to(seq.ids.device)
            result = optimise_shift(seq, position, weights, cfg.target.options(), frozen_shifts=done,
                                    what=f"μKE window {i} of {request.id}")
            done.append((position, result.delta))
            losses.append(result.loss)
        z = torch.stack([seq.h(p) + d.double() for p, d in done])
        return positions, z, {"windows": len(windows), "shift_loss": losses, "coefficients": lambdas}


class Muke(MatryoshkaTargetsMixin, MemitSequenceWriterMixin, LongFormMethod):
    tags = frozenset({"deterministic", "gradient_based", "needs_stats"})


class MukeUnke(MatryoshkaTargetsMixin, UnkeWriterMixin, LongFormMethod):
    pass


register_method("muke", MukeConfig, Muke, summary="Matryoshka shifts with affinity coefficients, MEMIT writer "
                "(μKE).", tags=Muke.tags)
register_method("muke_unke", MukeUnkeConfig, MukeUnke, summary="μKE* : Matryoshka shifts, UnKE layer-fit writer.",
                tags=MukeUnke.tags)
register_method("muke_vanilla", MukeVanillaConfig, Muke, summary="Matryoshka-vanilla ablation of μKE (λ ≡ 1), "
                "MEMIT writer.", tags=Muke.tags)
