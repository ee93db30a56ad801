"""Residual shifts for long targets: one δ per lookup position, trained on weighted token NLL.

UnKE's key target (methods.md §7 step 1), AnyEdit's window-by-window shifts (§8) and μKE's
Matryoshka shifts (§9) are the same optimisation with different token weights:

    L(δ_i) = −Σ_t w_t · log p(x_{t+1} | x_≤t; δ_<i frozen, δ_i) + wd · ‖δ_i‖ / ‖h_i‖²

with δ's added to the residual stream after block ``layer`` at their lookup positions and
``w`` zero outside the tokens the shift is responsible for.  Adam, lr 0.5, projection onto
‖δ‖ ≤ clamp·‖h_i‖ after each step, optional early stop — the reference's settings.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from kedit.errors import NonFiniteError
from kedit.models.adapters import Adapter
from kedit.models.hooks import eval_mode, frozen, trace
from kedit.stages.forward import final_hidden_from, final_hidden_with_edit, hidden_after, tail_layers

__all__ = ["ShiftOptions", "ShiftResult", "ShiftedSequence", "optimise_shift", "shift_gradients"]


@dataclasses.dataclass(frozen=True)
class ShiftOptions:
    steps: int = 25
    lr: float = 0.5
    clamp_norm_factor: float = 4.0
    weight_decay: float = 1e-3
    early_stop_loss: float = 0.0  # 0 = run every step (original UnKE)
    prefix_cache: bool = True  # reuse the later blocks' keys/values before the shifted position (exact)


@dataclasses.dataclass
class ShiftResult:
    delta: torch.Tensor  # (d,) in the model dtype
    h_init: torch.Tensor  # (d,) float64: residual after the layer at the lookup position
    loss: float
    steps: int

    @property
    def target(self) -> torch.Tensor:
        """k* / z = h_init + δ (float64)."""
        return self.h_init + self.delta.double()


class ShiftedSequence:
    """One token sequence whose residual after block ``layer`` can be shifted at chosen positions.

    The blocks up to ``layer`` do not depend on the shifts, so their output is computed once; each
    evaluation runs only the later blocks (or, for GPT-2-style models whose embeddings are not a
    plain residual, the full model with an editing hook — same numbers, tested for the values).
    """

    def __init__(self, model, adapter: Adapter, layer: int, ids: Sequence[int]):
        self.model, self.adapter, self.layer = model, adapter, layer
        device = next(model.parameters()).device
        self.ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
        self.mask = torch.ones_like(self.ids)
        with torch.no_grad(), eval_mode(model):
            self.hidden = hidden_after(model, adapter, layer, self.ids, self.mask).detach()  # (1, T, d)
        self.lm_head = model.get_output_embeddings()

    def __len__(self) -> int:
        return self.ids.shape[1]

    def h(self, position: int) -> torch.Tensor:
        return self.hidden[0, position].double()

    def token_logprobs(self, positions: torch.Tensor, deltas: torch.Tensor, *, upto: int | None = None,
                       needed: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_{t+1} | x_≤t) for t in ``needed`` (default all t < upto−1) with ``deltas`` (k, d)
        added at ``positions`` (k,)."""
        T = upto or len(self)
        ids, mask = self.ids[:, :T], self.mask[:, :T]
        if self.adapter.residual_inputs_embeds:
            h = self.hidden[:, :T].clone()
            h[0, positions] = h[0, positions] + deltas.to(h.dtype)
            final = final_hidden_from(self.model, self.adapter, self.layer, h, mask)
        else:
            def add(out: torch.Tensor) -> torch.Tensor:
                out = out.clone()
                out[0, positions] = out[0, positions] + deltas.to(out.dtype)
                return out

            final = final_hidden_with_edit(self.model, self.adapter, self.adapter.layer(self.layer), ids, mask, add)
        t = needed if needed is not None else torch.arange(T - 1, device=ids.device)
        logp = F.log_softmax(self.lm_head(final[0, t]).float(), -1)
        return logp.gather(1, ids[0, t + 1][:, None]).squeeze(1)


class _SuffixSteps:
    """Exact speed-up for the shift loop: tokens before the shifted position do not depend on δ,
    so the later blocks' keys/values for them are computed once (frozen shifts included) and each
    step runs only the suffix from the shifted position on (as ``SuffixRunner`` for values)."""

    def __init__(self, seq: ShiftedSequence, position: int, frozen_pos, frozen_delta, upto: int | None):
        from transformers import DynamicCache

        self.seq, self.p, self.T = seq, position, upto or len(seq)
        self._cache_cls = DynamicCache
        h = seq.hidden[:, : self.T].clone()
        h[0, frozen_pos] = h[0, frozen_pos] + frozen_delta.to(h.dtype)
        self.suffix = h[:, position:]

        def add_frozen(out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[0, frozen_pos] = out[0, frozen_pos] + frozen_delta.to(out.dtype)
            return out

        # the full model on the prefix (a cache for every layer, as the model's own mask logic expects)
        with torch.no_grad(), trace(seq.model, [seq.adapter.layer(seq.layer)], retain_output=False,
                                    edit_output=lambda _n, out: add_frozen(out)):
            out = seq.model.base_model(input_ids=seq.ids[:, :position], attention_mask=seq.mask[:, :position],
                                       use_cache=True)
        self.kv = [(lay.keys, lay.values) for lay in out.past_key_values.layers]

    def token_logprobs(self, delta: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
        seq, p = self.seq, self.p
        h = self.suffix.clone()
        h[0, 0] = h[0, 0] + delta.to(h.dtype)
        cache = self._cache_cls(ddp_cache_data=[(k, v) for k, v in self.kv])
        dev = h.device
        with tail_layers(seq.model, seq.adapter, seq.layer + 1):
            final = seq.model.base_model(inputs_embeds=h, attention_mask=seq.mask[:, : self.T], use_cache=True,
                                         past_key_values=cache, cache_position=torch.arange(p, self.T, device=dev),
                                         position_ids=torch.arange(p, self.T, device=dev)[None]).last_hidden_state
        logp = F.log_softmax(seq.lm_head(final[0, needed - p]).float(), -1)
        return logp.gather(1, seq.ids[0, needed + 1][:, None]).squeeze(1)


def _token_logprobs(seq: ShiftedSequence, position: int, delta, needed: torch.Tensor, frozen_pos, frozen_delta,
                    upto: int | None, suffix: "_SuffixSteps | None") -> torch.Tensor:
    if suffix is not None:
        return suffix.token_logprobs(delta, needed)
    positions = torch.cat([frozen_pos, torch.tensor([position], device=frozen_pos.device)])
    deltas = torch.cat([frozen_delta.to(delta.dtype), delta[None]])
    return seq.token_logprobs(positions, deltas, upto=upto, needed=needed)


def _loss(seq: ShiftedSequence, position: int, delta, weights: torch.Tensor, frozen_pos, frozen_delta,
          weight_decay: float, h_norm: torch.Tensor, upto: int | None, suffix: "_SuffixSteps | None" = None):
    needed = torch.nonzero(weights).flatten()
    logp = _token_logprobs(seq, position, delta, needed, frozen_pos, frozen_delta, upto, suffix)
    return _objective(logp, weights[needed], delta, weight_decay, h_norm)


def _objective(logp: torch.Tensor, w: torch.Tensor, delta, weight_decay: float, h_norm: torch.Tensor) -> torch.Tensor:
    """−Σ_t w_t log p_t + wd·‖δ‖/‖h‖² (the module docstring's L(δ_i)), from the needed tokens' log-probs."""
    return -(w.to(logp.dtype) * logp).sum() + weight_decay * delta.norm().float() / (h_norm ** 2)


def _frozen(frozen_shifts, d, dtype, device):
    if not frozen_shifts:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, d, dtype=dtype, device=device)
    pos = torch.tensor([p for p, _ in frozen_shifts], dtype=torch.long, device=device)
    return pos, torch.stack([x.detach() for _, x in frozen_shifts]).to(dtype)


def _suffix_applies(seq: ShiftedSequence, position: int, frozen_pos, weights: torch.Tensor) -> bool:
    """The prefix cache is exact when nothing before ``position`` moves and no weighted token precedes it."""
    return (seq.adapter.residual_inputs_embeds and position > 0 and bool((frozen_pos < position).all())
            and int(torch.nonzero(weights).min()) >= position)


def shift_gradients(seq: ShiftedSequence, position: int, delta: torch.Tensor, weights: Sequence[torch.Tensor], *,
                    weight_decay: float, frozen_shifts=(), upto: int | None = None,
                    prefix_cache: bool = True) -> list[torch.Tensor]:
    """∇_δ of each weighted loss at the same ``delta`` (μKE's affinity, eq. 12, compares the
    gradients of every figure F_i^j at one point).  The token log-probabilities do not depend on
    the weights, so one forward pass (from the shifted position on, with the prefix cache) serves
    all of them, and each gradient costs one backward pass."""
    fp, fd = _frozen(frozen_shifts, seq.hidden.shape[-1], seq.hidden.dtype, seq.ids.device)
    h_norm = seq.h(position).norm().float()
    delta = delta.detach().clone().requires_grad_(True)
    union = torch.stack([w != 0 for w in weights]).any(0).to(torch.float64)
    with frozen(seq.model), eval_mode(seq.model):
        suffix = _SuffixSteps(seq, position, fp, fd, upto) if prefix_cache and _suffix_applies(seq, position, fp, union) \
            else None
        needed = torch.nonzero(union).flatten()
        logp = _token_logprobs(seq, position, delta, needed, fp, fd, upto, suffix)
        grads = []
        for k, w in enumerate(weights):
            loss = _objective(logp, w[needed], delta, weight_decay, h_norm)
            (grad,) = torch.autograd.grad(loss, [delta], retain_graph=k < len(weights) - 1)
            grads.append(grad)
    return grads


def optimise_shift(seq: ShiftedSequence, position: int, weights: torch.Tensor, options: ShiftOptions, *,
                   frozen_shifts: Sequence[tuple[int, torch.Tensor]] = (), upto: int | None = None,
                   what: str = "shift") -> ShiftResult:
    """Optimise δ at ``position`` on the weighted NLL (``weights`` indexed by predicting position t,
    length len(seq)−1), with ``frozen_shifts`` [(position, δ)] already in place."""
    d = seq.hidden.shape[-1]
    fp, fd = _frozen(frozen_shifts, d, seq.hidden.dtype, seq.ids.device)
    h_init = seq.h(position)
    h_norm = h_init.norm().float()
    max_norm = options.clamp_norm_factor * h_init.norm()
    delta = torch.zeros(d, dtype=seq.hidden.dtype, device=seq.ids.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=options.lr)
    last, steps = float("nan"), 0
    with frozen(seq.model), eval_mode(seq.model):
        suffix = None
        if options.prefix_cache and _suffix_applies(seq, position, fp, weights):
            suffix = _SuffixSteps(seq, position, fp, fd, upto)
        for it in range(options.steps):
            loss = _loss(seq, position, delta, weights, fp, fd, options.weight_decay, h_norm, upto, suffix)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"{what}: the loss became non-finite at step {it}; lower the learning rate "
                                     f"(lr={options.lr})")
            last, steps = float(loss.detach()), it + 1
            if options.early_stop_loss and last < options.early_stop_loss:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                norm = delta.norm().double()
                if norm > max_norm:
                    delta.mul_((max_norm / norm).to(delta.dtype))
    return ShiftResult(delta.detach().clone(), h_init, last, steps)
