"""Target values: optimise a residual shift δ per request so the model emits the new object
(MEMIT/AlphaEdit ``compute_z``, methods.md §1.3; ROME ``compute_v``, §2).

All requests of a batch are optimised together.  Each request's loss depends only on its own δ
and Adam is elementwise, so the result equals optimising them one by one (tested); a request
that reaches the early-stop loss is frozen and dropped from later forward passes.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from kedit.data.requests import EditRequest
from kedit.errors import NonFiniteError
from kedit.models.adapters import Adapter
from kedit.models.hooks import bfloat16_linears, eval_mode, frozen, trace
from kedit.stages.forward import SuffixRunner, final_hidden_from, final_hidden_with_edit
from kedit.stages.keys import contextualise
from kedit.stages.tokens import encode_with_subject, pad_right, target_ids

__all__ = ["ValueOptions", "ValueResult", "optimise_values"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ValueOptions:
    """Plain options of the value optimisation (the method configs carry the documented fields)."""

    steps: int
    lr: float
    clamp_norm_factor: float
    kl_factor: float
    weight_decay: float
    early_stop_loss: float
    kl_prompt: str = "{} is a"
    prefix_cache: bool = True  # reuse keys/values of positions before the edit token (exact; faster)
    compute_dtype: str = "float32"  # "bfloat16": forward passes on bfloat16 linear weights (faster, inexact)
    bucket_overhead: int | None = 8  # prefix cache: suffixes run in length groups (exact; None = one padded batch)


@dataclasses.dataclass
class ValueResult:
    z: torch.Tensor  # (d, n) float64 targets: h_init + δ
    h_init: torch.Tensor  # (d, n) float64
    loss: list[float]  # final loss per request
    nll: list[float]
    steps: list[int]  # optimisation steps taken per request
    seconds: float = 0.0  # wall time of EditContext.values (near 0 when the ValueCache had the targets)

    def meta(self) -> dict:
        """What the MEMIT-family writers journal about their value targets."""
        return {"value_loss": self.loss, "value_steps": self.steps, "value_seconds": round(self.seconds, 6)}


@dataclasses.dataclass
class _Rows:
    ids: torch.Tensor  # (rows, T)
    mask: torch.Tensor
    position: torch.Tensor  # (rows,) edit position
    owner: torch.Tensor  # (rows,) request index
    is_kl: torch.Tensor  # (rows,) bool
    tgt_row: torch.Tensor  # (m,) row index of each target token
    tgt_pos: torch.Tensor  # (m,) position predicting it
    tgt_tok: torch.Tensor  # (m,) token id
    first_row: torch.Tensor  # (n,) the un-prefixed rewrite row of each request


def _build_rows(tokenizer, requests, templates, kl_prompt) -> _Rows:
    ids, pos, owner, is_kl, tr, tp, tt, first = [], [], [], [], [], [], [], []
    for r, request in enumerate(requests):
        target = target_ids(tokenizer, request.target_new)
        for t_i, template in enumerate(templates):
            enc = encode_with_subject(tokenizer, contextualise(template, request), request.subject)
            row = len(ids)
            if t_i == 0:
                first.append(row)
            ids.append(enc.ids + target[:-1])
            pos.append(enc.position)
            owner.append(r)
            is_kl.append(False)
            for j, tok in enumerate(target):
                tr.append(row)
                tp.append(len(enc.ids) - 1 + j)
                tt.append(tok)
        if request.subject is not None and kl_prompt:
            enc = encode_with_subject(tokenizer, kl_prompt, request.subject)
            ids.append(enc.ids)
            pos.append(enc.position)
            owner.append(r)
            is_kl.append(True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids_t, mask = pad_right(ids, pad)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return _Rows(ids_t, mask, as_long(pos), as_long(owner), torch.tensor(is_kl, dtype=torch.bool),
                 as_long(tr), as_long(tp), as_long(tt), as_long(first))


def optimise_values(
    model,
    tokenizer,
    adapter: Adapter,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    options: ValueOptions,
    *,
    layer: int,
    site: Literal["block", "mlp"] = "block",
) -> ValueResult:
    """Find z per request: the output of ``site`` at ``layer`` (block = residual stream after the
    layer, MEMIT; mlp = MLP output, ROME) that makes the model emit ``target_new``.

    Loss per request (§1.3): mean over rewriting prompts of the mean target-token NLL
    + kl_factor · KL(p_cur ‖ p_init) at the subject of ``kl_prompt``
    + weight_decay · ‖δ‖ / ‖h_init‖²  (the reference's unsquared numerator, kept for parity).
    Adam on δ, early stop below ``early_stop_loss``, no step on the last iteration, and δ
    projected onto the ball ‖δ‖ ≤ clamp_norm_factor · ‖h_init‖ after each step.
    """
    device = next(model.parameters()).device
    rows = _build_rows(tokenizer, requests, templates, options.kl_prompt)
    rows = dataclasses.replace(rows, ids=rows.ids.to(device), mask=rows.mask.to(device))
    n = len(requests)
    lm_head = model.get_output_embeddings()
    block = adapter.layer(layer)
    site_name = block if site == "block" else adapter.mlp_name(layer)
    with torch.no_grad(), eval_mode(model):
        with trace(model, list({block, site_name})) as t:
            final0 = model.base_model(input_ids=rows.ids, attention_mask=rows.mask, use_cache=False).last_hidden_state
        hidden = t[block].output.detach()  # (rows, T, d) residual after `layer`
        site_out = t[site_name].output.detach()
        all_rows = torch.arange(len(rows.position))
        h_init = site_out[rows.first_row, rows.position[rows.first_row]].to(torch.float64)  # (n, d)
        kl_rows = all_rows[rows.is_kl]
        init_logp = {}
        if len(kl_rows):
            logits = lm_head(final0[kl_rows, rows.position[kl_rows]])
            for row, lp in zip(kl_rows.tolist(), F.log_softmax(logits.float(), -1)):
                init_logp[row] = lp
    d = hidden.shape[-1]
    delta = torch.zeros(n, d, dtype=hidden.dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=options.lr)
    max_norm = options.clamp_norm_factor * h_init.norm(dim=-1)  # (n,)
    active = torch.ones(n, dtype=torch.bool)
    last_loss, last_nll, steps = [float("nan")] * n, [float("nan")] * n, [0] * n
    truncated = adapter.residual_inputs_embeds
    suffix = None
    if truncated and options.prefix_cache:
        with torch.no_grad(), eval_mode(model):
            suffix = SuffixRunner(model, adapter, layer, rows.ids, rows.mask, hidden, rows.position,
                                  bucket_overhead=options.bucket_overhead)

    # bfloat16 touches the forward passes only (bfloat16 copies of the linear weights, autocast for
    # the float32 activations and cached keys/values): h_init, δ, the loss and Adam stay in float32
    low = options.compute_dtype == "bfloat16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=low)

    def log_probs(hidden_states: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = lm_head(hidden_states)
        return F.log_softmax(logits.float(), -1)

    with frozen(model), eval_mode(model), bfloat16_linears(model, low):
        for it in range(options.steps):
            req_idx = torch.nonzero(active).flatten()
            sel = torch.nonzero(active[rows.owner]).flatten()  # rows of active requests
            remap = torch.full((len(rows.position),), -1, dtype=torch.long)
            remap[sel] = torch.arange(len(sel))
            pos = rows.position[sel]
            own = rows.owner[sel]
            local = torch.arange(len(sel))
            with autocast:
                if suffix is not None:
                    final = suffix.final_hidden(sel, delta[own])
                    offset = rows.position  # suffix coordinates: the edit position is index 0
                elif truncated:
                    h = hidden[sel].clone()
                    h[local, pos] = h[local, pos] + delta[own]
                    final = final_hidden_from(model, adapter, layer, h, rows.mask[sel])
                else:
                    def add_delta(out: torch.Tensor) -> torch.Tensor:
                        out = out.clone()
                        out[local, pos] = out[local, pos] + delta[own].to(out.dtype)
                        return out

                    final = final_hidden_with_edit(model, adapter, site_name, rows.ids[sel], rows.mask[sel],
                                                   add_delta)
            if suffix is None:
                offset = torch.zeros_like(rows.position)
            # NLL over target tokens of active rewrite rows
            keep = active[rows.owner[rows.tgt_row]]
            tr, tp, tt = rows.tgt_row[keep], rows.tgt_pos[keep], rows.tgt_tok[keep]
            logp = log_probs(final[remap[tr], tp - offset[tr]])
            tok_lp = logp.gather(1, tt[:, None]).squeeze(1)  # (m,)
            row_sum = torch.zeros(len(rows.position)).index_add(0, tr, tok_lp)
            row_cnt = torch.zeros(len(rows.position)).index_add(0, tr, torch.ones_like(tok_lp))
            rewrite = (~rows.is_kl) & active[rows.owner]
            row_nll = -(row_sum[rewrite] / row_cnt[rewrite])
            nll = torch.zeros(n).index_add(0, rows.owner[rewrite], row_nll)
            nll = nll / torch.zeros(n).index_add(0, rows.owner[rewrite], torch.ones_like(row_nll)).clamp(min=1)
            kl = torch.zeros(n)
            kl_sel = [row for row in sel.tolist() if row in init_logp]
            if kl_sel:
                kl_idx = torch.tensor(kl_sel)
                cur = log_probs(final[remap[kl_idx], rows.position[kl_idx] - offset[kl_idx]])
                init = torch.stack([init_logp[row] for row in kl_sel])
                per = (cur.exp() * (cur - init)).sum(-1)  # KL(p_cur ‖ p_init)
                kl = kl.index_add(0, rows.owner[kl_idx], per)
            decay = options.weight_decay * delta.norm(dim=-1).float() / (h_init.norm(dim=-1) ** 2).float()
            loss = nll + options.kl_factor * kl + decay
            if not torch.isfinite(loss[req_idx]).all():
                raise NonFiniteError(
                    f"value optimisation at layer {layer} produced a non-finite loss at step {it} "
                    f"(requests {[requests[i].id for i in req_idx.tolist()]}); lower the learning rate"
                )
            for i in req_idx.tolist():
                last_loss[i], last_nll[i], steps[i] = float(loss[i].detach()), float(nll[i].detach()), it
            done = (loss < options.early_stop_loss) & active
            active = active & ~done
            if it == options.steps - 1 or not active.any():
                break
            opt.zero_grad()
            loss[active].sum().backward()
            frozen_rows = delta.detach()[~active].clone()
            opt.step()
            with torch.no_grad():
                delta[~active] = frozen_rows
                norms = delta.norm(dim=-1).double()
                scale = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))
                delta.mul_(scale[:, None].to(delta.dtype))
    z = h_init + delta.detach().to(torch.float64)
    return ValueResult(z=z.T.contiguous(), h_init=h_init.T.contiguous(), loss=last_loss, nll=last_nll,
                       steps=[s + 1 for s in steps])
