"""What the long-form presets share (UnKE, AnyEdit, μKE, NaKE): shift options, the UnKE writer's
options and preservation set, and the pipeline request → shifts → writer.

A long-form edit is a question (chat-templated where the model has a template) followed by the
answer tokens.  A *target* stage turns each request into residual targets at lookup positions
(UnKE: one key target k* at the last question token; AnyEdit/μKE: one per answer window); a
*writer* stage makes the weights produce them (the UnKE layer fit, or MEMIT's closed form with
intra-sequence preservation keys).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import torch

from kedit.config import Config, field
from kedit.methods.base import EditContext, EditMethod, StatsConfig
from kedit.methods.defaults import default_unke_layer
from kedit.stages.chat import QAEncoding, encode_request
from kedit.stages.layer_fit import FitOptions, layer_fit_deltas
from kedit.stages.shifts import ShiftOptions
from kedit.stats.corpus import default_corpus, read_corpus

__all__ = ["ShiftConfig", "LayerFitConfig", "LongFormMethod", "UnkeWriterMixin", "CHAT_CHOICES", "corpus_passages"]

CHAT_CHOICES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class ShiftConfig(Config):
    """Residual-shift optimisation (UnKE step 1, AnyEdit/μKE windows).

    Args:
        steps: Adam iterations per shift (v_num_grad_steps).
        lr: Adam learning rate (v_lr).
        clamp_norm_factor: ‖δ‖ ≤ factor·‖h‖ after each step.
        weight_decay: weight of ‖δ‖/‖h‖² (v_weight_decay).
        early_stop_loss: stop a shift once its loss is below this (0 = never, original UnKE).
    """

    steps: int = field(25, "Adam iterations per shift (v_num_grad_steps).")
    lr: float = field(0.5, "Adam learning rate (v_lr).")
    clamp_norm_factor: float = field(4.0, "Project δ onto ‖δ‖ ≤ factor·‖h‖ after each step.")
    weight_decay: float = field(1e-3, "Weight of ‖δ‖/‖h‖² (v_weight_decay).")
    early_stop_loss: float = field(0.0, "Stop once the loss is below this (0 = run all steps).")

    def __post_init__(self) -> None:
        self._check("steps", self.steps >= 1, "an int >= 1")
        self._check("lr", self.lr > 0, "a float > 0")
        self._check("clamp_norm_factor", self.clamp_norm_factor > 0, "a float > 0")
        self._check("weight_decay", self.weight_decay >= 0, "a float >= 0")
        self._check("early_stop_loss", self.early_stop_loss >= 0, "a float >= 0")

    def options(self) -> ShiftOptions:
        return ShiftOptions(self.steps, self.lr, self.clamp_norm_factor, self.weight_decay, self.early_stop_loss)


@dataclasses.dataclass(frozen=True)
class LayerFitConfig(Config):
    """The UnKE writer: whole decoder blocks trained on edit + preservation MSE (§7 step 2).

    Args:
        layers: decoder blocks trained (the key target sits after the last one).
        steps: optimisation steps per block (optim_num_step).
        lr: learning rate (AdamW 2e-4 in UnKE).
        weight_decay: AdamW weight decay (0 for norm weights).
        optimizer: "adamw" (UnKE) or "sgd" (NaKE Algorithm 1 as written).
        combine: "sum" (UnKE), "nash" (NaKE bargaining) or "fixed" (λ_p, λ_e weights).
        fixed_weights: [λ_p, λ_e] for combine="fixed".
        diagnostics: record gradient cosines and λ's every step (NaKE Figures 2–3).
        preservation_n: preservation samples per edit (ex_data_num; the reference samples Alpaca).
        preservation_tokens: length cap of each preservation sample.
        preservation_data: '' = passages of ``stats.corpus`` (WikiText by default); otherwise a
            dataset file whose other records (question + answer) are the preservation set.
    """

    layers: list[int] = field([1], "Decoder blocks trained; the key target sits after the last.")
    steps: int = field(50, "Optimisation steps per block (optim_num_step).")
    lr: float = field(2e-4, "Learning rate (AdamW 2e-4 in UnKE).")
    weight_decay: float = field(0.01, "AdamW weight decay (norm weights: 0).")
    optimizer: str = field("adamw", "'adamw' (UnKE) or 'sgd' (NaKE Algorithm 1 as written).")
    combine: str = field("sum", "'sum' (UnKE), 'nash' (NaKE bargaining) or 'fixed' ([λ_p, λ_e]).")
    fixed_weights: list[float] = field([1.0, 1.0], "[λ_p, λ_e] for combine='fixed'.")
    diagnostics: bool = field(False, "Record gradient cosines and λ's every step.")
    preservation_n: int = field(20, "Preservation samples per edit (ex_data_num).")
    preservation_tokens: int = field(128, "Length cap (tokens) of each preservation sample.")
    preservation_data: str = field("", "'' = passages of stats.corpus; else a dataset file of unrelated records.")

    def __post_init__(self) -> None:
        self._check("layers", bool(self.layers) and all(isinstance(x, int) and x >= 0 for x in self.layers)
                    and len(set(self.layers)) == len(self.layers), "a non-empty list of distinct layer indices >= 0")
        self._check("steps", self.steps >= 1, "an int >= 1")
        self._check("lr", self.lr > 0, "a float > 0")
        self._check("weight_decay", self.weight_decay >= 0, "a float >= 0")
        self._check("optimizer", self.optimizer in ("adamw", "sgd"), "'adamw' or 'sgd'")
        self._check("combine", self.combine in ("sum", "nash", "fixed"), "'sum', 'nash' or 'fixed'")
        self._check("fixed_weights", len(self.fixed_weights) == 2 and all(w >= 0 for w in self.fixed_weights),
                    "two weights [λ_p, λ_e] >= 0")
        self._check("preservation_n", self.preservation_n >= 1, "an int >= 1")
        self._check("preservation_tokens", self.preservation_tokens >= 2, "an int >= 2")

    @classmethod
    def for_model(cls, n_layers: int | None, **changes) -> "LayerFitConfig":
        return cls(layers=[default_unke_layer(n_layers)], **changes)

    def options(self) -> FitOptions:
        return FitOptions(self.steps, self.lr, self.weight_decay, self.optimizer, self.combine,
                          tuple(self.fixed_weights), self.diagnostics)


class LongFormMethod(EditMethod):
    """Pipeline: encode → :meth:`targets` per request → :meth:`write` for the whole batch."""

    tags = frozenset({"deterministic", "gradient_based"})

    def encode(self, ctx: EditContext, request) -> QAEncoding:
        chat = {"on": True, "off": False}.get(self.config.chat, "auto")
        return encode_request(ctx.tokenizer, request, chat=chat)

    def targets(self, ctx: EditContext, request, enc: QAEncoding) -> tuple[list[int], torch.Tensor, dict]:
        """(lookup positions, targets (k, d) float64 after the target layer, info)."""
        raise NotImplementedError

    def edit_row(self, enc: QAEncoding, positions: Sequence[int]) -> list[int]:
        """The sequence the writer sees for this request (default: question + answer)."""
        return enc.ids

    def write(self, ctx: EditContext, requests, rows, positions, targets) -> tuple[dict, dict]:
        raise NotImplementedError

    def compute(self, ctx, requests, state):
        rows, positions, targets, infos = [], [], [], []
        for request in requests:
            enc = self.encode(ctx, request)
            pos, z, info = self.targets(ctx, request, enc)
            rows.append(self.edit_row(enc, pos))
            positions.append(pos)
            targets.append(z)
            infos.append(info)
        deltas, winfo = self.write(ctx, requests, rows, positions, targets)
        info = {"targets": infos, **winfo}
        return deltas, state, info


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def corpus_passages(tokenizer, corpus, *, size: int = 2000, min_tokens: int = 8) -> list[tuple[str, list[int]]]:
    """The first ``size`` paragraphs of ``corpus`` with at least ``min_tokens`` tokens, with their ids:
    the UnKE writer's default preservation pool (the reference samples Alpaca, which we do not have)."""
    pool = []
    for text in read_corpus(corpus):
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= min_tokens:
            pool.append((text, ids))
        if len(pool) >= size:
            break
    return pool


class UnkeWriterMixin:
    """The UnKE layer fit as a writer, with its preservation set."""

    def preservation_rows(self, ctx: EditContext, requests) -> list[list[int]]:
        """``preservation_n`` samples drawn per batch, seeded by the config seed and the requests
        (the reference re-samples 20 Alpaca examples per edit; we have no Alpaca — see config)."""
        cfg = self.config.fit
        pool = self._pool(ctx, cfg)
        edited = {r.text for r in requests}
        pool = [p for p in pool if p[0] not in edited]
        rng = random.Random(f"{self.config.seed}:" + "|".join(r.text for r in requests))
        picks = rng.sample(pool, min(cfg.preservation_n, len(pool)))
        return [ids[: cfg.preservation_tokens] for _, ids in picks]

    def _pool(self, ctx: EditContext, cfg: LayerFitConfig) -> list[tuple[str, list[int]]]:
        key = ("preservation", cfg.preservation_data, self.config.stats.corpus, cfg.preservation_tokens)
        cached = ctx._templates.get(key)
        if cached is not None:
            return cached
        tok = ctx.tokenizer
        if cfg.preservation_data:
            from kedit.data.loaders import load_requests

            pool = []
            for r in load_requests("auto", cfg.preservation_data):
                pool.append((r.text, encode_request(tok, r).ids))
        else:
            corpus = self.config.stats.corpus or default_corpus()
            pool = corpus_passages(tok, corpus)
        if not pool:
            from kedit.errors import DataError

            raise DataError(f"no preservation samples found in {cfg.preservation_data or corpus!s}")
        ctx._templates[key] = pool
        return pool

    def write(self, ctx, requests, rows, positions, targets):
        cfg = self.config.fit
        keep = self.preservation_rows(ctx, requests)
        deltas, info = layer_fit_deltas(ctx.model, ctx.adapter, cfg.layers, rows, positions, targets, keep,
                                        _pad_id(ctx.tokenizer), cfg.options())
        return deltas, info


def stats_field():
    return field(StatsConfig(), "Text corpus settings (key statistics; also the default preservation passages).")
