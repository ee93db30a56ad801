"""Stages on tiny models of every family: adapters, hooks, truncated forwards, keys, values, tokens, statistics."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import types

import pytest
import torch
from torch import nn

from kedit.data.requests import EditRequest
from kedit.errors import ConfigError, DataError, UnsupportedModelError
from kedit.methods.base import ValueTargetConfig
from kedit.models.adapters import ADAPTERS, get_adapter, num_layers, resolve_module
from kedit.models.hooks import bfloat16_linears, eval_mode, frozen, trace
from kedit.stages.forward import final_hidden_from, final_hidden_with_edit, hidden_after
from kedit.stages.keys import compute_keys, contextualise
from kedit.stages.tokens import encode_with_subject, pad_right, target_ids
from kedit.stages.values import ValueOptions, optimise_values
from kedit.stats.cache import StatsCache
from kedit.stats.corpus import read_corpus
from kedit.testing.checks import write_tiny_corpus
from kedit.testing.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer

HIDDEN, INTERMEDIATE, LAYERS = 32, 64, 4
FAMILIES = pytest.mark.parametrize("family", TINY_FAMILIES)
RESIDUAL = pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if ADAPTERS[f].residual_inputs_embeds])
TEXTS = ["The cat sat on the mat.", "Hi", "A longer sentence, with commas."]
TEMPLATES = ["{}", "Once upon a time. {}"]
REQUESTS = [
    EditRequest(prompt="{} was born in", subject="Ada Quill", target_new="Paris"),
    EditRequest(prompt="The instrument of {}", subject="Mira Vos", target_new="violin"),
]


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread (two threads fight under a shared 2-core load)."""


@pytest.fixture
def tiny(track):
    """family → (model, tokenizer, adapter); the model is registered with the hook-leak guard."""

    def build(family):
        model, tok = tiny_model(family)
        track(model)
        return model, tok, get_adapter(model)

    return build


def batch(tok, texts=TEXTS):
    return pad_right([tok(t)["input_ids"] for t in texts], tok.pad_token_id)


def hooked(model) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


# -- adapters ---------------------------------------------------------------------------------------
@FAMILIES
def test_adapter_resolves_modules_of_the_right_shapes(family, tiny):
    model, _, adapter = tiny(family)
    assert adapter.model_type == family == model.config.model_type
    assert num_layers(model, adapter) == LAYERS
    for i in range(LAYERS):
        weight = dict(model.named_parameters())[adapter.weight_name(i)]
        assert tuple(adapter.to_out_in(weight).shape) == (HIDDEN, INTERMEDIATE)  # (d_v, d_k)
        assert torch.equal(adapter.from_out_in(adapter.to_out_in(weight)), weight)
        assert resolve_module(model, adapter.mlp_out_name(i), adapter).weight is weight
        up = resolve_module(model, adapter.mlp_in_name(i), adapter)
        down = resolve_module(model, adapter.mlp_out_name(i), adapter)
        assert up(torch.zeros(1, HIDDEN)).shape[-1] == INTERMEDIATE
        assert down(torch.zeros(1, INTERMEDIATE)).shape[-1] == HIDDEN
        k = torch.randn(INTERMEDIATE, generator=torch.Generator().manual_seed(i))
        bias = down.bias if getattr(down, "bias", None) is not None else 0.0
        with torch.no_grad():  # the declared layout is the real one: value = W_out_in · key (+ bias)
            assert torch.allclose(down(k[None])[0], adapter.to_out_in(weight) @ k + bias, atol=1e-6)
        if adapter.mlp_gate:
            assert resolve_module(model, adapter.mlp_gate.format(layer=i)).weight.shape == (INTERMEDIATE, HIDDEN)
        assert isinstance(resolve_module(model, adapter.mlp_name(i)), nn.Module)
        assert isinstance(resolve_module(model, adapter.layer(i)), nn.Module)
    assert resolve_module(model, adapter.lm_head) is model.get_output_embeddings()
    assert resolve_module(model, adapter.embed) is model.get_input_embeddings()
    assert resolve_module(model, adapter.final_norm).weight.shape == (HIDDEN,)


def test_unknown_model_type_names_it():
    fake = nn.Linear(2, 2)
    fake.config = types.SimpleNamespace(model_type="bogus_arch")
    with pytest.raises(UnsupportedModelError, match="bogus_arch") as info:
        get_adapter(fake)
    assert isinstance(info.value, LookupError)
    assert "llama" in str(info.value)  # lists the known types


def test_bad_module_name_lists_closest_names_and_adapter(tiny):
    model, _, adapter = tiny("llama")
    with pytest.raises(UnsupportedModelError, match="'llama' adapter") as info:
        resolve_module(model, "model.layers.1.mlp.down_projj", adapter)
    assert "model.layers.1.mlp.down_proj" in str(info.value)


# -- hooks ------------------------------------------------------------------------------------------
@FAMILIES
def test_trace_removes_hooks_when_the_body_or_a_hook_raises(family, tiny):
    model, tok, adapter = tiny(family)
    ids, mask = batch(tok)
    names = [adapter.mlp_out_name(1), adapter.layer(2)]
    with pytest.raises(RuntimeError, match="body"):
        with trace(model, names):
            assert len(hooked(model)) == 2
            raise RuntimeError("body")
    assert hooked(model) == []

    def boom(name, out):
        raise ValueError(f"edit of {name}")

    with pytest.raises(ValueError, match="edit of"):
        with trace(model, names, edit_output=boom):
            model(input_ids=ids, attention_mask=mask)
    assert hooked(model) == []
    with pytest.raises(UnsupportedModelError):  # the second name fails after the first hook was added
        with trace(model, [adapter.layer(0), "no.such.module"]):
            pass
    assert hooked(model) == []


@FAMILIES
def test_trace_stop_ends_the_forward_early(family, tiny):
    model, tok, adapter = tiny(family)
    ids, mask = batch(tok)
    with torch.no_grad(), trace(model, [adapter.layer(3)]) as late:
        with trace(model, [adapter.layer(1), adapter.mlp_out_name(0)], stop=True, retain_input=True) as early:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    assert early[adapter.layer(1)].output is not None and early[adapter.mlp_out_name(0)].input is not None
    assert late[adapter.layer(3)].output is None  # the pass stopped after layer 1
    assert hooked(model) == []


@FAMILIES
def test_trace_retains_what_a_manual_hook_sees(family, tiny):
    model, tok, adapter = tiny(family)
    ids, mask = batch(tok)
    name = adapter.mlp_out_name(2)
    seen = {}
    handle = resolve_module(model, name).register_forward_hook(
        lambda m, i, o: seen.update(input=i[0].clone(), output=o.clone()))
    try:
        with torch.no_grad(), trace(model, [name], retain_input=True) as t:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    assert torch.equal(t[name].input, seen["input"]) and torch.equal(t[name].output, seen["output"])


def test_frozen_restores_requires_grad_also_on_error(tiny):
    model, _, _ = tiny("llama")
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)
    before = [p.requires_grad for p in params]
    with frozen(model, [params[1]]):
        assert [p.requires_grad for p in params] == [i == 1 for i in range(len(params))]
    assert [p.requires_grad for p in params] == before
    with pytest.raises(KeyError):
        with frozen(model):
            assert not any(p.requires_grad for p in params)
            raise KeyError("x")
    assert [p.requires_grad for p in params] == before
    for p in params:
        p.requires_grad_(True)


def test_eval_mode_restores_each_training_flag_also_on_error(tiny):
    model, _, adapter = tiny("gpt2")
    model.train()
    resolve_module(model, adapter.layer(1)).eval()
    before = [m.training for m in model.modules()]
    assert any(before) and not all(before)
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(KeyError):
        with eval_mode(model):
            raise KeyError("x")
    assert [m.training for m in model.modules()] == before
    model.eval()


# -- truncated forwards ------------------------------------------------------------------------------
@RESIDUAL
@pytest.mark.parametrize("layer", [0, 1, LAYERS - 1])
def test_final_hidden_from_equals_the_full_forward(family, layer, tiny):
    model, tok, adapter = tiny(family)
    ids, mask = batch(tok)
    with torch.no_grad():
        full = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        hidden = hidden_after(model, adapter, layer, ids, mask)
        tail = final_hidden_from(model, adapter, layer, hidden, mask)
    keep = mask.bool()
    assert torch.allclose(tail[keep], full[keep], rtol=1e-5, atol=1e-5)
    assert num_layers(model, adapter) == LAYERS  # the layer list is restored


def test_residual_inputs_embeds_flag_is_false_for_gpt2_for_a_reason(tiny):
    """GPT-2 adds learned position embeddings to inputs_embeds, so the truncated path would be wrong."""
    model, tok, adapter = tiny("gpt2")
    assert not adapter.residual_inputs_embeds
    ids, mask = batch(tok)
    with torch.no_grad():
        full = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        tail = final_hidden_from(model, adapter, 1, hidden_after(model, adapter, 1, ids, mask), mask)
    assert not torch.allclose(tail[mask.bool()], full[mask.bool()], atol=1e-3)


@FAMILIES
def test_final_hidden_with_edit(family, tiny):
    model, tok, adapter = tiny(family)
    ids, mask = batch(tok)
    with torch.no_grad():
        full = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        same = final_hidden_with_edit(model, adapter, adapter.layer(1), ids, mask, lambda h: h)
        moved = final_hidden_with_edit(model, adapter, adapter.mlp_name(1), ids, mask, lambda h: h + 1.0)
    assert torch.equal(same, full)
    assert not torch.allclose(moved, full)


# -- tokens ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template, subject", [
    ("{} was born in", "Ada Quill"),
    ("The birthplace of {}", "Ada Quill"),
    ("Once. The capital of {} is", "Zendia"),
    ("{}", "x"),
])
def test_encode_with_subject_points_at_the_subject_last_token(template, subject):
    tok = tiny_tokenizer()
    enc = encode_with_subject(tok, template, subject)
    full = template.replace("{}", subject)
    assert tok.decode(enc.ids) == full
    assert tok.decode([enc.ids[enc.position]]) == subject[-1]
    assert tok.decode(enc.ids[: enc.position + 1]).endswith(subject)
    assert enc.position == template.index("{}") + len(subject) - 1  # one token per character


def test_encode_without_subject_points_at_the_last_token_and_targets_get_a_space():
    tok = tiny_tokenizer()
    enc = encode_with_subject(tok, "What is the capital?", None)
    assert enc.position == len(enc.ids) - 1
    assert tok.decode(target_ids(tok, "Paris")) == " Paris" == tok.decode(target_ids(tok, " Paris"))


# -- keys ------------------------------------------------------------------------------------------------
@FAMILIES
def test_compute_keys_equals_a_manual_hook(family, tiny):
    """K[:, r] = mean over templates of the rewrite-module input at the subject's last character."""
    model, tok, adapter = tiny(family)
    request = REQUESTS[1]
    layers = [1, 2]
    keys = compute_keys(model, tok, adapter, REQUESTS, layers, TEMPLATES)
    for layer in layers:
        seen = []
        module = resolve_module(model, adapter.mlp_out_name(layer))
        handle = module.register_forward_hook(lambda m, i, o: seen.append(i[0][0].detach().double()))
        manual = []
        try:
            for template in TEMPLATES:
                prompt = template.replace("{}", request.prompt)
                text = prompt.replace("{}", request.subject)
                position = prompt.index("{}") + len(request.subject) - 1  # char-level tokenizer
                with torch.no_grad():
                    model(input_ids=torch.tensor([tok(text)["input_ids"]]), use_cache=False)
                manual.append(seen[-1][position])
        finally:
            handle.remove()
        expected = torch.stack(manual).mean(0)
        assert keys[layer].shape == (INTERMEDIATE, len(REQUESTS)) and keys[layer].dtype == torch.float64
        assert torch.allclose(keys[layer][:, 1], expected, rtol=1e-5, atol=1e-6)
    assert contextualise("Once. {}", request) == "Once. The instrument of {}"


# -- values -----------------------------------------------------------------------------------------------
@FAMILIES
@pytest.mark.parametrize("site, layer", [("block", 2), ("mlp", 1)])
def test_optimise_values_batched_equals_one_by_one(family, site, layer, tiny):
    model, tok, adapter = tiny(family)
    options = ValueOptions(steps=5, lr=0.5, clamp_norm_factor=4.0, kl_factor=0.0625, weight_decay=1e-3,
                           early_stop_loss=0.0)
    alone = [optimise_values(model, tok, adapter, [r], TEMPLATES, options, layer=layer, site=site) for r in REQUESTS]
    # an early-stop loss between the two final losses freezes one request before the other
    stop = sum(a.loss[0] for a in alone) / 2
    for opts in (options, ValueOptions(**{**options.__dict__, "early_stop_loss": stop})):
        both = optimise_values(model, tok, adapter, REQUESTS, TEMPLATES, opts, layer=layer, site=site)
        for i, r in enumerate(REQUESTS):
            one = optimise_values(model, tok, adapter, [r], TEMPLATES, opts, layer=layer, site=site)
            assert both.steps[i] == one.steps[0]
            assert torch.allclose(both.h_init[:, i], one.h_init[:, 0], rtol=1e-5, atol=1e-6)
            assert torch.allclose(both.z[:, i], one.z[:, 0], rtol=1e-5, atol=1e-5)
            assert abs(both.loss[i] - one.loss[0]) < 1e-4
    assert all((a.z - a.h_init).norm() > 0 for a in alone)  # δ moved
    assert not any(p.requires_grad is False for p in model.parameters())  # frozen() restored


@FAMILIES
def test_bfloat16_value_optimisation_stays_near_float32_and_keeps_h_init_exact(family, tiny):
    """bfloat16 autocast changes the forward passes only: h_init is the float32 site output bit for
    bit, and the targets (float64) and losses stay within bfloat16 rounding of the float32 ones."""
    model, tok, adapter = tiny(family)
    fp32 = ValueOptions(steps=8, lr=0.5, clamp_norm_factor=4.0, kl_factor=0.0625, weight_decay=1e-3,
                        early_stop_loss=0.0)
    bf16 = dataclasses.replace(fp32, compute_dtype="bfloat16")
    exact = optimise_values(model, tok, adapter, REQUESTS, TEMPLATES, fp32, layer=2)
    fast = optimise_values(model, tok, adapter, REQUESTS, TEMPLATES, bf16, layer=2)
    assert torch.equal(fast.h_init, exact.h_init) and fast.z.dtype == torch.float64
    assert not torch.equal(fast.z, exact.z)  # the forward passes did run in bfloat16
    assert all(abs(f - e) < 1e-2 for f, e in zip(fast.loss, exact.loss))
    delta_fast, delta_exact = fast.z - fast.h_init, exact.z - exact.h_init
    assert float((delta_fast - delta_exact).norm() / delta_exact.norm()) < 0.1


@FAMILIES
def test_bfloat16_linears_restores_every_weight_bit_for_bit_even_on_error(family, tiny):
    model, _, _ = tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attn = model.config._attn_implementation
    with pytest.raises(KeyboardInterrupt), bfloat16_linears(model):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
        assert model.config._attn_implementation == "eager"
        raise KeyboardInterrupt
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    assert model.config._attn_implementation == attn


def test_value_target_config_refuses_an_unknown_compute_dtype():
    with pytest.raises(ConfigError, match="compute_dtype"):
        ValueTargetConfig(compute_dtype="float16")


@FAMILIES
def test_value_target_h_init_is_the_clean_site_output(family, tiny):
    model, tok, adapter = tiny(family)
    options = ValueOptions(steps=1, lr=0.5, clamp_norm_factor=4.0, kl_factor=0.0, weight_decay=0.0, early_stop_loss=0.0)
    result = optimise_values(model, tok, adapter, REQUESTS[:1], TEMPLATES, options, layer=1, site="block")
    enc = encode_with_subject(tok, REQUESTS[0].prompt, REQUESTS[0].subject)
    with torch.no_grad():
        hidden = hidden_after(model, adapter, 1, torch.tensor([enc.ids]), torch.ones(1, len(enc.ids), dtype=torch.long))
    assert torch.allclose(result.h_init[:, 0], hidden[0, enc.position].double(), atol=1e-5)
    assert torch.equal(result.z, result.h_init)  # one step: no optimiser step on the last iteration


# -- statistics cache -----------------------------------------------------------------------------------------
@pytest.fixture
def corpus(tmp_path):
    return write_tiny_corpus(tmp_path / "corpus.txt")


def make_cache(model, tok, adapter, corpus, cache_dir, **kwargs):
    kwargs = {"token_budget": 320, "seq_len": 32, **kwargs}
    return StatsCache(model, tok, adapter, "fp-test", corpus=corpus, cache_dir=cache_dir, progress=False, **kwargs)


def test_write_tiny_corpus(corpus):
    text = corpus.read_text()
    assert 2500 <= len(text.encode()) <= 4500
    assert len(list(read_corpus(corpus))) == 60
    assert write_tiny_corpus(corpus.with_name("again.txt")).read_text() == text  # deterministic


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_stats_equal_a_manual_second_moment(family, tiny, corpus, tmp_path):
    """C0 = (1/N) Σ k kᵀ over the packed corpus stream (rows of seq_len tokens, EOS after each line)."""
    model, tok, adapter = tiny(family)
    cache = make_cache(model, tok, adapter, corpus, tmp_path / "cache")
    stream = []
    for line in read_corpus(corpus):
        stream += tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rows = torch.tensor(stream[:320]).reshape(10, 32)
    with torch.no_grad(), trace(model, [adapter.mlp_out_name(1)], retain_input=True) as t:
        model(input_ids=rows, use_cache=False)
    keys = t[adapter.mlp_out_name(1)].input.reshape(-1, INTERMEDIATE).double()
    assert torch.allclose(cache.C0(1), keys.T @ keys / 320, rtol=1e-4, atol=1e-9)
    assert cache.tokens_used[1] == 320


def test_stats_cache_second_instance_loads_from_disk(tiny, corpus, tmp_path):
    model, tok, adapter = tiny("llama")
    first = make_cache(model, tok, adapter, corpus, tmp_path)
    C0 = first.C0(1)
    assert first.seconds > 0 and first.path(1).exists()
    second = make_cache(model, tok, adapter, corpus, tmp_path)
    assert torch.equal(second.C0(1), C0)
    assert second.seconds == 0  # nothing recomputed
    assert second.tokens_used == first.tokens_used
    other = make_cache(model, tok, adapter, corpus, tmp_path, token_budget=256)
    assert other.path(1) != first.path(1)
    assert not torch.equal(other.C0(1), C0) and other.seconds > 0
    assert other.path(1).exists() and first.path(1).exists()
    assert make_cache(model, tok, adapter, corpus, tmp_path).path(2) != first.path(1)  # per layer
    refit = StatsCache(model, tok, adapter, "another-fingerprint", corpus=corpus, token_budget=320, seq_len=32,
                       cache_dir=tmp_path, progress=False)
    assert refit.path(1) != first.path(1)


def test_stats_cache_ignores_a_file_with_a_foreign_key(tiny, corpus, tmp_path, caplog):
    model, tok, adapter = tiny("llama")
    foreign = make_cache(model, tok, adapter, corpus, tmp_path / "a", token_budget=256)
    foreign.C0(1)
    clean = make_cache(model, tok, adapter, corpus, tmp_path / "b").C0(1)
    victim = make_cache(model, tok, adapter, corpus, tmp_path / "a")
    shutil.copy(foreign.path(1), victim.path(1))  # right file name, wrong recorded key
    with caplog.at_level(logging.WARNING, logger="kedit.stats.cache"):
        C0 = victim.C0(1)
    assert any("ignoring" in r.getMessage() and "does not match" in r.getMessage() for r in caplog.records)
    assert victim.seconds > 0
    assert torch.equal(C0, clean)


def test_stats_cache_corpus_shorter_than_a_row_raises_data_error(tiny, tmp_path):
    model, tok, adapter = tiny("llama")
    small = tmp_path / "small.txt"
    small.write_text("Hi there.\n")
    with pytest.raises(DataError, match="small.txt"):
        make_cache(model, tok, adapter, small, tmp_path / "cache", seq_len=64).C0(1)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f != "gpt2"])
@pytest.mark.parametrize("site", ["block", "mlp"])
def test_prefix_cache_gives_the_same_value_targets(family, site):
    """The suffix-only forward with cached prefix keys/values equals the whole-prompt forward."""
    import dataclasses as dc

    from kedit.stages.values import ValueOptions, optimise_values

    model, tok = tiny_model(family)
    adapter = get_adapter(model)
    options = ValueOptions(steps=4, lr=0.5, clamp_norm_factor=4.0, kl_factor=0.0625, weight_decay=1e-3,
                           early_stop_loss=1e-9)
    templates = ["{}", "A short one. {}", "Some other prefix here. {}"]
    requests = REQUESTS[:2]
    cached = optimise_values(model, tok, adapter, requests, templates, options, layer=1, site=site)
    plain = optimise_values(model, tok, adapter, requests, templates, dc.replace(options, prefix_cache=False),
                            layer=1, site=site)
    assert torch.allclose(cached.z, plain.z, atol=1e-5, rtol=1e-4)
    assert cached.steps == plain.steps


@RESIDUAL
def test_suffix_length_groups_equal_one_padded_batch(family, tiny):
    """Rows run in length groups (each padded and attending only to its own longest prefix) give
    the final hidden states of the one padded batch at every real suffix position, with gradients."""
    from kedit.stages.forward import SuffixRunner
    from kedit.stages.tokens import length_buckets
    from kedit.stages.values import _build_rows

    model, tok, adapter = tiny(family)
    requests = REQUESTS + [EditRequest(prompt="{} plays", subject="Bo", target_new="the long grand piano")]
    rows = _build_rows(tok, requests, ["{}", "A much longer prefix, with words. {}"], "{} is a")
    layer = 1
    with torch.no_grad():
        hidden = hidden_after(model, adapter, layer, rows.ids, rows.mask)
        runners = {k: SuffixRunner(model, adapter, layer, rows.ids, rows.mask, hidden, rows.position,
                                   bucket_overhead=k) for k in (None, 0)}
    lengths = runners[0].suffix_length
    assert len(length_buckets(lengths, overhead=0)) > 2  # the grouped run really is several calls
    pick = torch.tensor([5, 0, 3, 1, 4])  # any subset, any order
    out, grads = {}, {}
    for k, runner in runners.items():
        delta = torch.randn(len(pick), hidden.shape[-1], generator=torch.Generator().manual_seed(0),
                            requires_grad=True)
        out[k] = runner.final_hidden(pick, delta)
        real = torch.arange(runner.S)[None, :] < torch.tensor([lengths[i] for i in pick.tolist()])[:, None]
        (out[k][real] ** 2).sum().backward()
        grads[k] = delta.grad
    assert out[0].shape == out[None].shape
    assert torch.allclose(out[0][real], out[None][real], atol=1e-5)
    assert torch.allclose(grads[0], grads[None], atol=1e-4, rtol=1e-4)
