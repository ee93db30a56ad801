"""Nash-bargaining combination of per-objective gradients (NaKE; spec/methods.md §10).

NaKE (seed paper 000) replaces UnKE's plain sum ∇L_p + ∇L_e (§7, step 2) by the Nash bargaining
direction of Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022):
with ``G = [g_1, …, g_K]`` (d, K) the players' gradients, find ``Λ > 0`` with

    Gᵀ G Λ = 1 / Λ          (NaKE eq. 7; elementwise reciprocal)

and step along ``G Λ`` (NaKE Algorithm 1: ``θ ← θ − η G Λ``).  For the two players of NaKE,
g_p = ∇L_p (preservation) and g_e = ∇L_e (edit), the system reads (eq. 8)

    λ_p² ‖g_p‖² + λ_p λ_e g_pᵀg_e = 1,      λ_e² ‖g_e‖² + λ_p λ_e g_pᵀg_e = 1,

whose positive solution is closed form (:func:`nash_two`).  :func:`nash_weights` is the general
K-player solver (Nash-MTL's sequential convex steps), :func:`bargain` the entry point the writer
calls, and :func:`fixed_weights` / :func:`plain_sum` give the Figure 4 ablation and UnKE with the
same diagnostics, so the three are directly comparable.

Players are ordered ``[g_p, g_e]`` whenever K = 2.  Gram matrices, weights and diagnostics are
computed in float64; the direction is returned in the gradients' dtype promoted to at least float32.

Example:
    >>> import torch
    >>> g_p, g_e = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    >>> direction, lambdas, diag = bargain([g_p, g_e])
    >>> [round(x, 4) for x in lambdas], round(diag["norm_ratio"], 4)
    ([1.0, 0.3333], 1.0)
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from kedit.errors import NonFiniteError

__all__ = ["flatten", "unflatten", "nash_two", "nash_weights", "nash_residual", "bargain", "fixed_weights", "plain_sum"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 24  # elements per float64 chunk when forming Gram matrices of large gradients
_REPORTED: set[str] = set()  # fallback kinds already logged (log de-duplication only; never affects results)

Grad = torch.Tensor | Sequence[torch.Tensor]


# -- flattening ---------------------------------------------------------------------------------------------
def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-parameter tensors (e.g. the gradients of a block) into one 1-D vector.

    Example:
        >>> flatten([torch.ones(2, 2), torch.zeros(3)]).shape
        torch.Size([7])
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("flatten: 'tensors' is empty; pass at least one tensor.")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a 1-D ``vector`` back into tensors shaped like ``like`` (the inverse of :func:`flatten`).

    The pieces keep ``vector``'s dtype and device; cast with ``.to(p.dtype)`` where needed.

    Example:
        >>> [t.shape for t in unflatten(torch.arange(7.0), [torch.ones(2, 2), torch.zeros(3)])]
        [torch.Size([2, 2]), torch.Size([3])]
    """
    like = list(like)
    sizes = [t.numel() for t in like]
    if vector.dim() != 1 or vector.numel() != sum(sizes):
        raise ValueError(
            f"unflatten: 'vector' must be 1-D with {sum(sizes)} elements (the total size of 'like'). "
            f"Got shape {tuple(vector.shape)} instead."
        )
    return [piece.reshape(t.shape) for piece, t in zip(torch.split(vector, sizes), like)]


def _as_vector(g: Grad, index: int) -> torch.Tensor:
    if isinstance(g, torch.Tensor):
        return g.reshape(-1)
    if isinstance(g, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in g):
        return flatten(g)
    raise ValueError(f"grads[{index}] must be a tensor or a list of per-parameter tensors. Got {type(g).__name__} instead.")


def _vectors(grads: Sequence[Grad], caller: str) -> list[torch.Tensor]:
    vectors = [_as_vector(g, i) for i, g in enumerate(grads)]
    if not vectors:
        raise ValueError(f"{caller}: 'grads' is empty; pass one gradient per player.")
    sizes = {v.numel() for v in vectors}
    if len(sizes) != 1:
        raise ValueError(f"{caller}: all gradients must have the same number of elements. Got {[v.numel() for v in vectors]}.")
    return vectors


def _names(k: int) -> list[str]:
    return ["g_p", "g_e"] if k == 2 else [f"g_{i}" for i in range(k)]


def _gram(vectors: Sequence[torch.Tensor]) -> np.ndarray:
    """GᵀG (K, K) in float64, accumulated chunk by chunk so no float64 copy of a whole gradient is made."""
    k, n = len(vectors), vectors[0].numel()
    M = torch.zeros((k, k), dtype=torch.float64, device=vectors[0].device)
    for start in range(0, n, _CHUNK):
        block = torch.stack([v[start:start + _CHUNK].to(torch.float64) for v in vectors])  # (K, chunk)
        M += block @ block.T
    return M.cpu().numpy()


def _check_finite(M: np.ndarray, caller: str) -> None:
    if np.isfinite(M).all():
        return
    names = _names(len(M))
    bad = [names[i] for i in range(len(M)) if not np.isfinite(M[i, i])]
    if bad:
        raise NonFiniteError(f"{caller}: gradient(s) {bad} contain NaN or inf; check the losses before combining.")
    raise NonFiniteError(f"{caller}: the inner products of the gradients overflowed (Gram matrix {M.tolist()}).")


def _report(kind: str, message: str) -> None:
    """Log a fallback at WARNING the first time its kind occurs in the process, at DEBUG afterwards."""
    level = logging.DEBUG if kind in _REPORTED else logging.WARNING
    _REPORTED.add(kind)
    logger.log(level, "%s", message)


# -- two players: closed form --------------------------------------------------------------------------------
def _nash_two_gram(M: np.ndarray, eps: float) -> tuple[float, float, dict[str, Any]]:
    n_p, n_e = math.sqrt(max(M[0, 0], 0.0)), math.sqrt(max(M[1, 1], 0.0))
    top = max(n_p, n_e)
    info: dict[str, Any] = {"norm_p": n_p, "norm_e": n_e, "cos": None, "fallback": None}
    if top == 0.0:
        info["fallback"] = "zero_both"
        _report("zero_both", "Nash bargaining: both gradients are zero; the direction is zero (lambda_p = lambda_e = 0).")
        return 0.0, 0.0, info
    zero_p, zero_e = n_p <= eps * top, n_e <= eps * top
    if zero_p or zero_e:
        # eq. 7 has no solution for a zero player; the other player's equation gives λ = 1/n (unit-norm step)
        kind = "zero_g_p" if zero_p else "zero_g_e"
        _report(kind, f"Nash bargaining: {kind[5:]} is ~0 (norms {n_p:.3g}, {n_e:.3g}); stepping along the other "
                      "gradient alone, normalised to unit length.")
        info["fallback"] = kind
        return (0.0, 1.0 / n_e, info) if zero_p else (1.0 / n_p, 0.0, info)
    cos = min(1.0, max(-1.0, float(M[0, 1]) / (n_p * n_e)))
    info["cos"] = cos
    one_plus = 1.0 + cos
    if one_plus < eps:
        _report("opposed", f"Nash bargaining: the gradients are opposed (cos = {cos:.10f}); 1 + cos is clipped at "
                           f"{eps:g}, so the weights are large and the direction is the small residual ĝ_p + ĝ_e.")
        info["fallback"] = "opposed"
        one_plus = eps
    root = math.sqrt(one_plus)
    return 1.0 / (n_p * root), 1.0 / (n_e * root), info


def nash_two(g_p: Grad, g_e: Grad, *, eps: float = 1e-8) -> tuple[float, float, dict[str, Any]]:
    """Closed-form Nash bargaining weights of two players (NaKE eq. 8; spec/methods.md §10 [derived]).

    With ``n_p = ‖g_p‖``, ``n_e = ‖g_e‖`` and ``cos = g_pᵀg_e / (n_p n_e)``:

        λ_p = 1 / (n_p √(1 + cos)),     λ_e = 1 / (n_e √(1 + cos)),

    so ``λ_p g_p + λ_e g_e = (ĝ_p + ĝ_e) / √(1 + cos)`` has norm √2, both players contribute equally
    (‖λ_p g_p‖ = ‖λ_e g_e‖) and eq. 8 holds exactly.

    Args:
        g_p: preservation gradient ∇L_p (any shape, or a list of per-parameter tensors).
        g_e: edit gradient ∇L_e (same number of elements).
        eps: relative threshold: a norm ≤ eps·max(n_p, n_e) counts as zero, and ``1 + cos`` is
            clipped at eps.

    Returns:
        ``(lambda_p, lambda_e, info)`` with ``info = {"norm_p", "norm_e", "cos", "fallback"}``.
        ``fallback`` is None, or ``"zero_g_p"`` / ``"zero_g_e"`` (that player has weight 0 and the other
        weight 1/n, a unit-norm step), ``"zero_both"`` (both weights 0), or ``"opposed"`` (cos ≈ −1,
        ``1 + cos`` clipped at eps). Each kind is logged at WARNING the first time it occurs.

    Raises:
        NonFiniteError: a gradient holds NaN/inf, or their inner products overflow.

    Example:
        >>> lp, le, info = nash_two(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.5]))
        >>> round(lp, 4), round(le, 4), info["cos"]
        (0.3333, 2.0, 0.0)
    """
    vectors = _vectors([g_p, g_e], "nash_two")
    M = _gram(vectors)
    _check_finite(M, "nash_two")
    return _nash_two_gram(M, eps)


# -- K players: Nash-MTL's sequential convex steps -------------------------------------------------------------
def _residual(M: np.ndarray, lam: np.ndarray) -> float:
    """max_i |λ_i (MΛ)_i − 1|: zero exactly at a solution; invariant to rescaling M (with Λ rescaled)."""
    return float(np.max(np.abs(lam * (M @ lam) - 1.0)))


def _newton(M: np.ndarray, beta: np.ndarray, *, max_iter: int, tol: float, until_feasible: bool = False):
    """Damped Newton on the convex potential f(β) = ½βᵀMβ − Σ log β_i, whose stationarity condition
    ∇f = Mβ − 1/β = 0 is exactly eq. 7.  Steps are taken in the scaled form
    dβ = −D (DMD + I)⁻¹ (β∘Mβ − 1), D = diag(β), and kept inside β > 0."""
    f = lambda b: 0.5 * b @ M @ b - np.log(b).sum()  # noqa: E731
    for it in range(max_iter):
        Mb = M @ beta
        if until_feasible and np.all(Mb > 0):
            return beta, it
        r = beta * Mb - 1.0
        if np.max(np.abs(r)) < tol:
            return beta, it
        step = -beta * np.linalg.solve(beta[:, None] * M * beta[None, :] + np.eye(len(beta)), r)
        t = 1.0
        while np.any(beta + t * step <= 0):
            t *= 0.5
        f0, r0, slope = f(beta), np.linalg.norm(r), (Mb - 1.0 / beta) @ step
        while t > 1e-12:
            cand = beta + t * step
            if f(cand) <= f0 + 0.25 * t * slope or np.linalg.norm(cand * (M @ cand) - 1.0) < (1 - 0.25 * t) * r0:
                break
            t *= 0.5
        beta = beta + t * step
    return beta, max_iter


def _ccp_step(M: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """One convex subproblem of Nash-MTL: minimise 1ᵀMβ + ∇φ(β_t)ᵀ(β − β_t) subject to
    β_i (Mβ)_i ≥ 1, β > 0, where φ(β) = Σ log β_i + Σ log (Mβ)_i is linearised at β_t (CCP)."""
    from scipy.optimize import minimize

    grad_phi = 1.0 / prev + M.T @ (1.0 / (M @ prev))
    c = M.sum(axis=0) + grad_phi
    constraint = {"type": "ineq", "fun": lambda b: b * (M @ b) - 1.0, "jac": lambda b: np.diag(M @ b) + b[:, None] * M}
    result = minimize(lambda b: c @ b, prev, jac=lambda b: c, method="SLSQP", constraints=[constraint],
                      bounds=[(1e-12, None)] * len(prev), options={"maxiter": 200, "ftol": 1e-14})
    beta = np.asarray(result.x, dtype=np.float64)
    return beta if np.all(np.isfinite(beta)) and np.all(beta > 0) else prev


def nash_weights(
    G: torch.Tensor | np.ndarray,
    *,
    max_iter: int = 20,
    tol: float = 1e-3,
    step_tol: float = 1e-6,
    init: Sequence[float] | np.ndarray | None = None,
    method: str = "ccp",
    polish: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve ``Gᵀ G Λ = 1/Λ``, Λ > 0, for K players (NaKE eq. 7, Algorithm 1; Nash-MTL, Navon et al. 2022).

    Nash-MTL's procedure (spec/methods.md §10): normalise ``M = GᵀG`` by its Frobenius norm
    ``s = ‖M‖_F``, solve ``M̃ β = 1/β`` with ``M̃ = M/s`` by sequential convex (CCP) steps from the
    warm start, stop when ``‖M̃β − 1/β‖ < tol`` or ``‖Δβ‖ < step_tol`` or after ``max_iter`` steps.
    The solution of the original system is ``Λ = β / √s`` (if β solves the normalised system,
    ``M (β/√s) = √s M̃β = √s/β``), which is what is returned.

    Args:
        G: (d, K) matrix whose columns are the players' gradients.
        max_iter: CCP steps (Nash-MTL ``optim_niter`` = 20).
        tol: stop when ``‖M̃β − 1/β‖₂ < tol`` (Nash-MTL: 1e-3).
        step_tol: stop when ``‖β_t+1 − β_t‖₂ < step_tol`` (Nash-MTL: 1e-6).
        init: warm start β in the normalised scale (``info["lambda_normalised"]`` of the previous call);
            default all ones, as Nash-MTL's first call.
        method: ``"ccp"`` (Nash-MTL's sequential convex steps, each solved with scipy SLSQP) or
            ``"newton"`` (damped Newton on the convex potential ½βᵀM̃β − Σ log β_i, whose gradient
            vanishes exactly at the solution).
        polish: after CCP, run Newton steps when the residual is above 1e-10 (sharpens, never changes,
            the fixed point).

    Returns:
        ``(Λ, info)``: Λ (K,) float64 for the *original* G; ``info`` = {"lambda_normalised": β,
        "scale": s, "residual": max_i |Λ_i (GᵀGΛ)_i − 1| (the same in both scales; see
        :func:`nash_residual`), "residual_nash_mtl": ‖M̃β − 1/β‖₂, "n_iter", "stop": "tol" | "step" |
        "max_iter" | "newton", "start": "init" | "ones" | "newton", "polished": bool}.

    Notes:
        Deviations from Nash-MTL's code: (1) subproblems are solved with SLSQP, not cvxpy/ECOS, and posed
        on M̃ with normalisation factor 1 — Nash-MTL passes the factor into the constraint and the
        linearised term, which rescales the variable by √s and the linear term by 1/s: the fixed point is
        the same; (2) when the start is infeasible for the linearisation (some (M̃β)_i ≤ 0, strong
        conflict), Newton steps are taken until it is feasible (``info["start"] == "newton"``);
        (3) the shared-gradient norm clipping (``max_norm=1``) is not applied here (it belongs to the
        optimiser step). A zero column has no solution: ValueError (:func:`bargain` drops such players).

    Raises:
        ValueError: G is not 2-D, has a zero column, or ``method`` is unknown.
        NonFiniteError: G holds NaN/inf.

    Example:
        >>> G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
        >>> lam, info = nash_weights(G)
        >>> lam.round(4).tolist(), info["residual"] < 1e-9
        ([1.0, 0.5, 0.25], True)
    """
    if method not in ("ccp", "newton"):
        raise ValueError(f"The 'method' parameter of nash_weights must be 'ccp' or 'newton'. Got {method!r} instead.")
    G_t = torch.as_tensor(G)
    if G_t.dim() != 2 or G_t.shape[1] < 1:
        raise ValueError(f"nash_weights: 'G' must be a (d, K) matrix with one gradient per column. Got shape {tuple(G_t.shape)}.")
    M = _gram([G_t[:, i] for i in range(G_t.shape[1])])
    return _nash_gram(M, max_iter=max_iter, tol=tol, step_tol=step_tol, init=init, method=method, polish=polish)


def _nash_gram(M, *, max_iter, tol, step_tol, init, method, polish):
    _check_finite(M, "nash_weights")
    k = len(M)
    zero = [i for i in range(k) if M[i, i] <= 0.0]
    if zero:
        raise ValueError(f"nash_weights: gradient column(s) {zero} are zero, so GᵀGΛ = 1/Λ has no solution; drop those players.")
    s = float(np.linalg.norm(M))
    Mt = M / s
    beta = np.ones(k) if init is None else np.asarray(init, dtype=np.float64).reshape(-1)
    if beta.shape != (k,) or not np.all(np.isfinite(beta)) or np.any(beta <= 0):
        raise ValueError(f"nash_weights: 'init' must hold {k} positive finite numbers. Got {init!r} instead.")
    info: dict[str, Any] = {"start": "ones" if init is None else "init", "polished": False}
    n_iter, stop = 0, "max_iter"
    if method == "newton":
        beta, n_iter = _newton(Mt, beta, max_iter=200, tol=1e-12)
        stop = "newton"
    else:
        if np.any(Mt @ beta <= 0):
            beta, _ = _newton(Mt, beta, max_iter=200, tol=0.0, until_feasible=True)
            info["start"] = "newton"
        for n_iter in range(1, max_iter + 1):
            new = _ccp_step(Mt, beta)
            delta = float(np.linalg.norm(new - beta))
            beta = new
            if np.linalg.norm(Mt @ beta - 1.0 / beta) < tol:
                stop = "tol"
                break
            if delta < step_tol:
                stop = "step"
                break
        if polish and _residual(Mt, beta) > 1e-10:
            beta, _ = _newton(Mt, beta, max_iter=200, tol=1e-12)
            info["polished"] = True
    lam = beta / math.sqrt(s)
    info.update({
        "lambda_normalised": beta, "scale": s, "residual": _residual(M, lam),
        "residual_nash_mtl": float(np.linalg.norm(Mt @ beta - 1.0 / beta)), "n_iter": n_iter, "stop": stop,
    })
    return lam, info


def nash_residual(G: torch.Tensor | np.ndarray, lambdas: Sequence[float] | np.ndarray) -> float:
    """The reference check of eq. 7: ``max_i |Λ_i (GᵀGΛ)_i − 1|`` (0 iff ``(GᵀGΛ)_i = 1/Λ_i`` for all i).

    Example:
        >>> nash_residual(torch.tensor([[2.0], [0.0]]), [0.5])
        0.0
    """
    G_t = torch.as_tensor(G)
    M = _gram([G_t[:, i] for i in range(G_t.shape[1])])
    return _residual(M, np.asarray(lambdas, dtype=np.float64))


# -- the combined direction and its diagnostics ---------------------------------------------------------------
def _direction(vectors: Sequence[torch.Tensor], lambdas: Sequence[float]) -> torch.Tensor:
    dtype = torch.promote_types(vectors[0].dtype, torch.float32)
    out = torch.zeros(vectors[0].numel(), dtype=dtype, device=vectors[0].device)
    for lam, v in zip(lambdas, vectors):
        if lam != 0.0:
            out.add_(v.to(dtype), alpha=float(lam))
    return out


def _diagnostics(M: np.ndarray, lambdas: Sequence[float], method: str, fallback: str | None) -> dict[str, Any]:
    """Cosines, weights and contribution norms, all from the Gram matrix (no extra pass over the vectors)."""
    lam = np.asarray(lambdas, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
    norm_g = math.sqrt(max(float(lam @ M @ lam), 0.0))
    proj = M @ lam  # g·g_i
    cos_g = [float(proj[i] / (norm_g * norms[i])) if norm_g > 0 and norms[i] > 0 else None for i in range(len(M))]
    diag: dict[str, Any] = {"method": method, "lambdas": lam.tolist(), "norm_g": norm_g, "fallback": fallback}
    if len(M) == 2:
        contrib_p, contrib_e = abs(lam[0]) * norms[0], abs(lam[1]) * norms[1]
        diag.update({
            "lambda_p": float(lam[0]), "lambda_e": float(lam[1]),
            "cos_pe": float(np.clip(M[0, 1] / (norms[0] * norms[1]), -1, 1)) if norms.all() else None,
            "cos_gp": cos_g[0], "cos_ge": cos_g[1], "norm_p": float(norms[0]), "norm_e": float(norms[1]),
            "norm_ratio": float(contrib_p / contrib_e) if contrib_e > 0 else None,
        })
    else:
        diag.update({"norms": norms.tolist(), "cos_g": cos_g})
    return diag


def bargain(
    grads: Sequence[Grad],
    *,
    eps: float = 1e-8,
    max_iter: int = 20,
    tol: float = 1e-3,
    init: Sequence[float] | None = None,
) -> tuple[torch.Tensor, list[float], dict[str, Any]]:
    """The Nash bargaining direction ``G Λ`` of the players' gradients (NaKE Algorithm 1; Nash-MTL).

    K = 2 (``grads = [g_p, g_e]``) uses the closed form :func:`nash_two`; K ≥ 3 uses
    :func:`nash_weights` (``max_iter``, ``tol``, ``init`` are passed on), after giving weight 0 to any
    player whose norm is ≤ eps·(largest norm) (``fallback = "zero_players"``).

    Args:
        grads: one gradient per player, each a tensor (flattened) or a list of per-parameter tensors.

    Returns:
        ``(direction, lambdas, diagnostics)``: the 1-D direction Σ λ_i g_i, the weights, and the
        diagnostics record (module docstring of :mod:`kedit.runs.nash_plots` documents the keys):
        ``method="nake"``, ``lambdas``, ``norm_g``, ``fallback``; for K = 2 also ``lambda_p``,
        ``lambda_e``, ``cos_pe`` = cos(g_p, g_e), ``cos_gp`` = cos(g, g_p), ``cos_ge`` = cos(g, g_e),
        ``norm_p``, ``norm_e``, ``norm_ratio`` = ‖λ_p g_p‖/‖λ_e g_e‖ (1 for the closed form); for K ≥ 3
        ``norms``, ``cos_g`` and the solver's ``residual``. Undefined cosines/ratios are None.

    Raises:
        NonFiniteError: a gradient holds NaN/inf.
    """
    vectors = _vectors(grads, "bargain")
    M = _gram(vectors)
    _check_finite(M, "bargain")
    if len(vectors) == 2:
        lam_p, lam_e, info = _nash_two_gram(M, eps)
        lambdas, fallback, extra = [lam_p, lam_e], info["fallback"], {}
    else:
        norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
        keep = [i for i in range(len(M)) if norms[i] > eps * norms.max()] if norms.max() > 0 else []
        lambdas, fallback, extra = [0.0] * len(M), None, {"residual": None}
        if len(keep) < len(M):
            fallback = "zero_players"
            _report("zero_players", f"Nash bargaining: players {sorted(set(range(len(M))) - set(keep))} have ~0 "
                                    "gradients; they get weight 0 and the others bargain alone.")
        if keep:
            sub_init = None if init is None else [init[i] for i in keep]
            lam, info = _nash_gram(M[np.ix_(keep, keep)], max_iter=max_iter, tol=tol, step_tol=1e-6,
                                   init=sub_init, method="ccp", polish=True)
            for i, value in zip(keep, lam):
                lambdas[i] = float(value)
            extra = {"residual": info["residual"]}
    lambdas = [float(x) for x in lambdas]
    diag = _diagnostics(M, lambdas, "nake", fallback)
    diag.update(extra)
    return _direction(vectors, lambdas), lambdas, diag


def fixed_weights(
    grads: Sequence[Grad], weights: Sequence[float], *, method: str = "fixed"
) -> tuple[torch.Tensor, list[float], dict[str, Any]]:
    """``Σ w_i g_i`` with fixed weights and the same diagnostics as :func:`bargain` (NaKE Figure 4:
    λ_e = 1, λ_p ∈ {1, 2, 5, 10}; pass ``weights=[λ_p, λ_e]``).

    Example:
        >>> d, lam, diag = fixed_weights([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [5.0, 1.0])
        >>> d.tolist(), diag["norm_ratio"], diag["method"]
        ([5.0, 1.0], 5.0, 'fixed')
    """
    vectors = _vectors(grads, "fixed_weights")
    weights = [float(w) for w in weights]
    if len(weights) != len(vectors) or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"fixed_weights: 'weights' must hold {len(vectors)} finite numbers (one per gradient). Got {weights!r}.")
    M = _gram(vectors)
    _check_finite(M, "fixed_weights")
    return _direction(vectors, weights), weights, _diagnostics(M, weights, method, None)


def plain_sum(grads: Sequence[Grad]) -> tuple[torch.Tensor, list[float], dict[str, Any]]:
    """UnKE's ``g_p + g_e`` (all weights 1; spec/methods.md §7) with the diagnostics of :func:`bargain`,
    labelled ``method="unke"``."""
    return fixed_weights(grads, [1.0] * len(grads), method="unke")
