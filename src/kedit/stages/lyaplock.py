"""LyapLock: a virtual queue keeps the long-run preservation loss under a budget (methods.md §6).

Per edited layer ℓ the scheduler keeps a queue Z(t); the preservation term of the closed-form
update is weighted by a·Z(t)·λ, so a layer whose preservation loss D(t) runs above the budget
αD₀ gets a growing weight until D(t) returns under it.
"""
from __future__ import annotations

import math

import torch

from kedit.stages.writers import safe_solve

__all__ = ["preservation_loss", "queue_update", "lyaplock_delta", "queue_constants", "advance_queue"]


def preservation_loss(W: torch.Tensor, C0: torch.Tensor, VK: torch.Tensor, VV: torch.Tensor) -> float:
    """D(t) = tr(E[kkᵀ] WᵀW) − 2 tr(E[vkᵀ] Wᵀ) + tr(E[vvᵀ])  (per-token mean ‖W k − W0 k‖²).

    Implements LyapLock (2025) §3.1 / spec/methods.md §6.2, with E[·] of the unedited model.
    Args: W (d_v, d_k) current weight; C0 = E[kkᵀ]; VK = E[vkᵀ] (d_v, d_k); VV = E[vvᵀ] (d_v, d_v).
    """
    W = W.double()
    return float(torch.sum((W.T @ W) * C0) - 2 * torch.sum(VK * W) + torch.trace(VV))


def queue_constants(D0: float, alpha: float) -> tuple[float, float]:
    """(a, Z_min) = (1/√(αD₀), √(αD₀)) — spec §6.3: with Z(0)=Z_min the weight a·Z starts at 1."""
    root = math.sqrt(max(alpha * D0, 1e-300))
    return 1.0 / root, root


def queue_update(Z: float, D: float, budget: float, a: float, b: float, Z_min: float) -> float:
    """Z(t+1) = max(Z(t) + a·(D(t) − D̄) + b, Z_min)  — LyapLock Eq. 7."""
    return max(Z + a * (D - budget) + b, Z_min)


def lyaplock_delta(K: torch.Tensor, R: torch.Tensor, W: torch.Tensor, C0: torch.Tensor, VK: torch.Tensor,
                   S_KK: torch.Tensor | None, S_VK: torch.Tensor | None, weight: float, V: float = 1.0,
                   *, what: str = "LyapLock") -> torch.Tensor:
    """Δ = [V R K1ᵀ + w(E[vkᵀ] − W E[kkᵀ]) + V(S_VK − W S_KK)] · [V K1K1ᵀ + w E[kkᵀ] + V S_KK]⁻¹,  w = a·Z(t)·λ.

    Implements LyapLock (2025) Eq. 13 / spec/methods.md §6.2: the minimiser of
    V‖ΔK1 − R‖² + V‖(W+Δ)Kp − Vp‖² + w‖(W+Δ)K0 − V0‖² with Kp Kpᵀ = S_KK, Vp Kpᵀ = S_VK,
    K0K0ᵀ = E[kkᵀ], V0K0ᵀ = E[vkᵀ].  The first batch has no past term (S = None) and w = λ.
    Args: K (d_k, n); R (d_v, n); W (d_v, d_k) running weight; C0, VK as above.
    """
    K, R, W, C0, VK = K.double(), R.double(), W.double(), C0.double(), VK.double()
    rhs = V * R @ K.T + weight * (VK - W @ C0)  # (d_v, d_k)
    A = V * K @ K.T + weight * C0  # (d_k, d_k)
    if S_KK is not None:
        rhs = rhs + V * (S_VK.double() - W @ S_KK.double())
        A = A + V * S_KK.double()
    # Δ A = rhs  ⇒  Aᵀ Δᵀ = rhsᵀ (A symmetric)
    return safe_solve(A, rhs.T, what).T


def advance_queue(state: dict, new: dict, prefix: str, D: float, *, alpha: float, b: float, first: bool) -> float:
    """Record D(t) and step the queue of one layer; returns the budget αD₀.

    State keys (``prefix`` + name): ``D0``, ``a``, ``Z_min`` (set from the first batch's D, spec
    §6.3), ``Z`` and ``D``; ``state`` is the previous state, ``new`` receives the updates.
    """
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    if first:
        a, Z_min = queue_constants(D, alpha)
        new[prefix + "D0"], new[prefix + "a"], new[prefix + "Z_min"] = f64(D), f64(a), f64(Z_min)
        Z = Z_min
    else:
        a, Z_min, Z = (float(state[prefix + k]) for k in ("a", "Z_min", "Z"))
    budget = alpha * float(new[prefix + "D0"])
    new[prefix + "Z"] = f64(queue_update(Z, D, budget, a, b, Z_min))
    new[prefix + "D"] = f64(D)
    return budget
