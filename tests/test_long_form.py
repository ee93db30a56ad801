"""Long-form editing stages: windows, Matryoshka weights, affinity, block replay, shifts, writers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kedit import EditRequest, Editor
from kedit.errors import ConfigError
from kedit.models.adapters import get_adapter, resolve_module
from kedit.stages.chat import encode_qa, encode_question
from kedit.stages.layer_fit import FitOptions, block_param_names, grouped_mse, layer_fit_deltas, masked_mse
from kedit.stages.layer_io import record_block, run_block
from kedit.stages.sequence_writer import memit_sequence_deltas, sequence_keys
from kedit.stages.shifts import ShiftedSequence, ShiftOptions, optimise_shift, shift_gradients
from kedit.stages.tokens import length_buckets
from kedit.stages.windows import (affinity_coefficients, affinity_scores, figure_weights, lookup_positions,
                                  matryoshka_weights, split_windows, window_weights)
from kedit.testing.checks import write_tiny_corpus
from kedit.testing.tiny import TINY_FAMILIES, tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


# -- windows and Matryoshka coefficients --------------------------------------------------------
def test_split_windows_hand_example():
    assert split_windows(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert split_windows(6, 3) == [(0, 3), (3, 6)]
    assert lookup_positions(10, [(0, 3), (3, 6)]) == [9, 12]
    with pytest.raises(ValueError, match="window size"):
        split_windows(5, 0)


@given(n_tok=st.integers(1, 40), size=st.integers(1, 12))
def test_windows_cover_answer_once(n_tok, size):
    windows = split_windows(n_tok, size)
    covered = [t for s, e in windows for t in range(s, e)]
    assert covered == list(range(n_tok))
    assert all(e - s == size for s, e in windows[:-1])


def test_window_weights_are_mean_over_window():
    # prompt of 4 tokens, answer of 5; window (2, 5) = answer tokens 2..4 predicted from positions 5..7
    w = window_weights(9, 4, (2, 5))
    assert w.tolist() == [0, 0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3]


@settings(max_examples=30)
@given(n=st.integers(1, 6), size=st.integers(1, 4), last=st.integers(1, 4), i_frac=st.floats(0, 0.999))
def test_matryoshka_vanilla_window_weights(n, size, last, i_frac):
    """Eq. 11 with λ ≡ 1: window m (≥ i) weighs (n−m+1)/(n−i+1) (1-based), over N_tok tokens."""
    last = min(last, size)
    n_tok = (n - 1) * size + last
    windows = split_windows(n_tok, size)
    i = int(i_frac * n)
    n_prompt = 3
    w = matryoshka_weights(n_prompt + n_tok, n_prompt, windows, i)
    tokens_from_i = n_tok - windows[i][0]
    for m, (s, e) in enumerate(windows):
        chunk = w[n_prompt + s - 1: n_prompt + e - 1]
        expected = 0.0 if m < i else (n - m) / (n - i) / tokens_from_i  # 0-based form of (n−m+1)/(n−i+1)
        assert torch.allclose(chunk, torch.full_like(chunk, expected))


def test_matryoshka_weights_with_coefficients_hand_example():
    windows = [(0, 2), (2, 4), (4, 6)]
    lam = [1.0, 0.5, 2.0]  # λ_0^0, λ_0^1, λ_0^2
    w = matryoshka_weights(8, 2, windows, 0, lam)
    # window m gets Σ_{j≥m} λ / 3, divided by 6 tokens
    expected = [(1 + 0.5 + 2) / 3 / 6] * 2 + [(0.5 + 2) / 3 / 6] * 2 + [2 / 3 / 6] * 2
    assert torch.allclose(w[1:7], torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="coefficients"):
        matryoshka_weights(8, 2, windows, 1, lam)


def test_affinity_coefficient_orders():
    scores = [0.9, 0.2]  # a_{i,i+1}, a_{i,i+2}
    assert affinity_coefficients(scores, "paper") == pytest.approx([1.0, 1.1, 1.8])
    # reference: the largest figure gets 1, the smallest 2 − a_{i,n}
    assert affinity_coefficients(scores, "reference") == pytest.approx([1.8, 1.1, 1.0])
    with pytest.raises(ValueError):
        affinity_coefficients(scores, "sideways")


def _windowed(family, question, answer):
    """A tiny model, its shiftable sequence after block 1 for question + answer, 3-token windows."""
    model, tok = tiny_model(family)
    enc = encode_qa(tok, question, answer, chat=False)
    windows = split_windows(enc.n_answer, 3)
    seq = ShiftedSequence(model, get_adapter(model), 1, enc.ids)
    return model, seq, enc, windows, lookup_positions(enc.n_prompt, windows)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_forward_gradients_equal_one_pass_each(family):
    """shift_gradients (one forward, prefix cache where it applies) = one full forward per weight vector."""
    model, seq, enc, windows, positions = _windowed(family, "Q: what?", "abcdefghij")
    n = len(enc.ids)
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(32, generator=g) * 0.1
    frozen = [(positions[0], torch.randn(32, generator=g) * 0.1)]
    weights = [figure_weights(n, enc.n_prompt, windows, 1, j) for j in range(1, len(windows))]
    shared = shift_gradients(seq, positions[1], delta, weights, weight_decay=1e-3, frozen_shifts=frozen)
    for w, got in zip(weights, shared):
        alone = shift_gradients(seq, positions[1], delta, [w], weight_decay=1e-3, frozen_shifts=frozen,
                                prefix_cache=False)[0]
        assert torch.allclose(got, alone, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(shared[0], shared[-1])  # the figures really differ


def test_affinity_scores_equal_direct_cosines():
    """Eq. 12 on a tiny model: the cosines equal a direct autograd computation at the same iterates."""
    model, seq, enc, windows, positions = _windowed("llama", "Q?", "abcdefgh")
    adapter = seq.adapter
    n = len(enc.ids)

    def gradients(delta, js):
        return shift_gradients(seq, positions[0], delta, [figure_weights(n, enc.n_prompt, windows, 0, j) for j in js],
                               weight_decay=1e-3)

    scores = affinity_scores(gradients, windows, 0, steps=2, lr=0.5, d=32)
    # direct: replay the same Adam iterates with a hand-written hook-based loss
    name = adapter.layer(1)
    h_norm = seq.h(positions[0]).norm().float()

    def direct_grad(delta, j):
        delta = delta.clone().requires_grad_(True)
        w = figure_weights(n, enc.n_prompt, windows, 0, j)

        def add(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            out = out.clone()
            out[0, positions[0]] = out[0, positions[0]] + delta
            return (out, *output[1:]) if isinstance(output, tuple) else out

        handle = dict(model.named_modules())[name].register_forward_hook(add)
        try:
            logits = model(input_ids=torch.tensor([enc.ids])).logits[0, :-1]
        finally:
            handle.remove()
        logp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(enc.ids[1:])[:, None])[:, 0]
        loss = -(w.float() * logp).sum() + 1e-3 * delta.norm() / h_norm ** 2
        return torch.autograd.grad(loss, [delta])[0]

    delta = torch.zeros(32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.5)
    sums = [0.0] * (len(windows) - 1)
    for _ in range(2):
        point = delta.detach().clone()
        g0 = direct_grad(point, 0)
        for k, j in enumerate(range(1, len(windows))):
            sums[k] += float(torch.nn.functional.cosine_similarity(g0.double(), direct_grad(point, j).double(), dim=0))
        opt.zero_grad()
        delta.grad = g0
        opt.step()
    assert scores == pytest.approx([s / 2 for s in sums], abs=1e-4)


# -- chat layout ---------------------------------------------------------------------------------
def test_chat_template_without_double_bos():
    _, tok = tiny_model("llama")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}U:{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}A:{% endif %}")
    ids = encode_question(tok, "hi?")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    enc = encode_qa(tok, "hi?", "yes")
    assert enc.ids[-1] == tok.eos_token_id and tok.decode(enc.answer[:-1]) == "yes"


# -- block replay and shifts ---------------------------------------------------------------------
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_block_replay_equals_model(family):
    model, tok = tiny_model(family)
    adapter = get_adapter(model)
    rows = [tok("hello there")["input_ids"], tok("a longer line of text")["input_ids"]]
    io = record_block(model, adapter, 1, rows, 0)
    with torch.no_grad():
        out = run_block(model, adapter, 1, io)
    real = io.mask.bool()
    assert torch.equal(out[real], io.outputs[real])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_record_block_stops_after_the_block_and_matches_the_full_forward(family):
    model, tok = tiny_model(family)
    adapter = get_adapter(model)
    rows = [tok("hello there")["input_ids"]]
    later = resolve_module(model, adapter.layer(2), adapter)
    calls = []
    handle = later.register_forward_hook(lambda *a: calls.append(1))
    try:
        io = record_block(model, adapter, 1, rows, 0)
    finally:
        handle.remove()
    assert calls == []  # layers above the block never ran
    with torch.no_grad():
        full = model(input_ids=torch.tensor(rows), output_hidden_states=True).hidden_states[2]
    assert torch.allclose(io.outputs, full, atol=1e-6)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f != "gpt2"])
def test_shift_prefix_cache_is_exact(family):
    model, tok = tiny_model(family)
    adapter = get_adapter(model)
    ids = tok("question? the answer is long enough")["input_ids"]
    seq = ShiftedSequence(model, adapter, 1, ids)
    w = window_weights(len(ids), 10, (0, len(ids) - 10))
    frozen = [(3, torch.randn(32, generator=torch.Generator().manual_seed(0)) * 0.1)]
    a = optimise_shift(seq, 9, w, ShiftOptions(steps=4, prefix_cache=True), frozen_shifts=frozen)
    b = optimise_shift(seq, 9, w, ShiftOptions(steps=4, prefix_cache=False), frozen_shifts=frozen)
    assert torch.allclose(a.delta, b.delta, atol=1e-5)
    assert a.loss == pytest.approx(b.loss, abs=1e-5)


def test_shift_lowers_answer_nll_and_respects_clamp():
    model, tok = tiny_model("qwen2")
    adapter = get_adapter(model)
    enc = encode_qa(tok, "Q?", "a b c", chat=False)
    seq = ShiftedSequence(model, adapter, 1, enc.ids)
    w = window_weights(len(enc.ids), enc.n_prompt, (0, enc.n_answer))
    res = optimise_shift(seq, enc.n_prompt - 1, w, ShiftOptions(steps=15, clamp_norm_factor=0.5))
    first = optimise_shift(seq, enc.n_prompt - 1, w, ShiftOptions(steps=1))
    assert res.loss < first.loss
    assert float(res.delta.norm()) <= 0.5 * float(res.h_init.norm()) + 1e-4


# -- writers -------------------------------------------------------------------------------------
def test_sequence_keys_split_lookup_and_other_positions():
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    rows = [tok("abcdef")["input_ids"], tok("xyz")["input_ids"]]
    K1, Kp, h = sequence_keys(model, adapter, 1, 2, rows, [[2, 4], [1]], 0)
    n_real = sum(len(r) for r in rows)
    assert K1.shape == (64, 3) and Kp.shape == (64, n_real - 3) and h.shape == (3, 32)


def test_memit_sequence_delta_solves_normal_equations():
    """One layer: Δ (λC0 + KpKpᵀ + K1K1ᵀ) = R K1ᵀ, with R = z − h (the brute-force optimum condition)."""
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    rows = [tok("abcdefgh")["input_ids"]]
    positions = [[3, 6]]
    C0 = torch.eye(64, dtype=torch.float64) * 0.1
    K1, Kp, h = sequence_keys(model, adapter, 2, 2, rows, positions, 0)
    z = h + 0.3
    deltas = memit_sequence_deltas(model, adapter, [2], rows, positions, [z], lambda _layer: C0, 5.0, 0)
    D = adapter.to_out_in(deltas[adapter.weight_name(2)]).double()
    lhs = D @ (5.0 * C0 + Kp @ Kp.T + K1 @ K1.T)
    rhs = (z - h).T @ K1.T
    assert torch.allclose(lhs, rhs, atol=1e-4)


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first]] + part
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]


def _bucket_cost(lengths, groups, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 130), min_size=1, max_size=7), st.integers(0, 60))
def test_length_buckets_is_an_optimal_partition(lengths, overhead):
    groups = length_buckets(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    best = min(_bucket_cost(lengths, p, overhead) for p in _partitions(list(range(len(lengths)))))
    assert _bucket_cost(lengths, groups, overhead) == best


def test_length_buckets_splits_wikitext_like_lengths_and_refuses_negative_overhead():
    assert length_buckets([100, 10, 12, 98], overhead=8) == [[1, 2], [3, 0]]
    assert length_buckets([7] * 5) == [[0, 1, 2, 3, 4]]  # equal lengths: one batch
    with pytest.raises(ValueError, match="overhead must be >= 0"):
        length_buckets([3], overhead=-1)


def test_grouped_preservation_loss_equals_the_one_batch_loss():
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    rows = [tok(t)["input_ids"] for t in ("a", "the old miller walked to the mill at dawn", "a blue boat", "x y")]
    with torch.no_grad():
        batch = record_block(model, adapter, 1, rows, 0)
        one = masked_mse(run_block(model, adapter, 1, batch), batch.outputs + 0.1, batch.mask)
        groups = [record_block(model, adapter, 1, [rows[i] for i in g], 0) for g in ([0, 3], [2], [1])]
        for io in groups:
            io.outputs = io.outputs + 0.1
        grouped = grouped_mse(model, adapter, 1, groups)
    assert float(one) == pytest.approx(float(grouped), rel=1e-5)


def test_layer_fit_with_length_groups_matches_one_padded_batch():
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    rows = [tok("what is x?")["input_ids"]]
    keep = [tok(t)["input_ids"] for t in ("the old miller walked to the mill at dawn and back", "a", "a blue boat")]
    target = record_block(model, adapter, 1, rows, 0).outputs[0, -1].double() + 0.5
    fit = dict(positions=[[len(rows[0]) - 1]], targets=[target[None]], keep_rows=keep, pad_id=0,
               options=FitOptions(steps=10, lr=1e-2))
    one, _ = layer_fit_deltas(model, adapter, [1], rows, bucket_overhead=None, **fit)
    grouped, _ = layer_fit_deltas(model, adapter, [1], rows, bucket_overhead=0, **fit)
    assert len(length_buckets([len(r) for r in keep], 0)) > 1  # really ran in groups
    for name in one:
        assert torch.allclose(one[name], grouped[name], atol=1e-5, rtol=1e-3), name


def test_layer_fit_touches_only_its_block_and_reaches_target():
    model, tok = tiny_model("llama")
    adapter = get_adapter(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [tok("what is x?")["input_ids"]]
    keep = [tok("the old miller walked")["input_ids"], tok("a blue boat")["input_ids"]]
    io = record_block(model, adapter, 1, rows, 0)
    target = io.outputs[0, -1].double() + 0.5
    deltas, info = layer_fit_deltas(model, adapter, [1], rows, [[len(rows[0]) - 1]], [target[None]], keep, 0,
                                    FitOptions(steps=40, lr=1e-2))
    assert set(deltas) == set(block_param_names(model, adapter, [1]))
    for n, p in model.named_parameters():  # pure: the model is restored bit for bit
        assert torch.equal(p, before[n]), n
    assert info["fit_loss"][-1]["edit"] < 0.2 * float(((target - io.outputs[0, -1].double()) ** 2).mean()) / len(rows[0])


def test_unke_edit_raises_long_answer_probability(tmp_path):
    model, tok = tiny_model("llama")
    corpus = write_tiny_corpus(tmp_path / "c.txt")
    request = EditRequest(prompt="Q: what is it?", subject=None, target_new="a long answer", id="u")
    editor = Editor(model, tok, "unke", {"stats": {"corpus": str(corpus)}, "target": {"steps": 25},
                                          "fit": {"steps": 30, "lr": 1e-2}}, cache_dir=tmp_path)
    enc = encode_qa(tok, request.prompt, request.target_new, chat=False)

    def nll():
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.ids])).logits[0, enc.n_prompt - 1: -1]
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(enc.answer)))

    before = nll()
    editor.edit([request])
    after = nll()
    editor.revert()
    assert after < before - 0.02
    assert nll() == before


def test_long_form_config_errors():
    model, tok = tiny_model("llama")
    with pytest.raises(ConfigError, match="combine"):
        Editor(model, tok, "unke", {"fit": {"combine": "average"}})
    with pytest.raises(ConfigError, match="affinity_order"):
        Editor(model, tok, "muke", {"matryoshka": {"affinity_order": "sideways"}})
    with pytest.raises(ConfigError, match="window_siz"):
        Editor(model, tok, "anyedit", {"window_siz": 3})


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "bench" / "configs" / "smollm2").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_smollm2_bench_configs_resolve(path):
    """Each shipped SmolLM2 setting names its preset (file stem, '-facts' for short answers) and
    every key in it is a real config field with the value written (a typo would be an error)."""
    from kedit.methods.registry import build_config

    overrides = yaml.safe_load(path.read_text())
    cfg = build_config(path.stem.removesuffix("-facts"), overrides, model_type="llama", n_layers=30).to_dict()
    for key, value in overrides.items():
        expected = {**cfg[key], **value} if isinstance(value, dict) else value
        assert cfg[key] == expected, (path.name, key)
