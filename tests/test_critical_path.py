"""Critical-path contrastive editing (PAC; spec/methods.md §11): scores, locator, masked updates, ledger.

Tiny random models only (the battery in test_methods.py covers the shared contract on every family).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kedit import Editor
from kedit.errors import ConfigError
from kedit.ledger import Ledger, SparseRows, load_edit_set, save_edit_set
from kedit.methods.critical_path import CriticalPathConfig, train_consecutive
from kedit.models.adapters import get_adapter
from kedit.stages import critical_path as cp
from kedit.testing.checks import tiny_requests
from kedit.testing.tiny import tiny_model

CHEAP = {"epochs": 3, "topk": 4}


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread (two threads fight under a shared 2-core load)."""


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _packing(model, **kwargs) -> cp.PathPacking:
    adapter = get_adapter(model)
    return cp.pack_paths(model, adapter, range(model.config.num_hidden_layers), **kwargs)


def _options(**kwargs) -> cp.PathOptions:
    return CriticalPathConfig(**{**CHEAP, **kwargs}).options()


def _node_entries(t: cp.NodeTensor, shape, j: int) -> list[tuple[int, ...]]:
    return [idx for idx in np.ndindex(*shape) if idx[t.dim] == j]


def _fd(model, loss_fn, name: str, idx: tuple[int, ...], h: float = 1e-4) -> float:
    """Central finite difference of ``loss_fn()`` w.r.t. one entry of parameter ``name``."""
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        old = p[idx].item()
        p[idx] = old + h
        plus = loss_fn().item()
        p[idx] = old - h
        minus = loss_fn().item()
        p[idx] = old
    return (plus - minus) / (2 * h)


# -- packing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, key_dim, value_dim, key_bias", [
    ("llama", 0, 1, False), ("gpt2", 1, 0, True), ("gptj", 0, 1, True), ("gpt_neox", 0, 1, True)])
def test_packing_follows_the_declared_layout(family, key_dim, value_dim, key_bias):
    model, _ = tiny_model(family)
    packing = _packing(model)
    params = dict(model.named_parameters())
    assert packing.n_neurons == 64 and packing.layers == (0, 1, 2, 3)
    for layer in packing.layers:
        keys, values = packing.of(layer, "key"), packing.of(layer, "value")
        assert [t.dim for t in keys] == [key_dim] + ([0] if key_bias else [])
        assert [t.dim for t in values] == [value_dim]
        for t in keys + values:
            assert params[t.name].shape[t.dim] == 64


def test_gate_and_output_bias_are_options():
    llama, _ = tiny_model("llama")
    assert not any("gate_proj" in t.name for t in _packing(llama).tensors)
    gated = _packing(llama, include_gate=True)
    assert [t.name.rsplit(".", 2)[-2] for t in gated.of(0, "key")] == ["up_proj", "gate_proj"]
    gpt2, _ = tiny_model("gpt2")
    assert [t.name for t in _packing(gpt2, out_bias=True).tensors if t.kind == "out_bias"][0] == \
        "transformer.h.0.mlp.c_proj.bias"


# -- scores --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_paper_scores_equal_finite_differences(family):
    """eq. 6 (as read here): mean over edits of Σ_node |θ · ∂L_e/∂θ|; ∂L_e/∂θ by central differences.

    Conv1D (GPT-2) and Linear-with-bias (GPT-NeoX) layouts.  Not Llama: its RMSNorm computes in float32
    even in a float64 model, which leaves finite differences at float32 precision."""
    model, tok = tiny_model(family)
    model = model.to(torch.float64)
    requests = tiny_requests()[:2]
    packing = _packing(model)
    rows = cp.encode_rows(tok, requests)
    scores = cp.paper_scores(model, packing, rows)
    params = dict(model.named_parameters())
    for kind, j in (("key", 5), ("value", 17)):
        expected = 0.0
        for e in range(len(requests)):
            for t in packing.of(2, kind):
                for idx in _node_entries(t, params[t.name].shape, j):
                    g = _fd(model, lambda: cp._loss(model, rows, [e]), t.name, idx)
                    expected += abs(params[t.name][idx].item() * g)
        expected /= len(requests)
        got = (scores.key if kind == "key" else scores.value)[2][j].item()
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-12), (kind, got, expected)
        assert got > 0


def test_reference_scores_equal_finite_differences():
    """Reference score: summed mini-batch gradients (here by finite differences for every entry of one
    layer), arranged [D, M], z-scored per row over M, |·|, mean over D (recomputed with numpy)."""
    model, tok = tiny_model("gpt2", hidden=8, intermediate=16, n_layers=2)
    model = model.to(torch.float64)
    packing = _packing(model)
    rows = cp.encode_rows(tok, tiny_requests())
    scores = cp.reference_scores(model, packing, rows, batch_size=2)
    params = dict(model.named_parameters())
    batches = [[0, 1], [2]]
    for kind, out in (("key", scores.key), ("value", scores.value)):
        t = packing.of(1, kind)[0]  # the weight (the c_fc bias does not enter the reference score)
        shape = params[t.name].shape
        G = np.zeros(tuple(shape))
        for idx in np.ndindex(*shape):
            G[idx] = sum(_fd(model, lambda b=b: cp._loss(model, rows, b), t.name, idx) for b in batches)
        DM = G if t.dim == 1 else G.T  # (D, M)
        z = (DM - DM.mean(1, keepdims=True)) / DM.std(1, ddof=1, keepdims=True)
        np.testing.assert_allclose(out[1].numpy(), np.abs(z).mean(0), rtol=1e-5, atol=1e-8)


def test_select_paths_top_and_bottom():
    s = torch.tensor([0.5, 3.0, 0.1, 2.0, 0.0, 1.0], dtype=torch.float64)
    sel = cp.select_paths(cp.NodeScores({0: s}, {0: -s}), topk=2, bottomk=1)
    assert sel.pos_key[0].tolist() == [1, 3] and sel.neg_key[0].tolist() == [4]
    assert sel.pos_value[0].tolist() == [2, 4] and sel.neg_value[0].tolist() == [1]


def test_contrastive_labels_are_the_original_argmax_at_target_positions():
    model, tok = tiny_model("gptj")
    rows = cp.contrastive_labels(model, cp.encode_rows(tok, tiny_requests()), batch_size=2)
    for ids, labels, y in zip(rows.ids, rows.labels, rows.original):
        with torch.no_grad():
            pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
        want = [-100] + [pred[t - 1] if labels[t] != -100 else -100 for t in range(1, len(ids))]
        assert y == want


# -- masked updates ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj"])
def test_only_selected_slices_change(family):
    """Every entry of every tensor outside T⁺ ∪ T⁻ of some assessment is bit-identical after apply."""
    model, tok = tiny_model(family)
    snap = _snapshot(model)
    packing = _packing(model)
    result = cp.train_paths(model, tok, get_adapter(model), tiny_requests(), packing, _options(eta=1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items()), "train_paths changed the model"
    editor = Editor(model, tok, "critical_path", {**CHEAP, "eta": 1})
    edit_set = editor.edit(tiny_requests())
    try:
        assert sorted(edit_set.deltas) == sorted(result.deltas)
        state = model.state_dict()
        for name, before in snap.items():
            after = state[name]
            if name not in edit_set.deltas:
                assert torch.equal(before, after), name
                continue
            delta = edit_set.deltas[name]
            assert isinstance(delta, SparseRows)
            t = next(t for t in packing.tensors if t.name == name)
            assert delta.dim == t.dim
            allowed = set()
            for sel in result.selections:
                allowed |= set(sel.nodes(t, "pos").tolist()) | set(sel.nodes(t, "neg").tolist())
            assert set(delta.index.tolist()) <= allowed, name
            outside = torch.ones(before.shape[t.dim], dtype=torch.bool)
            outside[delta.index] = False
            assert torch.equal(before.index_select(t.dim, outside.nonzero().flatten()),
                               after.index_select(t.dim, outside.nonzero().flatten())), name
    finally:
        editor.revert()


def test_negative_step_moves_the_negative_path_only(monkeypatch):
    """Alternating mode: between the T⁺ step and the end of the T⁻ step only T⁻ slices change."""
    model, tok = tiny_model("llama")
    packing = _packing(model)
    calls, seen = [], {}
    original_step = cp.MaskedAdam.step

    def recording_step(self, param, name, nodes, grad_rows):
        if len(calls) == len(packing.tensors):  # first call of the T⁻ step: every T⁺ step is done
            seen["after_pos"] = _snapshot(model)
        calls.append((name, nodes.clone()))
        original_step(self, param, name, nodes, grad_rows)

    monkeypatch.setattr(cp.MaskedAdam, "step", recording_step)
    result = cp.train_paths(model, tok, get_adapter(model), tiny_requests()[:1], packing,
                            _options(epochs=1, contrastive="alternating", early_stop_loss=0.0),
                            on_epoch_end=lambda epoch, info: seen.setdefault("after_neg", _snapshot(model)))
    sel = result.selections[0]
    assert len(calls) == 2 * len(packing.tensors)
    for (name, nodes), t in zip(calls[len(packing.tensors):], packing.tensors):
        assert name == t.name and torch.equal(nodes, sel.nodes(t, "neg"))
    by_name = {t.name: t for t in packing.tensors}
    for name, before in seen["after_pos"].items():
        after = seen["after_neg"][name]
        if name not in by_name:
            assert torch.equal(before, after), name
            continue
        t = by_name[name]
        changed = (before != after).flatten(1).any(1) if t.dim == 0 else (before != after).any(0)
        assert set(changed.nonzero().flatten().tolist()) <= set(sel.nodes(t, "neg").tolist()), name
        assert changed.any(), f"the T⁻ step did not move {name}"


def test_joint_objective_routes_each_term_to_its_path():
    """One joint step: T⁺ moves against ∇L(y*), T⁻ against ∇λL(y) (Adam's first step ≈ -lr·sign(g))."""
    model, tok = tiny_model("qwen2")
    packing = _packing(model)
    requests = tiny_requests()[:2]
    rows = cp.contrastive_labels(model, cp.encode_rows(tok, requests), batch_size=2)
    grads = {}
    for which in ("labels", "original"):
        grads[which] = cp._grads(model, packing, cp._loss(model, rows, [0, 1], which=which))
    opts = _options(epochs=1, shuffle=False, early_stop_loss=0.0)
    result = cp.train_paths(model, tok, get_adapter(model), requests, packing, opts)
    sel = result.selections[0]
    for t in packing.tensors:
        delta = result.deltas[t.name]
        for sign, which in (("pos", "labels"), ("neg", "original")):
            nodes = sel.nodes(t, sign)
            at = torch.searchsorted(delta.index, nodes)
            d = delta.values.index_select(t.dim, at)
            g = grads[which][t.name].index_select(t.dim, nodes)
            big = g.abs() > 1e-5
            assert torch.equal(torch.sign(d[big]), -torch.sign(g[big])), (t.name, sign)


def test_masked_adam_equals_torch_adam_on_a_fixed_mask():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=gen)
    nodes = torch.tensor([1, 4])
    ref = w.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    mine = w.clone()
    madam = cp.MaskedAdam(lr=1e-2)
    madam.activate(mine, "w", 0, nodes)
    for _ in range(5):
        g = torch.randn(6, 4, generator=gen)
        ref.grad = torch.zeros_like(g).index_copy_(0, nodes, g[nodes])
        opt.step()
        madam.step(mine, "w", nodes, g[nodes])
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-6, atol=1e-7)


def test_deselected_node_does_not_move_unlike_plain_adam():
    """The reference pitfall: masked gradients are zero but Adam's moments keep moving a node that left
    the selection.  MaskedAdam drops a leaving node's state, so it stays bit-identical."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, generator=gen)
    first, second = torch.tensor([0, 1, 4]), torch.tensor([2, 4])  # node 0 and 1 leave, 2 enters
    ref = w.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    mine = w.clone()
    madam = cp.MaskedAdam(lr=1e-2)
    madam.activate(mine, "w", 0, first)

    def both_step(nodes):
        g = torch.randn(6, 4, generator=gen)
        ref.grad = torch.zeros_like(g).index_copy_(0, nodes, g[nodes])
        opt.step()
        madam.step(mine, "w", nodes, g[nodes])

    both_step(first)
    both_step(first)
    frozen_rows, ref_rows = mine[[0, 1]].clone(), ref.detach()[[0, 1]].clone()
    madam.activate(mine, "w", 0, second)  # re-assessment: nodes 0 and 1 leave
    both_step(second)
    both_step(second)
    assert torch.equal(mine[[0, 1]], frozen_rows)  # deselected: bit-identical
    assert not torch.equal(ref.detach()[[0, 1]], ref_rows)  # plain Adam keeps moving them
    torch.testing.assert_close(mine[4], ref.detach()[4], rtol=1e-6, atol=1e-7)  # a staying node keeps its moments
    assert madam.state["w"]["t"].tolist() == [2, 4]  # node 2 has its own (fresh) step count
    with pytest.raises(ValueError, match="not all active"):
        madam.step(mine, "w", torch.tensor([0]), torch.zeros(1, 4))


def test_node_leaving_the_selection_is_frozen_during_training():
    """eta=1 re-assesses every epoch: within epoch e only the nodes selected at e move."""
    model, tok = tiny_model("gpt_neox")
    packing = _packing(model)
    snaps = [_snapshot(model)]
    result = cp.train_paths(model, tok, get_adapter(model), tiny_requests(), packing,
                            _options(epochs=6, eta=1, topk=2, lr=2e-2, early_stop_loss=0.0),
                            on_epoch_end=lambda epoch, info: snaps.append(_snapshot(model)))
    assert len(result.selections) == 6
    left = 0
    for e in range(1, 6):
        sel, prev = result.selections[e], result.selections[e - 1]
        for t in packing.tensors:
            active = set(sel.nodes(t, "pos").tolist()) | set(sel.nodes(t, "neg").tolist())
            left += len((set(prev.nodes(t, "pos").tolist()) | set(prev.nodes(t, "neg").tolist())) - active)
            before, after = snaps[e][t.name], snaps[e + 1][t.name]
            moved = (before != after)
            moved = moved.flatten(1).any(1) if (t.dim == 0 and moved.dim() > 1) else (
                moved if moved.dim() == 1 else moved.any(0))
            assert set(moved.nonzero().flatten().tolist()) <= active, (e, t.name)
    assert left > 0, "no node ever left the selection; the test would be vacuous"


# -- the preset ----------------------------------------------------------------------------------
def test_edit_raises_target_logprob_and_reverts_bit_exact(tmp_path, track):
    from kedit.eval import candidate_nll

    model, tok = tiny_model("llama")
    track(model)
    requests = tiny_requests()
    pairs = [(r.text, r.target_new) for r in requests]
    snap = _snapshot(model)
    before = candidate_nll(model, tok, pairs)
    editor = Editor(model, tok, "critical_path", {"epochs": 8, "lr": 3e-3})
    edit_set = editor.edit(requests)
    after = candidate_nll(model, tok, pairs)
    assert all(a < b for a, b in zip(after, before)), (before, after)
    edited = _snapshot(model)
    loaded = load_edit_set(save_edit_set(edit_set, tmp_path / "edit"))
    for name, delta in edit_set.deltas.items():
        other = loaded.deltas[name]
        assert isinstance(other, SparseRows) and other.dim == delta.dim
        assert torch.equal(other.index, delta.index) and torch.equal(other.values, delta.values)
    editor.revert()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items())
    ledger = Ledger(model)
    ledger.apply(loaded)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in edited.items())
    ledger.revert()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items())


def test_deterministic_and_batch_streams(track):
    model, tok = tiny_model("gpt2")
    track(model)
    a, _ = Editor(model, tok, "critical_path", CHEAP).compute(tiny_requests())
    b, _ = Editor(model, tok, "critical_path", CHEAP).compute(tiny_requests())
    assert sorted(a.deltas) == sorted(b.deltas)
    for name in a.deltas:
        assert torch.equal(a.deltas[name].index, b.deltas[name].index)
        assert torch.equal(a.deltas[name].values, b.deltas[name].values)
    editor = Editor(model, tok, "critical_path", CHEAP)  # one pass over a stream of batches
    first = editor.edit(tiny_requests()[:1])
    second = editor.edit(tiny_requests()[1:])
    assert len(editor.ledger.history) == 2 and first.deltas and second.deltas
    editor.revert()


def test_lambda_zero_makes_joint_and_alternating_equal():
    model, tok = tiny_model("mistral")
    packing = _packing(model)
    out = {mode: cp.train_paths(model, tok, get_adapter(model), tiny_requests(), packing,
                                _options(lam=0.0, contrastive=mode)) for mode in ("joint", "alternating")}
    for name, d in out["joint"].deltas.items():
        assert torch.equal(d.values, out["alternating"].deltas[name].values)
    with_neg = cp.train_paths(model, tok, get_adapter(model), tiny_requests(), packing, _options())
    neg = with_neg.selections[0].neg_key[0].item()
    assert neg in with_neg.deltas["model.layers.0.mlp.up_proj.weight"].index.tolist()


def test_adam_makes_the_update_invariant_to_positive_lambda():
    """Why λ = 0.1 and λ = 0.5 measure the same (docs/results.md): T⁻ rows only ever see λ·∇L(y), and
    Adam's step m̂/(√v̂+ε) does not change when a parameter's gradients are all scaled by one constant.
    λ matters only through ε, through a node that moves between T⁻ and T⁺, or a shared output bias."""
    model, tok = tiny_model("llama")
    packing = _packing(model)
    run = {lam: cp.train_paths(model, tok, get_adapter(model), tiny_requests(), packing,
                               _options(lam=lam, eta=CHEAP["epochs"])) for lam in (0.1, 0.5)}
    for name, d in run[0.1].deltas.items():
        other = run[0.5].deltas[name]
        assert torch.equal(d.index, other.index)
        torch.testing.assert_close(d.values, other.values, rtol=1e-2, atol=1e-6)  # ε: tiny grads
    neg = run[0.1].selections[0].neg_key[0].item()
    row = run[0.1].deltas["model.layers.0.mlp.up_proj.weight"]
    assert row.values[row.index.tolist().index(neg)].abs().max() > 0  # T⁻ did move, by the same amount


def test_reference_variant_with_gate_and_output_bias(track):
    model, tok = tiny_model("gptj")
    track(model)
    edit_set, _ = Editor(model, tok, "critical_path", {**CHEAP, "score": "reference", "contrastive": "alternating",
                                                      "out_bias": True}).compute(tiny_requests())
    bias = edit_set.deltas["transformer.h.0.mlp.fc_out.bias"]
    assert bias.index.tolist() == list(range(32))
    llama, ltok = tiny_model("llama")
    gated, _ = Editor(llama, ltok, "critical_path", {**CHEAP, "include_gate": True}).compute(tiny_requests())
    up, gate = gated.deltas["model.layers.1.mlp.up_proj.weight"], gated.deltas["model.layers.1.mlp.gate_proj.weight"]
    assert torch.equal(up.index, gate.index)


def test_train_consecutive_multi_epoch(track):
    model, tok = tiny_model("qwen2")
    track(model)
    snap = _snapshot(model)
    seen = []
    result = train_consecutive(model, tok, tiny_requests(), {"topk": 3, "lr": 3e-3, "early_stop_loss": 0.0},
                               epochs=4, on_epoch_end=lambda epoch, m: seen.append(epoch) or epoch * 10)
    assert seen == [0, 1, 2, 3] and [e["eval"] for e in result.epochs] == [0, 10, 20, 30]
    assert [e["assessed"] for e in result.epochs] == [True, False, True, False] and len(result.scores) == 2
    assert result.epochs[-1]["loss"] < result.epochs[0]["loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items())
    ledger = Ledger(model)
    ledger.apply(result.edit_set)
    ledger.revert()
    with pytest.raises(ConfigError, match="'epochs' parameter of train_consecutive"):
        train_consecutive(model, tok, tiny_requests(), epochs=0)


def test_node_importance_plot(tmp_path):
    from kedit.runs.path_plots import plot_node_importance

    model, tok = tiny_model("llama")
    result = cp.train_paths(model, tok, get_adapter(model), tiny_requests()[:1], _packing(model), _options(epochs=1))
    path = plot_node_importance(result.scores[0], tmp_path / "sub" / "nodes.png", selection=result.selections[0])
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, field_name", [
    ({"topk": 0}, "topk"), ({"bottomk": -1}, "bottomk"), ({"lam": -0.1}, "lam"), ({"lr": 0.0}, "lr"),
    ({"betas": [0.9]}, "betas"), ({"epochs": 0}, "epochs"), ({"eta": 0}, "eta"), ({"batch_size": 0}, "batch_size"),
    ({"score": "taylor"}, "score"), ({"contrastive": "both"}, "contrastive"), ({"layers": [1, 1]}, "layers"),
    ({"early_stop_loss": -1.0}, "early_stop_loss")])
def test_config_rejects_bad_values(changes, field_name):
    with pytest.raises(ConfigError, match=f"The '{field_name}' parameter of CriticalPathConfig"):
        CriticalPathConfig(**changes)


def test_config_errors_that_depend_on_the_model():
    model, tok = tiny_model("llama")
    with pytest.raises(ConfigError, match="exceeds the 64 FFN neurons"):
        Editor(model, tok, "critical_path", {"topk": 64, "bottomk": 1}).compute(tiny_requests())
    with pytest.raises(ConfigError, match=r"layer indices in \[0, 3\]"):
        Editor(model, tok, "critical_path", {"layers": [4]}).compute(tiny_requests())
    with pytest.raises(ConfigError, match="Unknown key"):
        CriticalPathConfig.from_dict({"top_k": 3})
