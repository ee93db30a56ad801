"""Closed-form writers against brute force, in float64 on random matrices (spec/methods.md §2–§4).

Notation as in ``kedit.stages.writers``: W (d_v, d_k), keys K (d_k, n) as columns, residuals
R (d_v, n), C0 (d_k, d_k).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kedit.errors import NonFiniteError
from kedit.stages.writers import alphaedit_delta, memit_delta, null_space_projector, rome_delta, safe_solve
from kedit.stats.second_moment import LayerMoment, value_moments

F64 = torch.float64
FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread (two threads fight under a shared 2-core load)."""


def randn(g: torch.Generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def orthonormal(g: torch.Generator, d: int) -> torch.Tensor:
    Q, _ = torch.linalg.qr(randn(g, d, d))
    return Q


def lstsq_rows(A_cols: torch.Tensor, B_cols: torch.Tensor) -> torch.Tensor:
    """The X minimising ‖X A − B‖² (A (p, m), B (q, m)) via lstsq on the transposed system."""
    return torch.linalg.lstsq(A_cols.T, B_cols.T).solution.T


# -- MEMIT ---------------------------------------------------------------------------------------
@FAST
@given(d_k=st.integers(2, 12), d_v=st.integers(1, 8), n=st.integers(1, 6), extra=st.integers(3, 10),
       lam=st.sampled_from([1e-2, 1.0, 15.0, 1e3]), seed=st.integers(0, 2**31 - 1))
def test_memit_delta_is_the_least_squares_minimiser(d_k, d_v, n, extra, lam, seed):
    """Δ = argmin ‖ΔK − R‖² + λ‖ΔK0‖², i.e. lstsq of Δ [K, √λ K0] ≈ [R, 0], with C0 = K0 K0ᵀ exactly."""
    g = torch.Generator().manual_seed(seed)
    K, R, K0 = randn(g, d_k, n), randn(g, d_v, n), randn(g, d_k, d_k + extra)  # K0 full row rank
    C0 = K0 @ K0.T
    delta = memit_delta(K, R, C0, lam)
    brute = lstsq_rows(torch.cat([K, lam**0.5 * K0], 1), torch.cat([R, torch.zeros(d_v, K0.shape[1], dtype=F64)], 1))
    assert delta.dtype == F64 and delta.shape == (d_v, d_k)
    assert torch.allclose(delta, brute, rtol=1e-8, atol=1e-8)


def test_memit_delta_casts_inputs_to_float64():
    g = torch.Generator().manual_seed(0)
    K, R, K0 = randn(g, 6, 2), randn(g, 3, 2), randn(g, 6, 9)
    C0 = K0 @ K0.T
    low = memit_delta(K.float(), R.float(), C0.float(), 2.0)
    assert low.dtype == F64
    assert torch.allclose(low, memit_delta(K.float().double(), R.float().double(), C0.float().double(), 2.0))


# -- null-space projector ---------------------------------------------------------------------------
def spectrum_matrix(g, d: int, big: int, tiny_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """C0 = U diag(s) Uᵀ with ``big`` eigenvalues in [1, 10] and d − big below ``tiny_scale``; also U."""
    U = orthonormal(g, d)
    s = torch.cat([1 + 9 * torch.rand(big, generator=g, dtype=F64),
                   tiny_scale * torch.rand(d - big, generator=g, dtype=F64)])
    return U @ torch.diag(s) @ U.T, U


@FAST
@given(d=st.integers(2, 16), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_null_space_projector_absolute(d, data, seed):
    """P is symmetric, idempotent, of rank #(eigenvalues < threshold) and equals U₀U₀ᵀ."""
    big = data.draw(st.integers(0, d))
    g = torch.Generator().manual_seed(seed)
    C0, U = spectrum_matrix(g, d, big, 1e-4)
    P = null_space_projector(C0, 2e-2)
    U0 = U[:, big:]
    assert torch.allclose(P, P.T, atol=1e-12)
    assert torch.allclose(P @ P, P, atol=1e-10)
    assert int(torch.linalg.matrix_rank(P)) == d - big
    assert torch.allclose(P, U0 @ U0.T, atol=1e-9)


@FAST
@given(d=st.integers(3, 12), scale=st.sampled_from([1e-3, 1.0, 1e4]), seed=st.integers(0, 2**31 - 1))
def test_null_space_projector_relative(d, scale, seed):
    """relative=True thresholds eigenvalue / max eigenvalue, so scaling C0 does not change P."""
    g = torch.Generator().manual_seed(seed)
    big = d // 2
    C0, U = spectrum_matrix(g, d, big, 1e-4)
    P = null_space_projector(scale * C0, 1e-3, relative=True)
    U0 = U[:, big:]
    assert torch.allclose(P, U0 @ U0.T, atol=1e-9)
    # the absolute rule with the same number keeps a scale-dependent set
    absolute_rank = int((torch.linalg.eigvalsh(scale * C0) < 1e-3).sum())
    assert int(torch.linalg.matrix_rank(null_space_projector(scale * C0, 1e-3))) == absolute_rank


def test_null_space_projector_rejects_nan_statistics():
    g = torch.Generator().manual_seed(0)
    C0, _ = spectrum_matrix(g, 64, 32, 1e-4)
    C0[0, 0] = float("nan")
    try:
        P = null_space_projector(C0, 2e-2)
    except (NonFiniteError, torch.linalg.LinAlgError) as exc:
        assert isinstance(exc, NonFiniteError), f"raised {type(exc).__name__}, not NonFiniteError"
    else:
        raise AssertionError(f"no error; returned a projector of rank {int(torch.linalg.matrix_rank(P))}")


# -- AlphaEdit -------------------------------------------------------------------------------------
@FAST
@given(d_k=st.integers(3, 14), d_v=st.integers(1, 6), n=st.integers(1, 5), n_past=st.integers(0, 6),
       alpha=st.sampled_from([1e-2, 1.0, 10.0]), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_alphaedit_delta_invariants_and_brute_force(d_k, d_v, n, n_past, alpha, data, seed):
    """What is mathematically true of Δᵀ = M⁻¹ P K Rᵀ with M = P(KKᵀ + S) + αI (P a projector, α > 0):

    1. Normal equation: Δ [(KKᵀ + S)P + αI] = R Kᵀ P (transpose of M Δᵀ = P K Rᵀ; P symmetric).
    2. Δ = Δ P.  Apply (I − P) to M Δᵀ = P K Rᵀ: (I − P)P = 0 kills the first term of M and the right
       side, leaving α (I − P) Δᵀ = 0, so (I − P) Δᵀ = 0 whenever α > 0.
    3. Hence Δ K0 = Δ P K0 = 0 for every preserved key K0 with P K0 = 0, i.e. K0 ∈ range(I − P) =
       span of the large-eigenvalue directions of C0 (where the keys of preserved knowledge live).
    4. Brute force: AlphaEdit minimises ‖Δ'P K − R‖² + ‖Δ'P Kp‖² + α‖Δ'P‖² over Δ' (S = Kp Kpᵀ).
       With P = U₀U₀ᵀ write Δ'P = X U₀ᵀ, X = Δ'U₀ (‖Δ'P‖ = ‖X‖): a ridge problem in X, solved by
       lstsq on X [U₀ᵀK, U₀ᵀKp, √α I] ≈ [R, 0, 0]; its normal equation is item 1, so Δ = X U₀ᵀ.
    """
    r = data.draw(st.integers(1, d_k))  # dimension of the null space kept by P
    g = torch.Generator().manual_seed(seed)
    U = orthonormal(g, d_k)
    U0 = U[:, d_k - r:]
    P = U0 @ U0.T
    K, R = randn(g, d_k, n), randn(g, d_v, n)
    Kp = randn(g, d_k, n_past)
    S = Kp @ Kp.T if n_past else None
    delta = alphaedit_delta(K, R, P, S, alpha)
    eye = torch.eye(d_k, dtype=F64)
    KK = K @ K.T + (S if S is not None else 0)
    assert torch.allclose(delta @ (KK @ P + alpha * eye), R @ K.T @ P, rtol=1e-8, atol=1e-8)  # 1
    assert torch.allclose(delta, delta @ P, atol=1e-9)  # 2
    K0 = U[:, : d_k - r] @ randn(g, d_k - r, 7)  # keys with P K0 = 0
    assert torch.allclose(delta @ K0, torch.zeros(d_v, 7, dtype=F64), atol=1e-8)  # 3
    A = torch.cat([U0.T @ K, U0.T @ Kp, alpha**0.5 * torch.eye(r, dtype=F64)], 1)
    B = torch.cat([R, torch.zeros(d_v, n_past + r, dtype=F64)], 1)
    brute = lstsq_rows(A, B) @ U0.T
    assert torch.allclose(delta, brute, rtol=1e-8, atol=1e-8)  # 4


def test_alphaedit_leaves_preserved_keys_of_a_low_rank_c0_alone():
    """End to end: C0 = K0K0ᵀ/m + εI (low rank + tiny eigenvalues); P from the projector; Δ K0 ≈ 0."""
    g = torch.Generator().manual_seed(3)
    d_k, rank, m = 24, 10, 200
    K0 = randn(g, d_k, rank) @ randn(g, rank, m)  # preserved keys span a 10-dim subspace
    C0 = K0 @ K0.T / m + 1e-6 * torch.eye(d_k, dtype=F64)
    P = null_space_projector(C0, 1e-3)
    assert int(torch.linalg.matrix_rank(P)) == d_k - rank
    K, R = randn(g, d_k, 4), randn(g, 5, 4)
    delta = alphaedit_delta(K, R, P, None, 1.0)
    assert delta.abs().max() > 1e-2  # a real edit ...
    assert (delta @ K0).abs().max() < 1e-8 * K0.abs().max()  # ... invisible to the preserved keys


# -- ROME --------------------------------------------------------------------------------------------
@FAST
@given(d_k=st.integers(2, 12), d_v=st.integers(1, 8), use_c0=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_rome_delta_with_fix_maps_k_star_to_z(d_k, d_v, use_c0, seed):
    """rome_fix (k_cur None): (W + Δ) k* = z, Δ has rank one and equals the closed form of §2."""
    g = torch.Generator().manual_seed(seed)
    W, k, z = randn(g, d_v, d_k), randn(g, d_k), randn(g, d_v)
    K0 = randn(g, d_k, d_k + 5)
    C0 = K0 @ K0.T if use_c0 else None
    delta = rome_delta(z, W, k, C0)
    assert torch.allclose((W + delta) @ k, z, rtol=1e-10, atol=1e-10)
    assert int(torch.linalg.matrix_rank(delta)) == 1 or torch.allclose(z, W @ k)
    u = torch.linalg.solve(C0, k) if use_c0 else k
    closed = torch.outer(z - W @ k, u) / torch.dot(k, u)
    assert torch.allclose(delta, closed, rtol=1e-8, atol=1e-10)


@FAST
@given(d_k=st.integers(2, 12), d_v=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_rome_delta_original_code_path(d_k, d_v, seed):
    """Without the fix (bare-prompt k_cur, o_cur given): Δ k_cur = z − o_cur; rank one; u ∝ C0⁻¹k*."""
    g = torch.Generator().manual_seed(seed)
    W, k_star, k_cur, z, o_cur = randn(g, d_v, d_k), randn(g, d_k), randn(g, d_k), randn(g, d_v), randn(g, d_v)
    K0 = randn(g, d_k, d_k + 5)
    C0 = K0 @ K0.T
    delta = rome_delta(z, W, k_star, C0, k_cur=k_cur, o_cur=o_cur)
    assert torch.allclose(delta @ k_cur, z - o_cur, rtol=1e-8, atol=1e-8 * (1 + delta.abs().max().item()))
    assert int(torch.linalg.matrix_rank(delta)) == 1
    u = torch.linalg.solve(C0, k_star)
    row = delta[torch.argmax(delta.abs().sum(1))]
    assert torch.allclose(row / row.norm() * torch.sign(row @ u), u / u.norm(), atol=1e-8)


# -- safe_solve ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("A", [torch.zeros(3, 3, dtype=F64), torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=F64)],
                         ids=["zeros", "rank-deficient"])
def test_safe_solve_singular_raises(A):
    with pytest.raises(NonFiniteError, match="singular") as info:
        safe_solve(A, torch.ones(A.shape[0], 1, dtype=F64), "test system")
    assert "test system" in str(info.value) and str(tuple(A.shape)) in str(info.value)


def test_safe_solve_nonfinite_solution_raises():
    A = torch.eye(2, dtype=F64)
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        safe_solve(A, torch.tensor([[float("nan")], [1.0]], dtype=F64), "nan rhs")


def test_safe_solve_solves():
    g = torch.Generator().manual_seed(0)
    A = randn(g, 5, 5) + 5 * torch.eye(5, dtype=F64)
    B = randn(g, 5, 2)
    assert torch.allclose(A @ safe_solve(A, B, "ok"), B, atol=1e-12)


# -- statistics ------------------------------------------------------------------------------------------
@FAST
@given(d_k=st.integers(1, 10), n=st.integers(1, 60), chunks=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_layer_moment_streaming_equals_one_shot(d_k, n, chunks, seed):
    """Adding keys in chunks (any batch shape) gives K Kᵀ / n; merge and state_dict round trips agree."""
    g = torch.Generator().manual_seed(seed)
    K = randn(g, d_k, n)  # columns are keys
    stat = LayerMoment.empty(d_k)
    for i, part in enumerate(torch.tensor_split(K.T, chunks)):  # (m, d_k) rows
        stat.add(part.reshape(1, -1, d_k) if i % 2 else part)  # (batch, seq, d_k) shapes flatten too
    assert stat.count == n
    assert torch.allclose(stat.moment(), K @ K.T / n, rtol=1e-12, atol=1e-12)
    a, b = LayerMoment.empty(d_k), LayerMoment.empty(d_k)
    a.add(K.T[: n // 2])
    b.add(K.T[n // 2:])
    a.merge(b)
    assert a.count == n and torch.allclose(a.moment(), K @ K.T / n, rtol=1e-12, atol=1e-12)
    again = LayerMoment.from_state_dict(stat.state_dict())
    assert again.count == n and torch.equal(again.moment(), stat.moment())


def test_layer_moment_promotes_float32_keys():
    g = torch.Generator().manual_seed(0)
    keys = randn(g, 9, 4).float()
    stat = LayerMoment.empty(4)
    stat.add(keys)
    assert stat.sum_kk.dtype == F64
    assert torch.equal(stat.sum_kk, keys.double().T @ keys.double())


def test_layer_moment_of_nothing_is_zero():
    assert torch.equal(LayerMoment.empty(3).moment(), torch.zeros(3, 3, dtype=F64))


@FAST
@given(d_k=st.integers(1, 10), d_v=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_value_moments(d_k, d_v, seed):
    """E[v kᵀ] = W C0 and E[v vᵀ] = W C0 Wᵀ for v = W k: equal to the moments of the mapped keys."""
    g = torch.Generator().manual_seed(seed)
    K, W = randn(g, d_k, 50), randn(g, d_v, d_k)
    C0 = K @ K.T / 50
    VK, VV = value_moments(C0, W.float())
    V = W.float().double() @ K
    assert VK.dtype == F64
    assert torch.allclose(VK, V @ K.T / 50, rtol=1e-10, atol=1e-10)
    assert torch.allclose(VV, V @ V.T / 50, rtol=1e-10, atol=1e-10)
    assert torch.allclose(VV, VV.T, atol=1e-12)
