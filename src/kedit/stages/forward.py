"""Forward passes that start at a given decoder layer (skip the unchanged prefix).

Value optimisation adds δ to the residual stream after layer L; layers 0..L do not depend on δ,
so their output is computed once and every optimisation step runs only layers L+1..N.  This
works for architectures whose ``inputs_embeds`` enter the first layer unchanged
(``Adapter.residual_inputs_embeds``); others (GPT-2 adds position embeddings) fall back to a
full forward with an editing hook.  Both paths give the same logits (tested).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from kedit.models.adapters import Adapter, resolve_module
from kedit.models.hooks import trace

__all__ = ["tail_layers", "hidden_after", "final_hidden_from", "final_hidden_with_edit"]


@contextlib.contextmanager
def tail_layers(model: nn.Module, adapter: Adapter, start: int) -> Iterator[None]:
    """Temporarily keep only decoder layers ``start..N-1`` in the layer list."""
    parent_name, attr = adapter.layers.rsplit(".", 1)
    parent = resolve_module(model, parent_name, adapter)
    full = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList(list(full)[start:]))
    try:
        yield
    finally:
        setattr(parent, attr, full)


def hidden_after(model, adapter: Adapter, layer: int, ids, mask) -> torch.Tensor:
    """Residual stream after decoder layer ``layer`` (block output), all positions."""
    name = adapter.layer(layer)
    with trace(model, [name], stop=True) as t:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    return t[name].output


def final_hidden_from(model, adapter: Adapter, layer: int, hidden: torch.Tensor, mask) -> torch.Tensor:
    """Final (normed) hidden states given the residual stream after ``layer``."""
    with tail_layers(model, adapter, layer + 1):
        out = model.base_model(inputs_embeds=hidden, attention_mask=mask, use_cache=False)
    return out.last_hidden_state


def final_hidden_with_edit(
    model, adapter: Adapter, module_name: str, ids, mask, edit: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Full forward with ``edit`` applied to ``module_name``'s output; final hidden states."""
    with trace(model, [module_name], retain_output=False, edit_output=lambda _n, h: edit(h)):
        out = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.last_hidden_state
