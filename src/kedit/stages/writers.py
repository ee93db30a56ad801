"""Closed-form writers: keys → target residuals → weight update (float64, ``solve`` not ``inv``).

Notation (methods.md): W is (d_v, d_k) with value = W·key; keys K (d_k, n) as columns;
residuals R (d_v, n); C0 = E[k kᵀ] (d_k, d_k).
"""
from __future__ import annotations

import torch

from kedit.errors import NonFiniteError

__all__ = ["memit_delta", "null_space_projector", "alphaedit_delta", "rome_delta", "safe_solve"]


def safe_solve(A: torch.Tensor, B: torch.Tensor, what: str) -> torch.Tensor:
    """``solve(A, B)`` that names the system when A is singular or the result is not finite."""
    try:
        X = torch.linalg.solve(A, B)
    except torch.linalg.LinAlgError as exc:
        raise NonFiniteError(
            f"{what}: the {tuple(A.shape)} system matrix is singular ({exc}). Increase the preservation "
            "weight / L2 term, or collect statistics over more tokens."
        ) from None
    if not torch.isfinite(X).all():
        raise NonFiniteError(f"{what}: the solution contains NaN/inf (ill-conditioned system).")
    return X


def memit_delta(K: torch.Tensor, R: torch.Tensor, C0: torch.Tensor, lam: float, *, what: str = "MEMIT") -> torch.Tensor:
    """ΔW = R Kᵀ (λ C0 + K Kᵀ)⁻¹.

    Implements Meng et al. (2023) MEMIT Eq. 14; spec/methods.md §3.  Minimises
    ‖(W+Δ)K − (WK + R)‖² + λ‖Δ K0‖² with K0 K0ᵀ ≈ C0.

    Args:
        K: keys (d_k, n). R: residuals (d_v, n). C0: (d_k, d_k). lam: λ (mom2_update_weight).
    Returns:
        Δ (d_v, d_k), float64.
    """
    K, R, C0 = K.double(), R.double(), C0.double()
    A = lam * C0 + K @ K.T  # (d_k, d_k)
    adj = safe_solve(A, K, what)  # (d_k, n) = A⁻¹ K
    return R @ adj.T


def null_space_projector(C0: torch.Tensor, threshold: float, *, relative: bool = False) -> torch.Tensor:
    """P = U₀ U₀ᵀ over eigenvectors of C0 with eigenvalue < threshold.

    Implements Fang et al. (2025) AlphaEdit Eq. 8-9; spec/methods.md §4.
    Notes: the authors' code thresholds singular values of E[kkᵀ] absolutely (2e-2); we use
    ``eigh`` (C0 is symmetric PSD, so eigenvalues = singular values) in float64.
    ``relative=True`` thresholds ``eigenvalue / max eigenvalue`` instead.
    """
    if not torch.isfinite(C0).all():
        raise NonFiniteError("null_space_projector: the key statistics C0 contain NaN/inf; recompute them.")
    try:
        evals, evecs = torch.linalg.eigh(C0.double())
    except torch.linalg.LinAlgError as exc:
        raise NonFiniteError(f"null_space_projector: eigendecomposition of C0 failed ({exc}).") from None
    cut = threshold * evals.max() if relative else threshold
    U0 = evecs[:, evals < cut]  # (d_k, r)
    return U0 @ U0.T


def alphaedit_delta(K: torch.Tensor, R: torch.Tensor, P: torch.Tensor, S_past: torch.Tensor | None, alpha: float,
                    *, what: str = "AlphaEdit") -> torch.Tensor:
    """Δ = R Kᵀ P [(K Kᵀ + Kp Kpᵀ) P + α I]⁻¹.

    Implements Fang et al. (2025) AlphaEdit Eq. 14; spec/methods.md §4.  Solved in transposed
    form Δᵀ = [P (K Kᵀ + S) + α I]⁻¹ P K Rᵀ (P symmetric).  Δ K0 = 0 for keys in the preserved
    space because the system acts as α I on null(P) [derived].

    Args:
        K (d_k, n), R (d_v, n), P (d_k, d_k), S_past = Σ Kp Kpᵀ of past edits or None, alpha = L2.
    """
    K, R, P = K.double(), R.double(), P.double()
    KK = K @ K.T
    if S_past is not None:
        KK = KK + S_past.double()
    A = P @ KK + alpha * torch.eye(P.shape[0], dtype=torch.float64, device=P.device)
    return safe_solve(A, P @ K @ R.T, what).T


def rome_delta(z: torch.Tensor, W: torch.Tensor, k_star: torch.Tensor, C0: torch.Tensor | None,
               *, k_cur: torch.Tensor | None = None, o_cur: torch.Tensor | None = None) -> torch.Tensor:
    """Rank-one ΔW = (z − o_cur) uᵀ / (k_cur · u) with u = normalise(C0⁻¹ k*) (or k* without C0).

    Implements Meng et al. (2022) ROME Eq. 2 / spec/methods.md §2.  With ``k_cur``/``o_cur`` left
    None the context-averaged key is used throughout (the ``rome_fix`` of Gupta et al., R-ROME):
    ΔW = (z − W k*)(C0⁻¹k*)ᵀ / (k*ᵀ C0⁻¹ k*), which maps k* exactly to z.  Passing the
    bare-prompt key and MLP output reproduces the original code (denominator k_cur · u).

    Args:
        z: target MLP output (d_v,). W: (d_v, d_k). k_star: averaged key (d_k,). C0: (d_k, d_k).
    """
    W, k_star, z = W.double(), k_star.double(), z.double()
    u = safe_solve(C0.double(), k_star[:, None], "ROME C0⁻¹k*")[:, 0] if C0 is not None else k_star
    u = u / u.norm()
    if k_cur is None:
        k_cur, o_cur = k_star, W @ k_star
    right = (z - o_cur.double()) / torch.dot(k_cur.double(), u)  # (d_v,)
    return torch.outer(right, u)
