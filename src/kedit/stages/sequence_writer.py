"""MEMIT writer for targets at several positions of one sequence (AnyEdit's MEMIT_ARE, μKE).

AnyEdit (methods.md §8): the keys are the MLP-output inputs at the window lookup positions (K1,
one column per window) and every *other* position of the same question+answer sequence joins
the preserved keys (Kp), ΔW = R K1ᵀ (λC0 + Kp Kpᵀ + K1 K1ᵀ)⁻¹, spread over the layers as §1.4.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from kedit.models.adapters import Adapter
from kedit.models.hooks import eval_mode, trace
from kedit.stages.spread import restoring
from kedit.stages.tokens import pad_right
from kedit.stages.writers import memit_delta

__all__ = ["sequence_keys", "memit_sequence_deltas"]


def sequence_keys(model, adapter: Adapter, layer: int, z_layer: int, rows: Sequence[Sequence[int]],
                  positions: Sequence[Sequence[int]], pad_id: int):
    """(K1 (d_k, k), Kp (d_k, rest), h (k, d)): keys at the lookup positions, keys at all other
    real positions, and the residual after ``z_layer`` at the lookup positions (float64)."""
    ids, mask = pad_right([list(r) for r in rows], pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    key_name, z_name = adapter.mlp_out_name(layer), adapter.layer(z_layer)
    with torch.no_grad(), eval_mode(model), trace(model, [key_name, z_name], retain_input=True, stop=True) as t:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    keys, z_out = t[key_name].input, t[z_name].output
    chosen = torch.zeros_like(mask, dtype=torch.bool)
    r_idx = torch.cat([torch.full((len(p),), r, dtype=torch.long) for r, p in enumerate(positions)])
    p_idx = torch.cat([torch.as_tensor(list(p), dtype=torch.long) for p in positions])
    chosen[r_idx, p_idx] = True
    K1 = keys[r_idx, p_idx].double().T
    Kp = keys[mask.bool() & ~chosen].double().T
    return K1, Kp, z_out[r_idx, p_idx].double()


def memit_sequence_deltas(model, adapter: Adapter, layers: Sequence[int], rows: Sequence[Sequence[int]],
                          positions: Sequence[Sequence[int]], targets: Sequence[torch.Tensor],
                          C0: Callable[[int], torch.Tensor], lam: float, pad_id: int) -> dict[str, torch.Tensor]:
    """Deltas of the MLP output projections in ``layers`` that move the residual after
    ``layers[-1]`` at ``positions`` to ``targets`` (pure: the model is restored)."""
    layers = sorted(layers)
    z = torch.cat([t.double().reshape(-1, t.shape[-1]) for t in targets])  # (k, d)
    names = [adapter.weight_name(layer) for layer in layers]
    params = dict(model.named_parameters())
    deltas = {}
    with restoring(model, names):
        for i, layer in enumerate(layers):
            K1, Kp, h = sequence_keys(model, adapter, layer, layers[-1], rows, positions, pad_id)
            R = ((z - h) / (len(layers) - i)).T  # (d, k)
            C = C0(layer).double().to(K1.device) + (Kp @ Kp.T) / lam
            delta = memit_delta(K1, R, C, lam, what=f"AnyEdit/MEMIT layer {layer}")
            weight = params[adapter.weight_name(layer)]
            stored = adapter.from_out_in(delta).to(weight.dtype)
            with torch.no_grad():
                weight.add_(stored)
            deltas[adapter.weight_name(layer)] = stored.clone()
    return deltas
