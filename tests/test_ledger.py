"""Ledger: apply/revert exactness, strict validation, save/load, sparse deltas and checkpoint export."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import kedit
from kedit.data.requests import EditRequest
from kedit.errors import LedgerError, NonFiniteError
from kedit.ledger import EditSet, Ledger, SparseRows, applied, export_checkpoint, load_edit_set, save_edit_set
from kedit.models.adapters import get_adapter
from kedit.models.fingerprint import weights_fingerprint
from kedit.testing.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer

FAMILIES = pytest.mark.parametrize("family", TINY_FAMILIES)
REQUESTS = (
    EditRequest(prompt="{} was born in", subject="Ada", target_new="Paris", id=7),
    EditRequest(prompt="The capital of {} is", subject="Spain", target_new="Rome", id="cf-12",
                rephrases=("Spain's capital is",), locality=(("Sky is", "blue"),)),
)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, snap, *, except_names=()) -> None:
    state = model.state_dict()
    assert set(state) == set(snap)
    differ = sorted(k for k in snap if k not in except_names and not torch.equal(state[k], snap[k]))
    assert differ == []


def targets(model) -> tuple[str, str]:
    """(an MLP output weight, the final norm weight) of ``model``."""
    adapter = get_adapter(model)
    return adapter.weight_name(1), f"{adapter.final_norm}.weight"


def random_set(model, names, *, seed=0, base=None, method="demo", scale=0.1) -> EditSet:
    params = dict(model.named_parameters(remove_duplicate=False))
    g = torch.Generator().manual_seed(seed)
    deltas = {n: scale * torch.randn(params[n].shape, generator=g) for n in names}
    return EditSet(deltas, method, {"layers": [1], "lr": 0.5}, REQUESTS,
                   base or weights_fingerprint(model), meta={"seconds": 1.25})


def tied_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), tok


def logits(model, tok):
    ids = tok(["Ada was born in Paris", "hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


# -- apply / revert ------------------------------------------------------------------------------
@FAMILIES
def test_apply_changes_exactly_the_named_tensors(family, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    names = targets(model)
    edit = random_set(model, names)
    ledger = Ledger(model)
    ledger.apply(edit, batch=0)
    state = model.state_dict()
    for n in names:
        expected = (before[n].double() + edit.deltas[n].double()).to(before[n].dtype)
        assert torch.equal(state[n], expected)
        assert not torch.equal(state[n], before[n])
        assert torch.allclose(ledger.current_delta()[n], edit.deltas[n], atol=1e-6)
    assert_same(model, before, except_names=names)
    assert ledger.touched == sorted(names)
    assert ledger.history == [edit]


@FAMILIES
def test_revert_is_bit_exact_after_several_applies(family, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    mlp, norm = targets(model)
    ledger = Ledger(model)
    ledger.apply(random_set(model, [mlp, norm], seed=1))
    ledger.apply(random_set(model, [mlp], seed=2, base=ledger.base_fingerprint), check_fingerprint=False)
    rows = torch.tensor([0, 5])
    sparse = SparseRows(rows, torch.full((2, model.get_parameter(mlp).shape[1]), 0.3), dim=0)
    ledger.apply(EditSet({mlp: sparse}, "sparse", {}, (), ledger.base_fingerprint), check_fingerprint=False)
    assert len(ledger.history) == 3
    assert not torch.equal(model.state_dict()[mlp], before[mlp])
    ledger.revert()
    assert_same(model, before)
    assert ledger.history == [] and ledger.touched == [] and ledger.current_delta() == {}
    assert ledger.fingerprint() == ledger.base_fingerprint == weights_fingerprint(model)


def test_history_without_deltas_holds_no_tensor_storage_and_reverts_bit_exactly():
    """A long sequential run keeps provenance, not one dense delta per batch (flat memory)."""
    model, _ = tiny_model("llama")
    before = snapshot(model)
    mlp, norm = targets(model)
    kept = Ledger(model)
    first = random_set(model, [mlp, norm], seed=1)
    second = random_set(model, [mlp], seed=2, base=kept.base_fingerprint)
    kept.apply(first)
    kept.apply(second, check_fingerprint=False)
    after_kept = snapshot(model)
    kept.revert()
    lean = Ledger(model, keep_deltas=False)
    lean.apply(first)
    lean.apply(second, check_fingerprint=False)
    assert_same(model, after_kept)  # same weights either way
    for entry, original in zip(lean.history, (first, second)):
        assert entry.names() == original.names() and entry.request_ids() == original.request_ids()
        assert entry.method == original.method and entry.meta == original.meta
        for name, delta in entry.deltas.items():
            assert delta.is_meta and delta.shape == original.deltas[name].shape
            assert delta.dtype == original.deltas[name].dtype
    assert not first.deltas[mlp].is_meta  # the caller's edit set is untouched
    exact = lean.current_delta()
    assert torch.allclose(exact[mlp], first.deltas[mlp] + second.deltas[mlp], atol=1e-6)
    lean.revert()
    assert_same(model, before)


@FAMILIES
def test_bfloat16_apply_and_revert_are_exact(family, track):
    model, _ = tiny_model(family)
    model = track(model.to(torch.bfloat16))
    before = snapshot(model)
    names = targets(model)
    edit = random_set(model, names, seed=3)  # float32 deltas onto bfloat16 weights
    ledger = Ledger(model)
    ledger.apply(edit)
    for n in names:
        expected = (before[n].double() + edit.deltas[n].double()).to(torch.bfloat16)
        assert model.state_dict()[n].dtype == torch.bfloat16
        assert torch.equal(model.state_dict()[n], expected)
    assert ledger.current_delta()[names[0]].dtype == torch.float32
    ledger.revert()
    assert_same(model, before)


@FAMILIES
def test_nan_delta_raises_and_changes_nothing(family, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    mlp, norm = targets(model)
    edit = random_set(model, [norm, mlp], method="memit")
    edit.deltas[mlp][3, 4] = float("nan")
    ledger = Ledger(model)
    with pytest.raises(NonFiniteError, match=rf"'memit' edit set \(batch 3\).*{re.escape(repr(mlp))}.*delta itself holds 1 NaN"):
        ledger.apply(edit, batch=3)
    assert_same(model, before)
    assert ledger.history == [] and ledger.touched == []


def test_bfloat16_overflow_is_reported_as_overflow(track):
    model, _ = tiny_model("llama")
    model = track(model.to(torch.bfloat16))
    before = snapshot(model)
    _, norm = targets(model)
    edit = EditSet({norm: torch.full((32,), 1e39, dtype=torch.float64)}, "ft", {}, (), weights_fingerprint(model))
    with pytest.raises(NonFiniteError, match="overflows torch.bfloat16"):
        Ledger(model).apply(edit)
    assert_same(model, before)


@FAMILIES
def test_unknown_name_is_rejected_with_suggestions(family, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    mlp, norm = targets(model)
    edit = random_set(model, [norm])
    edit.deltas[mlp + "x"] = torch.zeros(3)
    with pytest.raises(LedgerError, match=rf"does not have: \[{re.escape(repr(mlp + 'x'))}\]\. Closest real names: \[.*{re.escape(repr(mlp))}"):
        Ledger(model).apply(edit)
    assert_same(model, before)


@FAMILIES
def test_wrong_shape_is_rejected(family, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    mlp, _ = targets(model)
    shape = tuple(model.get_parameter(mlp).shape)
    edit = EditSet({mlp: torch.zeros(shape[::-1])}, "demo", {}, (), weights_fingerprint(model))
    with pytest.raises(LedgerError, match=rf"{re.escape(mlp)}: delta shape \({shape[1]}, {shape[0]}\) but parameter shape \({shape[0]}, {shape[1]}\)"):
        Ledger(model).apply(edit)
    assert_same(model, before)


@FAMILIES
def test_fingerprint_mismatch_is_rejected(family, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    fp = weights_fingerprint(model)
    edit = random_set(model, targets(model), base="0" * 32)
    with pytest.raises(LedgerError, match=rf"computed for base weights 0{{32}} but the model's weights are {fp}; load the matching base model"):
        Ledger(model).apply(edit)
    assert_same(model, before)


def test_sequential_editing_needs_check_fingerprint_false(track):
    model, _ = tiny_model("qwen2")
    track(model)
    ledger = Ledger(model)
    first = random_set(model, targets(model)[:1], seed=1)
    second = random_set(model, targets(model)[:1], seed=2, base=ledger.base_fingerprint)
    ledger.apply(first)
    with pytest.raises(LedgerError, match="but the model's weights are"):
        ledger.apply(second)
    assert ledger.history == [first]
    ledger.apply(second, check_fingerprint=False)
    assert ledger.history == [first, second]
    assert ledger.fingerprint() == weights_fingerprint(model) != ledger.base_fingerprint


def test_tied_weights_resolve_through_either_alias(track):
    model, _ = tied_llama()
    track(model)
    before = snapshot(model)
    ledger = Ledger(model)
    assert ledger.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    delta = torch.ones_like(model.lm_head.weight)
    ledger.apply(EditSet({"lm_head.weight": delta}, "demo", {}, (), ledger.base_fingerprint))
    assert ledger.touched == ["model.embed_tokens.weight"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"] + 1)
    both = EditSet({"lm_head.weight": delta, "model.embed_tokens.weight": delta}, "demo", {}, (), "x")
    with pytest.raises(LedgerError, match="same tied tensor 'model.embed_tokens.weight'"):
        ledger.apply(both, check_fingerprint=False)
    ledger.revert()
    assert_same(model, before)


def test_applied_context_manager_reverts_even_on_error(track):
    model, _ = tiny_model("gpt_neox")
    track(model)
    before = snapshot(model)
    edit = random_set(model, targets(model))
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, edit) as ledger:
            assert ledger.touched == sorted(edit.names())
            assert not torch.equal(model.state_dict()[edit.names()[0]], before[edit.names()[0]])
            raise RuntimeError("boom")
    assert_same(model, before)


# -- sparse rows ----------------------------------------------------------------------------------
@FAMILIES
@pytest.mark.parametrize("dim", [0, 1])
def test_sparse_rows_change_only_selected_rows_and_round_trip(family, dim, tmp_path, track):
    model, _ = tiny_model(family)
    track(model)
    before = snapshot(model)
    mlp, _ = targets(model)
    shape = tuple(model.get_parameter(mlp).shape)
    index = torch.tensor([4, 1, 9])
    values_shape = (3, shape[1]) if dim == 0 else (shape[0], 3)
    sparse = SparseRows(index, torch.randn(values_shape), dim=dim)
    edit = EditSet({mlp: sparse}, "cpath", {"k": 3}, REQUESTS[:1], weights_fingerprint(model))
    loaded = load_edit_set(save_edit_set(edit, tmp_path / "sparse"))
    got = loaded.deltas[mlp]
    assert isinstance(got, SparseRows) and got.dim == dim
    assert torch.equal(got.index, index) and torch.equal(got.values, sparse.values)
    ledger = Ledger(model)
    ledger.apply(loaded)
    W, W0 = model.get_parameter(mlp).detach(), before[mlp]
    changed = (W != W0).any(dim=1 - dim).nonzero().flatten().tolist()
    assert changed == [1, 4, 9]
    assert torch.equal(W - W0, sparse.to_dense(shape)) or torch.allclose(W - W0, sparse.to_dense(shape), atol=1e-6)
    assert_same(model, before, except_names=[mlp])
    ledger.revert()
    assert_same(model, before)


def test_sparse_rows_validation():
    with pytest.raises(LedgerError, match="must not repeat a position"):
        SparseRows(torch.tensor([1, 1]), torch.zeros(2, 4))
    with pytest.raises(LedgerError, match="size len\\(index\\)=2 along dim=1"):
        SparseRows(torch.tensor([1, 2]), torch.zeros(2, 4), dim=1)
    with pytest.raises(LedgerError, match="1-D integer tensor"):
        SparseRows(torch.tensor([1.0]), torch.zeros(1, 4))
    model, _ = tiny_model("llama")
    mlp, _ = targets(model)
    rows = model.get_parameter(mlp).shape[0]
    edit = EditSet({mlp: SparseRows(torch.tensor([rows]), torch.zeros(1, 64))}, "x", {}, (), "fp")
    with pytest.raises(LedgerError, match=rf"sparse index out of range \[0, {rows}\)"):
        Ledger(model).apply(edit, check_fingerprint=False)


def test_merge_sums_dense_and_sparse():
    a = EditSet({"w": torch.ones(4, 3), "s": SparseRows(torch.tensor([0, 2]), torch.ones(2, 3))}, "m", {}, REQUESTS[:1], "fp")
    b = EditSet({"w": SparseRows(torch.tensor([1]), torch.ones(1, 3)), "s": SparseRows(torch.tensor([2, 3]), torch.ones(2, 3))},
                "m", {}, REQUESTS[1:], "fp")
    m = a.merge(b)
    assert m.names() == ("s", "w") and m.requests == REQUESTS
    assert torch.equal(m.deltas["w"], torch.tensor([[1.0] * 3, [2.0] * 3, [1.0] * 3, [1.0] * 3]))
    assert isinstance(m.deltas["s"], SparseRows) and m.deltas["s"].index.tolist() == [0, 2, 3]
    assert m.deltas["s"].to_dense((4, 3))[:, 0].tolist() == [1.0, 0.0, 2.0, 1.0]
    rows_cols = a.merge(EditSet({"s": SparseRows(torch.tensor([1]), torch.ones(4, 1), dim=1)}, "n", {}, (), "fp"))
    assert rows_cols.method == "m+n" and rows_cols.deltas["s"].shape == (4, 3)
    with pytest.raises(LedgerError, match="different base weights"):
        a.merge(EditSet({}, "m", {}, (), "other"))


def test_edit_set_rejects_bad_deltas():
    with pytest.raises(LedgerError, match="must be a floating-point torch.Tensor or SparseRows"):
        EditSet({"w": torch.zeros(2, dtype=torch.long)}, "m", {}, (), "fp")
    with pytest.raises(LedgerError, match="'base_fingerprint' parameter of EditSet must be a non-empty string"):
        EditSet({}, "m", {}, (), "")


# -- save / load ----------------------------------------------------------------------------------
@FAMILIES
def test_save_load_round_trip(family, tmp_path, track):
    model, _ = tiny_model(family)
    track(model)
    names = targets(model)
    edit = random_set(model, names, method="memit")
    edit.deltas[names[1]] = edit.deltas[names[1]].to(torch.bfloat16)
    path = save_edit_set(edit, tmp_path / "e")
    assert sorted(p.name for p in path.iterdir()) == ["deltas.safetensors", "manifest.json"]
    loaded = load_edit_set(path)
    assert loaded.names() == edit.names()
    for n in names:
        assert loaded.deltas[n].dtype == edit.deltas[n].dtype and torch.equal(loaded.deltas[n], edit.deltas[n])
    for field in ("method", "config", "requests", "base_fingerprint", "meta"):
        assert getattr(loaded, field) == getattr(edit, field)
    with safe_open(str(path / "deltas.safetensors"), framework="pt") as fh:
        header = fh.metadata()
    assert header["kedit_version"] == kedit.__version__ and header["method"] == "memit"
    assert header["base_fingerprint"] == edit.base_fingerprint and json.loads(header["request_ids"]) == [7, "cf-12"]
    assert re.fullmatch(r"[0-9a-f]{16}", header["config_hash"])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tensors"][names[0]] == {"kind": "dense", "shape": list(edit.deltas[names[0]].shape), "dtype": "float32"}
    assert manifest["requests"][1] == REQUESTS[1].to_dict()
    ledger = Ledger(model)
    ledger.apply(loaded)  # the loaded set applies like the original
    assert ledger.touched == sorted(names)


def test_load_is_strict(tmp_path):
    edit = EditSet({"a": torch.ones(2), "b": torch.zeros(3)}, "m", {"x": 1}, REQUESTS, "fp")
    path = save_edit_set(edit, tmp_path / "e")
    with pytest.raises(LedgerError, match="already exists; pass overwrite=True"):
        save_edit_set(edit, path)
    save_edit_set(edit, path, overwrite=True)
    with pytest.raises(LedgerError, match="No edit set at"):
        load_edit_set(tmp_path / "nothing")

    manifest = json.loads((path / "manifest.json").read_text())
    tensors = load_file(str(path / "deltas.safetensors"))
    with safe_open(str(path / "deltas.safetensors"), framework="pt") as fh:
        header = fh.metadata()

    def rewrite(m=manifest, t=tensors, h=header):
        (path / "manifest.json").write_text(json.dumps(m))
        save_file(t, str(path / "deltas.safetensors"), metadata=h)

    rewrite(t={"a": tensors["a"], "c": torch.ones(1)})
    with pytest.raises(LedgerError, match=r"missing tensors \['b'\], unexpected tensors \['c'\]"):
        load_edit_set(path)
    rewrite(h={**header, "base_fingerprint": "zzz"})
    with pytest.raises(LedgerError, match="disagree on \\['base_fingerprint'\\]"):
        load_edit_set(path)
    rewrite(m={**manifest, "config": {"x": 2}})
    with pytest.raises(LedgerError, match="does not match the stored config"):
        load_edit_set(path)
    rewrite(t={"a": torch.ones(3), "b": tensors["b"]})
    with pytest.raises(LedgerError, match=r"a: manifest \[2\] float32 vs file \[3\]"):
        load_edit_set(path)
    newer_major = f"{int(kedit.__version__.split('.')[0]) + 1}.0.0"
    rewrite(m={**manifest, "kedit_version": newer_major}, h={**header, "kedit_version": newer_major})
    with pytest.raises(LedgerError, match=f"written by kedit {newer_major}, newer than the installed"):
        load_edit_set(path)
    major, minor = kedit.__version__.split(".")[:2]
    newer_minor = f"{major}.{int(minor) + 1}.0"
    rewrite(m={**manifest, "kedit_version": newer_minor}, h={**header, "kedit_version": newer_minor})
    with pytest.warns(UserWarning, match="newer than the installed"):
        assert load_edit_set(path).requests == REQUESTS
    (path / "deltas.safetensors").unlink()
    with pytest.raises(LedgerError, match=r"missing file\(s\) \['deltas.safetensors'\]"):
        load_edit_set(path)


# -- export ---------------------------------------------------------------------------------------
@FAMILIES
def test_export_reloads_with_identical_logits(family, tmp_path, track):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model(family)
    track(model)
    ledger = Ledger(model)
    ledger.apply(random_set(model, targets(model), scale=1.0))
    edited = logits(model, tok)
    out = export_checkpoint(model, tok, tmp_path / "ckpt", edit_sets=ledger.history)
    assert (out / "model.safetensors").is_file()
    record = json.loads((out / "kedit_edits.json").read_text())
    assert record["edit_sets"] == [{"method": "demo", "request_ids": [7, "cf-12"], "base_fingerprint": ledger.base_fingerprint,
                                    "config_hash": record["edit_sets"][0]["config_hash"], "tensors": sorted(targets(model))}]
    reloaded = track(AutoModelForCausalLM.from_pretrained(str(out)).eval())
    assert torch.equal(logits(reloaded, tok), edited)
    assert record["weights_fingerprint"] == weights_fingerprint(reloaded) == ledger.fingerprint()


def test_export_keeps_tied_embeddings(tmp_path, track):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tied_llama()
    track(model)
    ledger = Ledger(model)
    ledger.apply(EditSet({"lm_head.weight": 0.5 * torch.randn(model.lm_head.weight.shape)}, "demo", {}, (), ledger.base_fingerprint))
    out = export_checkpoint(model, tok, tmp_path / "tied", edit_sets=ledger.history)
    reloaded = track(AutoModelForCausalLM.from_pretrained(str(out)).eval())
    assert reloaded.config.tie_word_embeddings
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.lm_head.weight, model.model.embed_tokens.weight)
    tok2 = AutoTokenizer.from_pretrained(str(out))
    assert torch.equal(logits(reloaded, tok2), logits(model, tok))


def test_export_drops_quantization_config_from_a_copy(tmp_path, track):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model("llama")
    track(model)
    model.config.quantization_config = {"quant_method": "gguf"}
    out = export_checkpoint(model, tok, tmp_path / "q")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert model.config.quantization_config == {"quant_method": "gguf"}
    del model.config.quantization_config
    reloaded = track(AutoModelForCausalLM.from_pretrained(str(out)).eval())
    assert torch.equal(logits(reloaded, tok), logits(model, tok))
    with pytest.raises(LedgerError, match="already exists"):
        export_checkpoint(model, tok, out)
