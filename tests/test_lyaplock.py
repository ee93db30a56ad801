"""LyapLock: queue arithmetic, closed form vs brute force, and the queue's effect on a tiny model."""
from __future__ import annotations

import importlib
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kedit
from kedit.stages.lyaplock import lyaplock_delta, preservation_loss, queue_constants, queue_update
from kedit.stages.regularisers import prune_restrain
from kedit.stats.second_moment import value_moments
from kedit.testing.checks import cheap_config, tiny_requests, write_tiny_corpus
from kedit.testing.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


def test_queue_arithmetic_by_hand():
    a, z_min = queue_constants(D0=0.5, alpha=2.0)  # αD0 = 1
    assert (a, z_min) == (1.0, 1.0)
    # under budget: clipped at Z_min
    assert queue_update(1.0, 0.2, budget=1.0, a=1.0, b=0.0, Z_min=1.0) == 1.0
    # D = 2·budget: the weight a·Z grows by exactly +1 (spec §6.3)
    assert queue_update(1.0, 2.0, budget=1.0, a=1.0, b=0.0, Z_min=1.0) == 2.0
    # a = 1/4, budget 16: Z = 4 + (32 − 16)/4 + 0.5 = 8.5
    assert queue_update(4.0, 32.0, budget=16.0, a=0.25, b=0.5, Z_min=4.0) == 8.5
    a, z_min = queue_constants(D0=3.0, alpha=60.0)
    assert math.isclose(a * z_min, 1.0) and math.isclose(z_min, math.sqrt(180.0))


def test_preservation_loss_is_mean_squared_error_over_keys():
    g = torch.Generator().manual_seed(0)
    K0 = torch.randn(6, 40, generator=g, dtype=torch.float64)
    W0 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    W = W0 + 0.1 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    C0 = K0 @ K0.T / 40
    VK, VV = value_moments(C0, W0)
    direct = ((W @ K0 - W0 @ K0) ** 2).sum() / 40
    assert math.isclose(preservation_loss(W, C0, VK, VV), float(direct), rel_tol=1e-9)
    assert abs(preservation_loss(W0, C0, VK, VV)) < 1e-10


@settings(max_examples=25, deadline=None)
@given(d_k=st.integers(2, 8), d_v=st.integers(1, 5), n=st.integers(1, 4), n_past=st.integers(0, 5),
       weight=st.sampled_from([0.5, 1.0, 7.0]), V=st.sampled_from([1.0, 2.0]), seed=st.integers(0, 10_000))
def test_closed_form_equals_brute_force(d_k, d_v, n, n_past, weight, V, seed):
    """Δ minimises V‖ΔK1 − R‖² + V‖(W+Δ)Kp − Vp‖² + w‖(W+Δ)K0 − V0‖² (stacked least squares)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    K, R, W, W0 = r(d_k, n), r(d_v, n), r(d_v, d_k), r(d_v, d_k)
    K0 = r(d_k, 3 * d_k)
    C0 = K0 @ K0.T
    VK = W0 @ C0
    Kp, Vp = r(d_k, n_past), r(d_v, n_past)
    S_KK, S_VK = (Kp @ Kp.T, Vp @ Kp.T) if n_past else (None, None)
    delta = lyaplock_delta(K, R, W, C0, VK, S_KK, S_VK, weight, V)
    # rows of Δ solve: min ‖Δ X − Y‖² with X = [√V K1, √V Kp, √w K0], Y = [√V R, √V (Vp − W Kp), √w (W0 − W) K0]
    X = torch.cat([math.sqrt(V) * K, math.sqrt(V) * Kp, math.sqrt(weight) * K0], 1)
    Y = torch.cat([math.sqrt(V) * R, math.sqrt(V) * (Vp - W @ Kp), math.sqrt(weight) * (W0 - W) @ K0], 1)
    brute = torch.linalg.lstsq(X.T, Y.T).solution.T
    assert torch.allclose(delta, brute, atol=1e-7, rtol=1e-6)


def test_low_alpha_raises_weight_and_pulls_loss_back(tmp_path):
    """With a deliberately low α the budget is violated, a·Z grows above 1, and the next batches'
    updates keep D(t) nearer the budget than the same stream edited without the queue (α huge)."""
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    requests = tiny_requests()

    def run(alpha):
        model, tok = tiny_model("llama")
        config = {**cheap_config("lyaplock", corpus), "alpha": alpha, "mom2_update_weight": 0.5}
        editor = kedit.Editor(model, tok, "lyaplock", config, cache_dir=tmp_path / "cache")
        weights = []
        for r in requests * 2:
            edits = editor.edit([r])
            weights.append(edits.meta["lyaplock"]["weight"])
        return editor, weights

    editor, weights = run(alpha=1.01)
    layer = editor.config.layers[-1]
    grown = [w[layer] / editor.config.mom2_update_weight for w in weights[1:]]
    assert max(grown) > 1.0, grown  # a·Z rose above its floor of 1
    assert float(editor.state[f"{layer}.Z"]) >= float(editor.state[f"{layer}.Z_min"])
    relaxed, relaxed_weights = run(alpha=1e6)
    assert all(abs(w[layer] / relaxed.config.mom2_update_weight - 1.0) < 1e-9 for w in relaxed_weights[1:])
    assert float(editor.state[f"{layer}.D"]) < float(relaxed.state[f"{layer}.D"])


#: host preset → (module whose writer the host calls, writer, its weight argument, config field of the base weight)
_HOST_WRITERS = {
    "lyaplock+memit": ("kedit.methods.memit", "memit_delta", "lam", "mom2_update_weight"),
    "lyaplock+rect": ("kedit.methods.memit", "memit_delta", "lam", "mom2_update_weight"),
    "lyaplock+prune": ("kedit.methods.memit", "memit_delta", "lam", "mom2_update_weight"),
    "lyaplock+alphaedit": ("kedit.methods.alphaedit", "alphaedit_delta", "alpha", "l2"),
}


@pytest.mark.parametrize("method", sorted(_HOST_WRITERS))
def test_queue_scales_the_weight_the_host_writer_uses(tmp_path, monkeypatch, method):
    """The host's closed form receives its base weight (λ; AlphaEdit: the ridge l2) in batch 1 and
    a·Z(t)·base after.  α = 0.5 puts the budget below D₀, so after batch 1
    a·Z = 1 + a²(D₀ − αD₀) = 1 + (1 − α)/α = 2 exactly (spec §6.3 constants): a host that ignored the
    queue would receive the base weight again and fail."""
    module_name, writer, argument, base_field = _HOST_WRITERS[method]
    module = importlib.import_module(module_name)
    original = getattr(module, writer)
    used: dict[int, float] = {}

    def spy(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        used[int(bound.arguments["what"].split()[-1])] = float(bound.arguments[argument])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, writer, spy)
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    editor = kedit.Editor(model, tok, method, {**cheap_config(method, corpus), "alpha": 0.5},
                          cache_dir=tmp_path / "cache")
    base = getattr(editor.config, base_field)
    for batch, request in enumerate(tiny_requests()):
        before = dict(editor.state)
        used.clear()
        reported = editor.edit([request]).meta["lyaplock"]["weight"]
        assert set(used) == set(editor.config.layers)
        for layer, weight in used.items():
            scale = 1.0 if batch == 0 else float(before[f"queue.{layer}.a"] * before[f"queue.{layer}.Z"])
            assert weight == pytest.approx(scale * base, rel=1e-12), (batch, layer)
            assert reported[layer] == weight
            if batch == 1:
                assert scale == pytest.approx(2.0, rel=1e-9)
    editor.revert()


def test_lyaplock_prune_restrains_after_the_last_batch(tmp_path):
    """``Editor.finalize`` reaches PRUNE's restraint through the queue mixin: afterwards the weights
    are W0 + ΔW′ with ΔW′ the restrained total update (spec §5)."""
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    editor = kedit.Editor(model, tok, "lyaplock+prune", cheap_config("lyaplock+prune", corpus),
                          cache_dir=tmp_path / "cache")
    for request in tiny_requests():
        editor.edit([request])
    names = [editor.adapter.weight_name(layer) for layer in editor.config.layers]
    to_out_in = editor.adapter.to_out_in
    W0 = {n: to_out_in(editor.ctx.base_weight(n)).double() for n in names}
    now = {n: to_out_in(model.get_parameter(n).detach()).double() for n in names}
    final = editor.finalize()
    assert final is not None and final.meta == {"finalize": True} and set(final.names()) == set(names)
    for n in names:
        expected = W0[n] + prune_restrain(now[n] - W0[n], W0[n])
        assert torch.allclose(to_out_in(model.get_parameter(n).detach()).double(), expected, atol=1e-5)
    editor.revert()


def test_prune_run_journals_the_restrained_weights(tmp_path, monkeypatch):
    """A sequential ``lyaplock+prune`` run with per-batch health ends with a ``finalize`` journal line:
    no request, D(t) of the restrained weights (the ones evaluated), and ``final_budget_ratio`` taken
    from it rather than from the last queue step.  The tiny edits never exceed σ_max(W0), so the
    restraint is replaced by ΔW′ = ΔW/2: D = tr(ΔW C0 ΔWᵀ) must then drop to exactly a quarter."""
    import json

    import kedit.methods.prune
    from kedit.runs.runner import run_bench

    monkeypatch.setattr(kedit.methods.prune, "prune_restrain", lambda delta, W0: delta / 2)

    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    summary = run_bench(model, tok, method="lyaplock+prune", requests=tiny_requests(), dataset="counterfact",
                        batch_size=1, mode="sequential", out_dir=tmp_path / "run",
                        config=cheap_config("lyaplock+prune", corpus), cache_dir=tmp_path / "cache",
                        progress=False, health_every_batch=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()]
    assert [r.get("finalize", False) for r in lines] == [False, False, False, True]
    last = lines[-1]
    assert last["n_requests"] == 0 and last["health"]["edits"] == 3
    before = lines[-2]["health"]["preservation_loss"]
    after = last["health"]["preservation_loss"]
    assert set(after) == set(before)
    for k in after:
        assert after[k] == pytest.approx(before[k] / 4, rel=1e-4)
    budget = {k: v for k, v in lines[-2]["info"]["lyaplock"]["budget"].items()}
    expected = max(after[k] / budget[k] for k in after)
    assert summary["lyaplock"]["final_budget_ratio"] == pytest.approx(expected)
    assert summary["lyaplock"]["before_finalize_budget_ratio"] == pytest.approx(
        max(lines[-2]["info"]["lyaplock"]["D"][k] / budget[k] for k in budget))
