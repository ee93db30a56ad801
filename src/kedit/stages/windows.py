"""Windows of a long answer and the token weights each window's shift is trained on.

* AnyEdit (methods.md §8): window j's shift sees the NLL of window j only, normalised by its length.
* μKE (§9, eq. 10–11): δ_i is trained on every figure F_i^j = w_i ⊕ … ⊕ w_j (j ≥ i) with
  coefficients λ_i^j; regrouped by window (eq. 11) window m gets Σ_{j≥m} λ_i^j / (n−i+1), and
  the reference normalises token-wise by the number of tokens from w_i to the end.
* Affinity (eq. 12): λ_i^j = 2 − mean_t cos(∇NLL(F_i^i), ∇NLL(F_i^j)) at the first T_aff Adam
  iterates of δ_i trained on F_i^i alone.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

__all__ = ["split_windows", "lookup_positions", "window_weights", "matryoshka_weights", "figure_weights",
           "affinity_scores", "affinity_coefficients"]

Window = tuple[int, int]  # [start, end) in answer-token coordinates


def split_windows(n_tokens: int, size: int) -> list[Window]:
    """Consecutive windows of ``size`` answer tokens (overlap 0; the last may be shorter)."""
    if size < 1:
        raise ValueError(f"window size must be >= 1 (got {size})")
    if n_tokens < 1:
        raise ValueError(f"an answer needs at least one token to split (got {n_tokens})")
    return [(s, min(s + size, n_tokens)) for s in range(0, n_tokens, size)]


def lookup_positions(n_prompt: int, windows: Sequence[Window]) -> list[int]:
    """The token right before each window (its first token is predicted from there)."""
    return [n_prompt + start - 1 for start, _ in windows]


def _zeros(seq_len: int) -> torch.Tensor:
    return torch.zeros(seq_len - 1, dtype=torch.float64)


def window_weights(seq_len: int, n_prompt: int, window: Window) -> torch.Tensor:
    """AnyEdit: mean NLL over the window's tokens (weights 1/len on them, indexed by predicting position)."""
    w = _zeros(seq_len)
    start, end = window
    w[n_prompt + start - 1: n_prompt + end - 1] = 1.0 / (end - start)
    return w


def figure_weights(seq_len: int, n_prompt: int, windows: Sequence[Window], i: int, j: int) -> torch.Tensor:
    """Mean NLL of the figure F_i^j (windows i..j joined)."""
    return window_weights(seq_len, n_prompt, (windows[i][0], windows[j][1]))


def matryoshka_weights(seq_len: int, n_prompt: int, windows: Sequence[Window], i: int,
                       lambdas: Sequence[float] | None = None) -> torch.Tensor:
    """Token weights of L_Mat(δ_i), eq. 10 in its token-wise form (eq. 11).

    ``lambdas[k]`` is λ_i^{i+k} for the figure ending at window i+k (None = all ones, the
    Matryoshka-vanilla variant, where window m weighs (n−m+1)/(n−i+1)).  Each token of window m
    gets Σ_{j≥m} λ_i^j / (n−i+1), and the sum is divided by the number of tokens from w_i to the
    end (the reference's normalisation).
    """
    n = len(windows)
    k = n - i
    lambdas = [1.0] * k if lambdas is None else list(lambdas)
    if len(lambdas) != k:
        raise ValueError(f"window {i} of {n} needs {k} coefficients (got {len(lambdas)})")
    w = _zeros(seq_len)
    n_tok = windows[-1][1] - windows[i][0]
    for m in range(i, n):
        coeff = sum(lambdas[j - i] for j in range(m, n)) / k
        start, end = windows[m]
        w[n_prompt + start - 1: n_prompt + end - 1] = coeff / n_tok
    return w


def affinity_scores(gradients, windows: Sequence[Window], i: int, *, steps: int = 3, lr: float = 0.5,
                    d: int, dtype=torch.float32) -> list[float]:
    """a_{i,j} = mean_t cos(∇L(F_i^i), ∇L(F_i^j)) for j = i+1..n−1 (eq. 12).

    ``gradients(delta, js) -> [∇_δ for j in js]``: the gradients of NLL(F_i^j) + decay at ``delta``
    (on the un-shifted model, no earlier δ's, as the reference), all at one point so that a caller
    can share the forward pass (:func:`~kedit.stages.shifts.shift_gradients`).  δ starts at 0 and
    takes ``steps`` Adam steps (lr) along the first figure's gradient; the cosines are taken at the
    iterates before each step.
    """
    n = len(windows)
    delta = torch.zeros(d, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    sums = [0.0] * (n - i - 1)
    for _ in range(steps):
        g_first, *g_rest = gradients(delta.detach().clone(), list(range(i, n)))
        for k, g_j in enumerate(g_rest):
            sums[k] += float(torch.nn.functional.cosine_similarity(g_first.double(), g_j.double(), dim=0))
        opt.zero_grad()
        delta.grad = g_first.to(delta.dtype).clone()
        opt.step()
    return [s / steps for s in sums]


def affinity_coefficients(scores: Sequence[float], order: Literal["paper", "reference"] = "reference") -> list[float]:
    """λ_i^{i..n} from a_{i,i+1..n}: paper eq. 12 pairs figure j with a_{i,j} (λ_i^i = 1);
    the reference consumes [1, 2−a_{i,i+1}, …, 2−a_{i,n}] in reverse window order, so the largest
    figure gets 1 and the smallest 2−a_{i,n} (methods.md §9 "Code/paper contradiction")."""
    paper = [1.0] + [2.0 - a for a in scores]
    if order == "paper":
        return paper
    if order == "reference":
        return paper[::-1]
    raise ValueError(f"affinity_order must be 'paper' or 'reference' (got {order!r})")
