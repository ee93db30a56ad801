"""Nash bargaining (NaKE eq. 7/8, Nash-MTL): closed form, general solver, fallbacks, diagnostics."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kedit.errors import NonFiniteError
from kedit.stages import bargaining
from kedit.stages.bargaining import (
    bargain,
    fixed_weights,
    flatten,
    nash_residual,
    nash_two,
    nash_weights,
    plain_sum,
    unflatten,
)

FAST = settings(max_examples=40, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    """One intra-op thread (the machine is shared); restored after the module."""


def _pair(d: int, theta: float, n_p: float, n_e: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g_p, g_e in R^d (float64) with norms n_p, n_e and angle theta."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=torch.float64))
    u, v = q[:, 0], q[:, 1]
    return n_p * u, n_e * (math.cos(theta) * u + math.sin(theta) * v)


pairs = dict(
    d=st.integers(2, 60),
    theta=st.floats(0.0, 0.99 * math.pi),
    log_p=st.floats(-3, 3),
    log_e=st.floats(-3, 3),
    seed=st.integers(0, 2**31 - 1),
)


@FAST
@given(**pairs)
def test_closed_form_satisfies_eq8(d, theta, log_p, log_e, seed):
    g_p, g_e = _pair(d, theta, 10**log_p, 10**log_e, seed)
    lp, le, info = nash_two(g_p, g_e)
    dot = float(g_p @ g_e)
    # eq. 8: λ_p² ‖g_p‖² + λ_p λ_e g_pᵀg_e = 1 and λ_e² ‖g_e‖² + λ_p λ_e g_pᵀg_e = 1
    assert abs(lp**2 * float(g_p @ g_p) + lp * le * dot - 1.0) < 1e-6
    assert abs(le**2 * float(g_e @ g_e) + lp * le * dot - 1.0) < 1e-6
    assert info["fallback"] is None and lp > 0 and le > 0
    # equal contributions and ‖g*‖ = √2
    direction, _, diag = bargain([g_p, g_e])
    assert diag["norm_ratio"] == pytest.approx(1.0, rel=1e-9)
    assert float(direction.norm()) == pytest.approx(math.sqrt(2.0), rel=1e-6)


@FAST
@given(**{**pairs, "theta": st.floats(0.0, 0.9 * math.pi)})
def test_general_solver_matches_closed_form(d, theta, log_p, log_e, seed):
    """nash_weights returns Λ for the ORIGINAL G, equal to the closed form; its normalised solution β
    (of GᵀG/s · β = 1/β, s = ‖GᵀG‖_F, Nash-MTL's scale) equals √s · Λ."""
    g_p, g_e = _pair(d, theta, 10**log_p, 10**log_e, seed)
    closed = np.array(nash_two(g_p, g_e)[:2])
    G = torch.stack([g_p, g_e], dim=1)
    s = float(torch.linalg.matrix_norm(G.T @ G))
    for method in ("ccp", "newton"):
        lam, info = nash_weights(G, method=method)
        np.testing.assert_allclose(lam, closed, rtol=1e-6)
        np.testing.assert_allclose(info["lambda_normalised"], math.sqrt(s) * closed, rtol=1e-6)
        assert info["scale"] == pytest.approx(s)
        assert info["residual"] < 1e-8


def test_orthogonal_gradients_contribute_equal_norms():
    g_p = torch.tensor([3.0, 0.0, 0.0])
    g_e = torch.tensor([0.0, 0.25, 0.0])
    direction, (lp, le), diag = bargain([g_p, g_e])
    assert lp == pytest.approx(1 / 3) and le == pytest.approx(4.0)
    assert float((lp * g_p).norm()) == pytest.approx(float((le * g_e).norm())) == pytest.approx(1.0)
    assert diag["norm_ratio"] == pytest.approx(1.0)
    assert diag["cos_pe"] == pytest.approx(0.0)
    assert diag["cos_gp"] == pytest.approx(1 / math.sqrt(2)) and diag["cos_ge"] == pytest.approx(1 / math.sqrt(2))
    assert torch.allclose(direction, torch.tensor([1.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    "g_p, g_e, kind, lambdas",
    [
        (torch.zeros(4), torch.tensor([0.0, 2.0, 0.0, 0.0]), "zero_g_p", (0.0, 0.5)),
        (torch.tensor([4.0, 0.0, 0.0, 0.0]), torch.zeros(4), "zero_g_e", (0.25, 0.0)),
        (torch.tensor([4.0, 0.0, 0.0, 0.0]), torch.tensor([1e-12, 0.0, 0.0, 0.0]), "zero_g_e", (0.25, 0.0)),
        (torch.zeros(4), torch.zeros(4), "zero_both", (0.0, 0.0)),
    ],
)
def test_zero_gradient_fallbacks(g_p, g_e, kind, lambdas):
    direction, got, diag = bargain([g_p, g_e])
    assert diag["fallback"] == kind
    assert got == pytest.approx(list(lambdas))
    assert torch.isfinite(direction).all()
    expected_norm = 0.0 if kind == "zero_both" else 1.0
    assert float(direction.norm()) == pytest.approx(expected_norm)


def test_opposed_gradients_clip_and_stay_finite(monkeypatch, caplog):
    monkeypatch.setattr(bargaining, "_REPORTED", set())
    g = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="kedit.stages.bargaining"):
        for _ in range(3):
            direction, (lp, le), diag = bargain([g, -g])
    assert diag["fallback"] == "opposed" and diag["cos_pe"] == pytest.approx(-1.0)
    assert math.isfinite(lp) and math.isfinite(le) and torch.isfinite(direction).all()
    assert lp == pytest.approx(1 / (float(g.norm()) * math.sqrt(1e-8)))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "opposed" in r.getMessage()]
    assert len(warnings) == 1  # once per kind


@pytest.mark.parametrize("bad, name", [(float("nan"), "g_e"), (float("inf"), "g_e")])
def test_non_finite_gradient_raises_naming_it(bad, name):
    g_e = torch.ones(5)
    g_e[2] = bad
    with pytest.raises(NonFiniteError, match=name):
        bargain([torch.ones(5), g_e])
    with pytest.raises(NonFiniteError, match=name):
        nash_two(torch.ones(5), g_e)


@FAST
@given(k=st.integers(3, 5), extra=st.integers(0, 20), seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3, 3))
def test_general_solver_three_or_more_players(k, extra, seed, log_scale):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(k + extra, k, generator=gen, dtype=torch.float64) * 10**log_scale
    G = G * torch.rand(k, generator=gen, dtype=torch.float64).add(0.1)  # unequal norms
    lam, info = nash_weights(G)
    assert np.all(lam > 0)
    np.testing.assert_allclose((G.T @ G).numpy() @ lam, 1.0 / lam, rtol=1e-6)  # GᵀGΛ = 1/Λ
    assert nash_residual(G, lam) < 1e-8 and info["residual"] < 1e-8
    # warm start from the previous normalised solution lands on the same point at once
    again, info2 = nash_weights(G, init=info["lambda_normalised"])
    np.testing.assert_allclose(again, lam, rtol=1e-8)
    assert info2["n_iter"] <= 1
    # bargain uses the same weights and returns G Λ
    direction, lambdas, diag = bargain([G[:, i] for i in range(k)])
    np.testing.assert_allclose(lambdas, lam, rtol=1e-6)
    torch.testing.assert_close(direction, G @ torch.as_tensor(lam), rtol=1e-6, atol=1e-9)
    assert float(direction.norm()) == pytest.approx(math.sqrt(k), rel=1e-6)  # ‖GΛ‖² = ΛᵀGᵀGΛ = K
    assert diag["residual"] < 1e-8


def test_general_solver_zero_column_and_bargain_drops_it():
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    with pytest.raises(ValueError, match="zero"):
        nash_weights(G)
    direction, lambdas, diag = bargain([G[:, 0], G[:, 1], G[:, 2]])
    assert diag["fallback"] == "zero_players"
    assert lambdas == pytest.approx([1.0, 0.0, 0.5])


def test_flatten_unflatten_round_trip_and_per_parameter_lists():
    params = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 1, 2)]
    vec = flatten(params)
    assert vec.shape == (21,)
    for a, b in zip(unflatten(vec, params), params):
        assert a.shape == b.shape and torch.equal(a, b)
    with pytest.raises(ValueError, match="21 elements"):
        unflatten(torch.zeros(20), params)
    g_p = [torch.ones(3, 4), torch.zeros(5), torch.zeros(2, 1, 2)]
    g_e = [torch.zeros(3, 4), torch.ones(5), torch.zeros(2, 1, 2)]
    direction, _, diag = bargain([g_p, g_e])
    assert direction.shape == (21,) and diag["cos_pe"] == 0.0


def test_fixed_weights_and_plain_sum_share_the_diagnostics():
    g_p = torch.tensor([2.0, 0.0])
    g_e = torch.tensor([1.0, 1.0])
    d_fix, lam_fix, diag_fix = fixed_weights([g_p, g_e], [5.0, 1.0])
    d_sum, lam_sum, diag_sum = plain_sum([g_p, g_e])
    _, _, diag_nash = bargain([g_p, g_e])
    assert torch.equal(d_fix, 5 * g_p + g_e) and torch.equal(d_sum, g_p + g_e)
    assert lam_sum == [1.0, 1.0] and diag_sum["method"] == "unke" and diag_fix["method"] == "fixed"
    assert diag_nash["method"] == "nake"
    assert diag_fix["norm_ratio"] == pytest.approx(5 * 2 / math.sqrt(2))
    assert set(diag_fix) == set(diag_sum) == set(diag_nash)
    for key in ("cos_pe", "cos_gp", "cos_ge", "lambda_p", "lambda_e", "norm_ratio"):
        assert isinstance(diag_nash[key], float)
    assert diag_sum["cos_gp"] == pytest.approx(float((d_sum @ g_p) / (d_sum.norm() * g_p.norm())))
    with pytest.raises(ValueError, match="2 finite numbers"):
        fixed_weights([g_p, g_e], [1.0])


def test_direction_dtype_and_float32_inputs():
    g_p = torch.randn(8, dtype=torch.bfloat16)
    g_e = torch.randn(8, dtype=torch.bfloat16)
    direction, _, _ = bargain([g_p, g_e])
    assert direction.dtype == torch.float32
    direction, _, _ = bargain([g_p.float(), g_e.float()])
    assert direction.dtype == torch.float32
