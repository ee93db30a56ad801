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
import torch.nn.functional as F
from torch import nn

from kedit.models.adapters import Adapter, resolve_module
from kedit.models.hooks import trace
from kedit.stages.tokens import length_buckets

__all__ = ["tail_layers", "hidden_after", "final_hidden_from", "final_hidden_with_edit", "SuffixRunner"]


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


class SuffixRunner:
    """Runs only each row's suffix (from its edit position on) through the layers after ``layer``.

    Positions before a row's edit position never depend on δ, so their keys/values are computed
    once (a left-padded prefix pass with the model's own mask and position handling) and reused
    as a KV cache at every optimisation step; each step then processes ~4 suffix tokens per row
    instead of the whole prompt.  Equal to the full forward up to float rounding (tested).

    Args:
        ids, mask: right-padded rows (R, T); hidden: residual after ``layer`` (R, T, d);
        position: (R,) edit position of each row (the first suffix token).
    """

    def __init__(self, model, adapter: Adapter, layer: int, ids, mask, hidden, position,
                 bucket_overhead: int | None = 8):
        from transformers import DynamicCache

        self.model, self.adapter, self.layer = model, adapter, layer
        self._cache_cls = DynamicCache
        R, T = ids.shape
        lengths = mask.sum(1)
        self.position = position
        self.suffix_length = (lengths - position).tolist()
        self.bucket_overhead = bucket_overhead
        self.P = int(position.max())
        self.S = max(self.suffix_length)
        dev = ids.device
        # prefix: tokens [0, p) of each row, left-padded to P
        pre_ids = torch.zeros((R, max(self.P, 1)), dtype=ids.dtype, device=dev)
        pre_mask = torch.zeros((R, max(self.P, 1)), dtype=mask.dtype, device=dev)
        # suffix: tokens [p, len) right-padded to S, with their residual after `layer`
        self.hidden = torch.zeros((R, self.S, hidden.shape[-1]), dtype=hidden.dtype, device=dev)
        suf_mask = torch.zeros((R, self.S), dtype=mask.dtype, device=dev)
        for r in range(R):
            p, n = int(position[r]), int(lengths[r])
            if p:
                pre_ids[r, self.P - p:] = ids[r, :p]
                pre_mask[r, self.P - p:] = 1
            self.hidden[r, : n - p] = hidden[r, p:n]
            suf_mask[r, : n - p] = 1
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.prefix_mask = pre_mask
        self.suffix_mask = suf_mask
        if self.P:
            pos_ids = (pre_mask.cumsum(1) - 1).clamp(min=0)
            with torch.no_grad():
                out = model.base_model(input_ids=pre_ids, attention_mask=pre_mask, position_ids=pos_ids,
                                       use_cache=True)
            self.kv = [(lay.keys, lay.values) for lay in out.past_key_values.layers]
        self.suffix_positions = position[:, None] + torch.arange(self.S, device=dev)[None, :]

    def final_hidden(self, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states (len(rows), S, d) with ``delta`` (len(rows), d) added at each
        row's edit position (suffix index 0).

        Rows run in groups of similar suffix length (``length_buckets``; ``bucket_overhead`` None:
        one group), each group padded only to its own longest suffix and attending only to its own
        longest prefix: padded positions are 37 % of a CounterFact batch's suffix tokens, and every
        one of them would run through every later layer, forward and backward, at every step."""
        lengths = [self.suffix_length[r] for r in rows.tolist()]
        if self.bucket_overhead is None:
            groups = [list(range(len(lengths)))]
        else:
            groups = length_buckets(lengths, overhead=self.bucket_overhead)
        pieces, order = [], []
        for group in groups:
            local = torch.tensor(group, dtype=torch.long, device=rows.device)
            width = max(lengths[i] for i in group)
            out = self._run(rows[local], delta[local], width)
            pieces.append(F.pad(out, (0, 0, 0, self.S - width)))
            order.append(local)
        return torch.cat(pieces)[torch.argsort(torch.cat(order))]

    def _run(self, rows: torch.Tensor, delta: torch.Tensor, width: int) -> torch.Tensor:
        """The suffixes of ``rows`` (first ``width`` positions) after the last ``p`` prefix positions
        of the left-padded cache, p = the group's longest prefix."""
        h = self.hidden[rows, :width].clone()
        h[:, 0] = h[:, 0] + delta
        p = int(self.position[rows].max())
        mask = self.suffix_mask[rows, :width]
        kwargs = {}
        if p:
            start = self.P - p
            kwargs["past_key_values"] = self._cache_cls(
                ddp_cache_data=[(k[rows, :, start:], v[rows, :, start:]) for k, v in self.kv])
            kwargs["cache_position"] = torch.arange(p, p + width, device=h.device)
            mask = torch.cat([self.prefix_mask[rows, start:], mask], 1)
        with tail_layers(self.model, self.adapter, self.layer + 1):
            out = self.model.base_model(inputs_embeds=h, attention_mask=mask,
                                        position_ids=self.suffix_positions[rows, :width], use_cache=bool(p), **kwargs)
        return out.last_hidden_state
