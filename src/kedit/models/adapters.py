"""Where each architecture keeps its layers, MLP projections, norms and LM head (STYLE.md P5).

One table keyed by ``config.model_type``.  Module paths are templates with ``{layer}``; the weight
layout of the MLP output projection is declared (``out_in`` for ``nn.Linear``, ``in_out`` for GPT-2's
``Conv1D``), never guessed from shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from kedit.errors import UnsupportedModelError, closest

__all__ = ["Adapter", "ADAPTERS", "get_adapter", "resolve_module"]

Layout = Literal["out_in", "in_out"]


@dataclasses.dataclass(frozen=True)
class Adapter:
    """Module-path templates for one architecture family.

    Args:
        model_type: the ``config.model_type`` this entry serves.
        layers: dotted path of the decoder-layer list.
        mlp: path template of the MLP block of layer ``{layer}``.
        mlp_in: path template of the first MLP projection (key side; ``up_proj`` for gated MLPs).
        mlp_gate: path template of the gate projection, or None for ungated MLPs.
        mlp_out: path template of the MLP output projection (the rewrite module).
        layout: orientation of ``mlp_out.weight``: ``out_in`` (Linear) or ``in_out`` (Conv1D).
        final_norm: path of the final norm before the LM head.
        lm_head: path of the LM head.
        embed: path of the token embedding.
        residual_inputs_embeds: True when ``inputs_embeds`` enter the first layer unchanged (no
            learned absolute position embedding is added), so a truncated forward can start at
            any layer by passing hidden states as ``inputs_embeds``.
    """

    model_type: str
    layers: str
    mlp: str
    mlp_in: str
    mlp_gate: str | None
    mlp_out: str
    layout: Layout
    final_norm: str
    lm_head: str
    embed: str
    residual_inputs_embeds: bool

    def layer(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_name(self, i: int) -> str:
        return self.mlp_out.format(layer=i)

    def mlp_in_name(self, i: int) -> str:
        return self.mlp_in.format(layer=i)

    def mlp_name(self, i: int) -> str:
        return self.mlp.format(layer=i)

    def weight_name(self, i: int) -> str:
        """Parameter name of the rewrite weight at layer ``i``."""
        return f"{self.mlp_out_name(i)}.weight"

    def to_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """View a stored rewrite weight in the papers' (d_v, d_k) orientation."""
        return weight if self.layout == "out_in" else weight.T

    def from_out_in(self, matrix: torch.Tensor) -> torch.Tensor:
        """Turn a (d_v, d_k) matrix back into the stored orientation."""
        return matrix if self.layout == "out_in" else matrix.T


def _llama_like(model_type: str) -> Adapter:
    return Adapter(
        model_type=model_type,
        layers="model.layers",
        mlp="model.layers.{layer}.mlp",
        mlp_in="model.layers.{layer}.mlp.up_proj",
        mlp_gate="model.layers.{layer}.mlp.gate_proj",
        mlp_out="model.layers.{layer}.mlp.down_proj",
        layout="out_in",
        final_norm="model.norm",
        lm_head="lm_head",
        embed="model.embed_tokens",
        residual_inputs_embeds=True,
    )


ADAPTERS: dict[str, Adapter] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "gpt2": Adapter(
        model_type="gpt2",
        layers="transformer.h",
        mlp="transformer.h.{layer}.mlp",
        mlp_in="transformer.h.{layer}.mlp.c_fc",
        mlp_gate=None,
        mlp_out="transformer.h.{layer}.mlp.c_proj",
        layout="in_out",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        embed="transformer.wte",
        residual_inputs_embeds=False,
    ),
    "gptj": Adapter(
        model_type="gptj",
        layers="transformer.h",
        mlp="transformer.h.{layer}.mlp",
        mlp_in="transformer.h.{layer}.mlp.fc_in",
        mlp_gate=None,
        mlp_out="transformer.h.{layer}.mlp.fc_out",
        layout="out_in",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        embed="transformer.wte",
        residual_inputs_embeds=True,
    ),
    "gpt_neox": Adapter(
        model_type="gpt_neox",
        layers="gpt_neox.layers",
        mlp="gpt_neox.layers.{layer}.mlp",
        mlp_in="gpt_neox.layers.{layer}.mlp.dense_h_to_4h",
        mlp_gate=None,
        mlp_out="gpt_neox.layers.{layer}.mlp.dense_4h_to_h",
        layout="out_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",
        embed="gpt_neox.embed_in",
        residual_inputs_embeds=True,
    ),
}


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model.config.model_type``; UnsupportedModelError when unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"No kedit adapter for model_type={model_type!r}. Known types: {', '.join(sorted(ADAPTERS))}. "
            "Register one with kedit.models.adapters.ADAPTERS[model_type] = Adapter(...)."
        )
    return ADAPTERS[model_type]


def resolve_module(model: nn.Module, name: str, adapter: Adapter | None = None) -> nn.Module:
    """Resolve a dotted module name; the error lists the closest names (STYLE.md H3)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules()]
        near = closest(name, names)
        who = f" (produced by the {adapter.model_type!r} adapter)" if adapter else ""
        raise UnsupportedModelError(
            f"Module {name!r} not found{who}. Closest names: {near or names[:5]}."
        ) from None


def num_layers(model: nn.Module, adapter: Adapter) -> int:
    return len(resolve_module(model, adapter.layers, adapter))
