"""Spreading a target residual over several layers (MEMIT-style, methods.md §1.4).

For each layer in ascending order: recompute keys with the partially edited model, take the
residual still missing at the z-layer divided by the number of layers left, solve that layer's
least-squares problem and write it in place so later layers see it.  At the end every weight is
restored: the caller gets the deltas and the model is exactly as before (writers are pure).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from kedit.data.requests import EditRequest
from kedit.models.adapters import Adapter
from kedit.models.hooks import eval_mode, trace
from kedit.stages.keys import compute_keys, contextualise
from kedit.stages.tokens import encode_with_subject, pad_right

__all__ = ["restoring", "spread_over_layers", "current_outputs"]

SolveLayer = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def restoring(model, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Snapshot parameters ``names`` and copy them back on exit (bit for bit)."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)


def current_outputs(model, tokenizer, adapter: Adapter, requests: Sequence[EditRequest], layer: int) -> torch.Tensor:
    """Residual stream after ``layer`` at the edit position of each bare prompt, (d, n) float64."""
    encs = [encode_with_subject(tokenizer, contextualise("{}", r), r.subject) for r in requests]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = pad_right([e.ids for e in encs], pad)
    device = next(model.parameters()).device
    name = adapter.layer(layer)
    with torch.no_grad(), eval_mode(model), trace(model, [name], stop=True) as t:
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    pos = torch.tensor([e.position for e in encs])
    return t[name].output[torch.arange(len(encs)), pos].to(torch.float64).T.contiguous()


def spread_over_layers(
    model,
    tokenizer,
    adapter: Adapter,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    z: torch.Tensor,
    layers: Sequence[int],
    solve_layer: SolveLayer,
    *,
    after_all: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Write targets ``z`` (d, n) for the residual after ``layers[-1]`` into every layer's MLP output.

    ``solve_layer(layer, K, R) -> Δ`` (d_v, d_k) is the method's closed form. ``after_all`` runs
    while all deltas are in place (AlphaEdit reads post-edit keys there). Returns parameter name →
    delta in the stored orientation and dtype.
    """
    layers = sorted(layers)
    names = [adapter.weight_name(layer) for layer in layers]
    params = dict(model.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    with restoring(model, names):
        for i, layer in enumerate(layers):
            K = compute_keys(model, tokenizer, adapter, requests, [layer], templates)[layer]  # (d_k, n)
            h = current_outputs(model, tokenizer, adapter, requests, layers[-1])  # (d, n)
            R = (z - h) / (len(layers) - i)  # (d_v, n)
            delta = solve_layer(layer, K, R)  # (d_v, d_k)
            weight = params[adapter.weight_name(layer)]
            stored = adapter.from_out_in(delta).to(weight.dtype)
            with torch.no_grad():
                weight.add_(stored)
            deltas[adapter.weight_name(layer)] = stored.clone()
        if after_all is not None:
            after_all()
    return deltas
