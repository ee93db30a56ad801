"""The UnKE writer: train whole decoder blocks so edit inputs map to their key targets while
preservation inputs keep their outputs (methods.md §7 step 2), optionally with the update
direction chosen by Nash bargaining between the two losses (NaKE, §10).

Per step: L_e = MSE(f_L(X_e), Y_e*) and L_p = MSE(f_L(X_p), Y_p) over real (non-padding) token
positions.  ``combine`` picks the direction:

* ``"sum"`` — ∇(L_p + L_e), UnKE (λ_p = λ_e = 1);
* ``"nash"`` — G Λ with GᵀG Λ = 1/Λ (NaKE Algorithm 1, eq. 7);
* ``"fixed"`` — λ_p ∇L_p + λ_e ∇L_e (NaKE Figure 4 ablation).

Difference from the reference: the reference's MSE averages over padding positions too (left
padding in one batch); we average over real tokens only, so padding length cannot change the fit.
That also lets the preservation rows run in groups of similar length (``length_buckets``): L_p is
the sum of the groups' squared errors over their total real positions — the one-batch number, with
~30 % fewer padded positions in every forward and backward of the fit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Sequence

import torch

from kedit.errors import NonFiniteError
from kedit.models.adapters import Adapter, resolve_module
from kedit.models.hooks import eval_mode, frozen
from kedit.stages.layer_io import BlockIO, record_block, run_block
from kedit.stages.spread import restoring
from kedit.stages.tokens import length_buckets

__all__ = ["FitOptions", "masked_mse", "grouped_mse", "fit_block", "layer_fit_deltas", "block_param_names"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FitOptions:
    steps: int = 50
    lr: float = 2e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # "adamw" | "sgd"
    combine: str = "sum"  # "sum" | "nash" | "fixed"
    fixed_weights: tuple[float, float] = (1.0, 1.0)  # (λ_p, λ_e) for combine="fixed"
    diagnostics: bool = False  # record cosines/λ's every step (costs a second backward for "sum")


def _masked_sse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask[..., None].to(pred.dtype)
    return ((pred - target.to(pred.dtype)) ** 2 * m).sum(), m.sum() * pred.shape[-1]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real positions and hidden dimensions."""
    sse, count = _masked_sse(pred, target, mask)
    return sse / count


def grouped_mse(model, adapter: Adapter, layer: int, groups: Sequence[BlockIO]) -> torch.Tensor:
    """Block ``layer``'s MSE against each group's recorded outputs, over all groups' real positions."""
    parts = [_masked_sse(run_block(model, adapter, layer, io), io.outputs, io.mask) for io in groups]
    return sum(sse for sse, _ in parts) / sum(count for _, count in parts)


def _is_norm(name: str) -> bool:
    leaf = name.rsplit(".", 2)
    return any(tag in part for part in leaf[:-1] for tag in ("norm", "ln"))


def block_param_names(model, adapter: Adapter, layers: Sequence[int]) -> list[str]:
    names = []
    for layer in layers:
        prefix = adapter.layer(layer)
        names += [f"{prefix}.{n}" for n, _ in resolve_module(model, prefix, adapter).named_parameters()]
    return names


def _direction(options: FitOptions, loss_p, loss_e, params):
    """Set ``p.grad`` to the combined direction; return the step's diagnostics (or None)."""
    if options.combine == "sum" and not options.diagnostics:
        (loss_p + loss_e).backward()
        return None
    from kedit.stages import bargaining

    g_p = torch.autograd.grad(loss_p, params)
    g_e = torch.autograd.grad(loss_e, params)
    flat = [bargaining.flatten(g_p), bargaining.flatten(g_e)]
    if options.combine == "nash":
        direction, _, diag = bargaining.bargain(flat)
    elif options.combine == "fixed":
        direction, _, diag = bargaining.fixed_weights(flat, list(options.fixed_weights))
    else:
        direction, _, diag = bargaining.plain_sum(flat)
    for p, g in zip(params, bargaining.unflatten(direction, params)):
        p.grad = g.to(p.dtype)
    return diag


@contextlib.contextmanager
def _clearing_grads(params):
    """Leave no ``.grad`` behind on the trained block (the caller's flags stay as they were)."""
    try:
        yield
    finally:
        for p in params:
            p.grad = None


def fit_block(model, adapter: Adapter, layer: int, edit: BlockIO, edit_target: torch.Tensor,
              keep: Sequence[BlockIO], options: FitOptions) -> tuple[list[dict], list[dict]]:
    """Train block ``layer`` in place; return per-step losses and diagnostics.  ``keep``: the
    preservation rows' recordings, in one or more groups (one L_p over all of them)."""
    block = resolve_module(model, adapter.layer(layer), adapter)
    named = list(block.named_parameters())
    params = [p for _, p in named]
    if options.optimizer == "adamw":
        groups = [{"params": [p for n, p in named if not _is_norm(n)], "weight_decay": options.weight_decay},
                  {"params": [p for n, p in named if _is_norm(n)], "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=options.lr, betas=(0.9, 0.999), eps=1e-8)
    elif options.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=options.lr)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd' (got {options.optimizer!r})")
    losses, diagnostics = [], []
    with frozen(model, params), eval_mode(model), _clearing_grads(params):
        for step in range(options.steps):
            opt.zero_grad()
            loss_e = masked_mse(run_block(model, adapter, layer, edit), edit_target, edit.mask)
            loss_p = grouped_mse(model, adapter, layer, keep)
            if not (torch.isfinite(loss_e) and torch.isfinite(loss_p)):
                raise NonFiniteError(f"layer fit of block {layer}: non-finite loss at step {step} "
                                     f"(edit {float(loss_e)}, preservation {float(loss_p)}); lower the lr ({options.lr})")
            losses.append({"step": step, "edit": float(loss_e.detach()), "preservation": float(loss_p.detach())})
            diag = _direction(options, loss_p, loss_e, params)
            if diag is not None:
                diagnostics.append({"step": step, "layer": layer, **diag})
            opt.step()
    return losses, diagnostics


def layer_fit_deltas(model, adapter: Adapter, layers: Sequence[int], rows: Sequence[Sequence[int]],
                     positions: Sequence[Sequence[int]], targets: Sequence[torch.Tensor],
                     keep_rows: Sequence[Sequence[int]], pad_id: int, options: FitOptions,
                     bucket_overhead: int | None = 32) -> tuple[dict[str, torch.Tensor], dict]:
    """Write key targets ``targets[r]`` (k_r, d) for the residual after ``layers[-1]`` at
    ``positions[r]`` of edit row ``r`` by fitting each block in ``layers`` (ascending; each gets
    the residual still missing divided by the number of blocks left, as MEMIT spreads, §7
    ``resid``).  Pure: returns parameter deltas, the model is restored.  The preservation rows
    run in length groups (:func:`~kedit.stages.tokens.length_buckets` with ``bucket_overhead``;
    ``None`` = one padded batch)."""
    layers = sorted(layers)
    z_layer = layers[-1]
    names = block_param_names(model, adapter, layers)
    params = dict(model.named_parameters())
    info = {"fit_loss": [], "diagnostics": []}
    groups = ([list(range(len(keep_rows)))] if bucket_overhead is None
              else length_buckets([len(r) for r in keep_rows], bucket_overhead))
    with restoring(model, names) as saved:
        for i, layer in enumerate(layers):
            edit = record_block(model, adapter, layer, rows, pad_id)
            z_out = edit.outputs if layer == z_layer else record_block(model, adapter, z_layer, rows, pad_id).outputs
            edit_target = edit.outputs.clone()
            for r, (pos, z) in enumerate(zip(positions, targets)):
                pos_t = torch.as_tensor(list(pos), dtype=torch.long, device=edit_target.device)
                resid = (z.to(torch.float64) - z_out[r, pos_t].double()) / (len(layers) - i)
                edit_target[r, pos_t] = edit_target[r, pos_t] + resid.to(edit_target.dtype)
            keep = [record_block(model, adapter, layer, [keep_rows[j] for j in group], pad_id) for group in groups]
            losses, diag = fit_block(model, adapter, layer, edit, edit_target, keep, options)
            info["fit_loss"].append(losses[-1] if losses else {})
            info["diagnostics"] += diag
        deltas = {n: (params[n].detach() - saved[n]).clone() for n in names}
    return deltas, info
