"""General-capability probes (metrics.md §5), the health monitor and their place in run_bench."""
from __future__ import annotations

import datetime
import json
import math
import os
import pickle

import pytest
import torch

import kedit.eval.health as health_mod
from kedit.errors import ConfigError, DataError
from kedit.eval.health import HealthMonitor
from kedit.eval.probes import (
    CANDIDATES,
    PROBES,
    gold_label,
    load_probe_set,
    mcc,
    parse_answer,
    probe_prompt,
    run_probes,
    weighted_f1,
)
from kedit.runs.runner import run_bench
from kedit.testing.checks import cheap_config, kill_at_edit, tiny_requests, write_tiny_corpus
from kedit.testing.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


_W1 = "model.layers.1.mlp.down_proj.weight"
_PPL_TEXT = "The old miller walked past the stone bridge before the rain began. " * 3


# -- loading ------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [[{"d": datetime.date(2020, 1, 1)}], [_Evil()]], ids=["date", "reduce"])
def test_refusing_unpickler_refuses_any_class(tmp_path, payload):
    path = tmp_path / "sst2.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match=r"refusing to unpickle class .* from .*sst2\.pkl"):
        load_probe_set("sst2", path)


def test_load_probe_set_bad_files(tmp_path):
    (tmp_path / "a.pkl").write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="list of dicts"):
        load_probe_set("sst2", tmp_path / "a.pkl")
    (tmp_path / "b.pkl").write_bytes(pickle.dumps([{"sentence": "x"}] * 12))
    with pytest.raises(DataError, match="missing field"):
        load_probe_set("sst2", tmp_path / "b.pkl")
    with pytest.raises(ConfigError, match="one of"):
        load_probe_set("squad", tmp_path / "b.pkl")


_DOCUMENTED_KEYS = {
    "sst2": {"sentence", "label", "idx"},
    "mrpc": {"sentence1", "sentence2", "label", "idx"},
    "cola": {"sentence", "label", "idx"},
    "rte": {"sentence1", "sentence2", "label", "idx"},
    "nli": {"index", "sentence1", "sentence2", "label"},
    "mmlu": {"question", "subject", "choices", "answer"},
}


@pytest.mark.parametrize("name", PROBES)
def test_real_glue_files_load(shared_data, name):
    items = load_probe_set(name, n=100)
    assert len(items) == 100
    assert all(set(item) == _DOCUMENTED_KEYS[name] for item in items)
    everything = load_probe_set(name, n=None, skip=0)
    assert items[0] == everything[10]  # the first 10 are reserved for few-shot context
    golds = [gold_label(name, item) for item in items]
    assert set(golds) == (set(range(4)) if name == "mmlu" else {0, 1})


def test_rte_label_convention_is_glue(shared_data):
    """GLUE RTE: 0 = entailment. Record 0 is not entailed, record 5 is (read from the file)."""
    items = load_probe_set("rte", n=6, skip=0)
    assert "10,000" in items[0]["sentence2"] and items[0]["label"] == 1 and gold_label("rte", items[0]) == 0
    assert items[5]["sentence2"].startswith("Kozlowski was sentenced") and gold_label("rte", items[5]) == 1


# -- prompts, parsing ---------------------------------------------------------------------------
def test_exact_prompts():
    assert probe_prompt("sst2", {"sentence": "a fine film", "label": 1}) == "Review :a fine film\nSentiment :"
    assert probe_prompt("mrpc", {"sentence1": "A b.", "sentence2": "B a.", "label": 1}) == (
        "Are the sentences paraphrases of each other.\nSentence 1: A b.\nSentence 2: B a.\nAnswer:")
    assert probe_prompt("cola", {"sentence": "Him go.", "label": 0}) == (
        "Is this sentence linguistically acceptable?\nSentence: Him go.\nAnswer: ")
    assert probe_prompt("rte", {"sentence1": "Cats purr.", "sentence2": "Cats make sounds.", "label": 0}) == (
        "Cats purr.\nquestion: Cats make sounds. True or False?\nanswer:")
    assert probe_prompt("nli", {"sentence1": "It rains.", "sentence2": "It is wet.", "label": "entailment"}) == (
        "It rains. entails the It is wet. True or False? Answer:")
    mmlu = {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
    assert probe_prompt("mmlu", mmlu) == "Question: 2+2?\n(A) 3\n(B) 4\n(C) 5\n(D) 6\nAnswer:"
    assert gold_label("mmlu", mmlu) == 1 and gold_label("nli", {"label": "not_entailment"}) == 0


@pytest.mark.parametrize("name, text, expected", [
    ("sst2", " positive", 1), ("sst2", " Negative review", 0), ("sst2", " neutral", -1),
    ("mrpc", " Yes", 1), ("mrpc", " No, they", 0), ("mrpc", " not sure", -1), ("cola", " I know", -1),
    ("cola", "yes\n", 1), ("rte", " true", 1), ("rte", " False.", 0), ("nli", " maybe", -1),
    ("nli", " True or False", 1), ("mmlu", " B", 1), ("mmlu", " (D) 6", 3), ("mmlu", "\nAnswer", -1),
    ("mmlu", " E", -1), ("mmlu", "", -1),
])
def test_parse_answer(name, text, expected):
    assert parse_answer(name, text) == expected


def test_candidates_follow_class_order():
    assert CANDIDATES["sst2"] == (" negative", " positive")
    assert CANDIDATES["rte"] == CANDIDATES["nli"] == (" False", " True")
    assert CANDIDATES["mmlu"] == (" A", " B", " C", " D")


# -- metrics (values computed by hand) ----------------------------------------------------------
def test_weighted_f1_and_mcc_binary_with_invalid():
    y_true, y_pred = [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, -1, 1]
    # class 0: TP 1, FP 1, FN 2 -> F1 2/5; class 1: TP 2, FP 1, FN 1 -> F1 2/3; support 3 each
    assert weighted_f1(y_true, y_pred) == pytest.approx((3 * 0.4 + 3 * 2 / 3) / 6)
    # c=3, s=6, t=(0,3,3), p=(1,2,3): (18-15)/sqrt((36-14)(36-18))
    assert mcc(y_true, y_pred) == pytest.approx(3 / math.sqrt(22 * 18))
    # binary textbook form: TP 1, TN 2, FP 0, FN 1 -> (1*2 - 0*1)/sqrt(1*2*2*3)
    assert mcc([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / math.sqrt(12))


def test_weighted_f1_and_mcc_multiclass_and_edges():
    assert weighted_f1([0, 1, 2, 3], [0, 1, 2, 2]) == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert mcc([0, 1, 2, 3], [0, 1, 2, 2]) == pytest.approx(8 / math.sqrt(10 * 12))
    assert weighted_f1([0, 1], [0, 1]) == 1.0 and mcc([0, 1], [0, 1]) == 1.0
    assert mcc([0, 1, 0], [1, 1, 1]) == 0.0  # constant prediction: undefined -> 0
    assert weighted_f1([0, 1], [-1, -1]) == 0.0
    assert weighted_f1([], []) == 0.0 and mcc([], []) == 0.0


# -- run_probes ---------------------------------------------------------------------------------
def test_run_probes_tiny_model(shared_data):
    model, tok = tiny_model("llama")
    results = run_probes(model, tok, n=4, batch_size=4)
    assert list(results) == list(PROBES)
    for task, r in results.items():
        assert r["n"] == 4 and r["correct"] + r["incorrect"] + r["invalid"] == 4
        assert r["accuracy"] == r["correct"] / 4
        for key in ("f1", "f1_new", "accuracy_new"):
            assert 0.0 <= r[key] <= 1.0, (task, key)
        assert -1.0 <= r["mcc"] <= 1.0
    json.dumps(results)


# -- HealthMonitor ------------------------------------------------------------------------------
def _fake_probe_results(f1: float):
    return {t: {"n": 2, "correct": 1, "incorrect": 1, "invalid": 0, "accuracy": f1, "f1": f1, "mcc": 0.0,
                "f1_new": f1, "accuracy_new": f1, "seconds": 0.0} for t in PROBES}


def test_health_monitor_norms_and_perplexity():
    model, tok = tiny_model("llama")
    mon = HealthMonitor(model, tok, layers_weight_names=[_W1], ppl_text=_PPL_TEXT)
    first = mon.check(0, 1)
    assert first["weight_norm_growth"] == {_W1: 1.0}
    assert math.isfinite(first["perplexity"]) and first["perplexity"] > 1
    assert first["perplexity"] == pytest.approx(mon.base_perplexity)
    assert "probes" not in first and mon.pre_probes is None
    with torch.no_grad():
        model.get_parameter(_W1).mul_(1.5)
    second = mon.check(1, 2)
    assert second["weight_norm_growth"][_W1] == pytest.approx(1.5, rel=1e-5)
    assert second["perplexity"] != first["perplexity"]
    with pytest.raises(ConfigError):
        HealthMonitor(model, tok, layers_weight_names=["nope.weight"], ppl_text=_PPL_TEXT)
    with pytest.raises(ConfigError, match="probe_every"):
        HealthMonitor(model, tok, layers_weight_names=[_W1], ppl_text=_PPL_TEXT, stop_below=0.5)


def test_health_monitor_wikitext_probe(shared_data):
    model, tok = tiny_model("llama")
    mon = HealthMonitor(model, tok, layers_weight_names=[_W1], ppl_tokens=64)
    raw = (shared_data / "wikitext" / "wiki.test.raw").read_text(encoding="utf-8").replace("\r", "")
    assert mon.ppl_ids == list(tok(raw[:200])["input_ids"])[:64]


def test_probes_run_exactly_at_crossings(monkeypatch):
    calls = []

    def fake(model, tokenizer, names, **kwargs):
        calls.append(kwargs["n"])
        return _fake_probe_results(0.8)

    monkeypatch.setattr(health_mod, "run_probes", fake)
    model, tok = tiny_model("llama")
    data = {t: [{}] * 5 for t in PROBES}
    mon = HealthMonitor(model, tok, layers_weight_names=[_W1], ppl_text=_PPL_TEXT, probe_every=3, probe_n=2,
                        probe_data=data)
    assert len(calls) == 1 and mon.pre_probes is not None  # pre-edit probes at construction
    probed = [edits for i, edits in enumerate([2, 4, 6, 8, 10, 11, 12]) if "probes" in mon.check(i, edits)]
    assert probed == [4, 6, 10, 12]  # 4//3=1, 6//3=2, 10//3=3, 12//3=4 increase; 2, 8, 11 do not
    assert len(calls) == 5 and set(calls) == {2}


def test_should_stop_when_probes_collapse(monkeypatch):
    f1 = {"value": 0.8}
    monkeypatch.setattr(health_mod, "run_probes", lambda *a, **k: _fake_probe_results(f1["value"]))
    model, tok = tiny_model("llama")
    mon = HealthMonitor(model, tok, layers_weight_names=[_W1], ppl_text=_PPL_TEXT, probe_every=1, probe_n=2,
                        probe_data={t: [{}] * 2 for t in PROBES}, stop_below=0.5)
    assert mon.pre_mean_f1() == pytest.approx(0.8)
    f1["value"] = 0.5
    assert not mon.should_stop(mon.check(0, 1))  # 0.5 >= 0.5 * 0.8
    f1["value"] = 0.39
    result = mon.check(1, 2)
    assert result["probe_mean_f1"] == pytest.approx(0.39) and mon.should_stop(result)
    assert not mon.should_stop({"perplexity": 1.0})  # no probes in this check


# -- run_bench integration ----------------------------------------------------------------------
def _bench(tmp_path, **kwargs):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    requests = tiny_requests()[:2] * 2  # 4 edits, batch size 1
    summary = run_bench(model, tok, method="memit", requests=requests, dataset="counterfact", batch_size=1,
                        mode="sequential", out_dir=tmp_path / "run", config=cheap_config("memit", corpus),
                        cache_dir=tmp_path / "cache", progress=False, **kwargs)
    lines = [json.loads(x) for x in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()]
    return summary, lines


def test_run_bench_records_health_and_probes(tmp_path, shared_data):
    summary, lines = _bench(tmp_path, health_every_batch=True, probe_every=2, probe_n=2)
    assert len(lines) == 4
    for i, record in enumerate(lines):
        health = record["health"]
        assert health["edits"] == i + 1 and math.isfinite(health["perplexity"])
        assert set(health["weight_norm_growth"]) == {"model.layers.1.mlp.down_proj.weight",
                                                     "model.layers.2.mlp.down_proj.weight"}
        assert ("probes" in health) == (i in (1, 3))
    assert set(lines[1]["health"]["probes"]) == set(PROBES)
    assert lines[1]["health"]["probes"]["sst2"].keys() == {"accuracy", "f1", "mcc", "f1_new", "invalid"}
    assert any(g != 1.0 for g in lines[-1]["health"]["weight_norm_growth"].values())
    assert set(summary["probes"]) == {"pre", "final"} and summary["probes"]["pre"]["mmlu"]["n"] == 2
    assert "auto_stopped_at_batch" not in summary
    assert (tmp_path / "run" / "probes.png").stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["probes"]["final"] == summary["probes"]["final"]


def test_run_bench_records_preservation_loss_of_memit(tmp_path, shared_data, monkeypatch):
    """Each journal line's D(t) equals the direct per-token ‖(W_t − W0) k‖² = tr(ΔW E[kkᵀ] ΔWᵀ),
    ΔW = W_t − W0, from the weights right after that batch (LyapLock §3.1 for a queue-less method)."""
    import kedit.editor

    original = kedit.editor.Editor.edit
    seen: dict[str, list] = {"W0": [], "after": [], "C0": []}

    def weights(editor):
        return {layer: editor.adapter.to_out_in(editor.model.get_parameter(editor.adapter.weight_name(layer)))
                .detach().double().clone() for layer in editor.config.layers}

    def edit(self, requests):
        if not seen["W0"]:
            seen["W0"].append(weights(self))
            seen["C0"].append({layer: self.ctx.stats(self.config.stats).C0(layer) for layer in self.config.layers})
        out = original(self, requests)
        seen["after"].append(weights(self))
        return out

    monkeypatch.setattr(kedit.editor.Editor, "edit", edit)
    _, lines = _bench(tmp_path, health_every_batch=True)
    (W0,), (C0,) = seen["W0"], seen["C0"]
    assert len(lines) == len(seen["after"]) == 4
    for record, after in zip(lines, seen["after"]):
        recorded = record["health"]["preservation_loss"]
        assert set(recorded) == {"1", "2"}
        for layer, W in after.items():
            dW = W - W0[layer]  # (d_v, d_k)
            direct = float(torch.sum((dW @ C0[layer]) * dW))
            assert direct > 0 and recorded[str(layer)] == pytest.approx(direct, rel=1e-6, abs=1e-12)


def test_run_bench_auto_stop(tmp_path, monkeypatch):
    scores = iter([0.9, 0.8, 0.1])  # pre-edit, after 1 edit, after 2 edits
    monkeypatch.setattr(health_mod, "run_probes", lambda *a, **k: _fake_probe_results(next(scores)))
    monkeypatch.setattr(health_mod, "load_probe_set", lambda name, n: [{}] * n)
    summary, lines = _bench(tmp_path, probe_every=1, probe_n=2, auto_stop=0.5)
    assert len(lines) == 2 and lines[-1]["auto_stopped"] is True and "auto_stopped" not in lines[0]
    assert all("weight_norm_growth" not in r["health"] for r in lines)  # probes only, no per-batch health
    assert summary["auto_stopped_at_batch"] == 1 and summary["n_edited"] == 2
    assert summary["probes"]["final"]["sst2"]["f1"] == 0.1  # the last probe point is the final model


def test_run_bench_health_argument_checks(tmp_path):
    with pytest.raises(ConfigError, match="probe_every"):
        _bench(tmp_path, auto_stop=0.5)
    with pytest.raises(ConfigError, match="sequential"):
        corpus = write_tiny_corpus(tmp_path / "corpus.txt")
        model, tok = tiny_model("llama")
        run_bench(model, tok, method="memit", requests=tiny_requests()[:1], dataset="counterfact", batch_size=1,
                  mode="independent", out_dir=tmp_path / "run2", config=cheap_config("memit", corpus),
                  cache_dir=tmp_path / "cache", progress=False, health_every_batch=True)


def test_resumed_run_reuses_the_pre_edit_probes(tmp_path, monkeypatch):
    """The unedited model's probe scores are measured once per run, not again by the process that
    resumes it, and the summary still compares against them."""
    scores = iter([0.9, 0.7, 0.6])  # pre-edit, after 2 edits, after 4 edits: a third pre-edit run would fail
    calls = []
    monkeypatch.setattr(health_mod, "run_probes", lambda *a, **k: calls.append(1) or _fake_probe_results(next(scores)))
    monkeypatch.setattr(health_mod, "load_probe_set", lambda name, n: [{}] * n)
    kill_at_edit(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, probe_every=2, probe_n=2, checkpoint_every=1)
    assert len(calls) == 2
    summary, lines = _bench(tmp_path, probe_every=2, probe_n=2, checkpoint_every=1, resume=True)
    assert len(calls) == 3 and [r["batch"] for r in lines] == [0, 1, 2, 3]
    assert summary["probes"]["pre"]["sst2"]["f1"] == 0.9 and summary["probes"]["final"]["sst2"]["f1"] == 0.6
