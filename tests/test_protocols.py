"""Bench runner protocols: long-answer and KnowEdit scoring through ``run_bench``."""
from __future__ import annotations

import json

import pytest

from kedit import EditRequest
from kedit.errors import ConfigError
from kedit.runs import run_bench
from kedit.runs.protocols import aggregate, protocol_for
from kedit.testing.checks import tiny_requests, write_tiny_corpus
from kedit.testing.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


def test_protocol_for_defaults_and_errors():
    assert protocol_for("unkebench") == "unstructured"
    assert protocol_for("zsre") == "zsre"
    assert protocol_for("zsre", "knowedit") == "knowedit"
    with pytest.raises(ConfigError, match="dataset"):
        protocol_for("wikibio")
    with pytest.raises(ConfigError, match="does not apply"):
        protocol_for("zsre", "unstructured")
    with pytest.raises(ConfigError, match="does not apply"):
        protocol_for("editeverything", "zsre")


def test_knowedit_aggregate_pools_group_means():
    cases = [{"id": 0, "edit_succ": 1.0, "portability": {"a": 0.5}, "locality": {"x": 1.0}, "portability_mean": 0.5,
              "locality_mean": 1.0},
             {"id": 1, "edit_succ": 0.0, "portability": {"a": 1.0, "b": 0.0}, "locality": {"x": 0.0},
              "portability_mean": 0.5, "locality_mean": 0.0}]
    m = aggregate("knowedit", cases)
    assert m["edit_succ"] == 0.5 and m["portability"] == {"a": 0.75, "b": 0.0} and m["locality"] == {"x": 0.5}
    assert m["n_cases"] == 2


def test_unstructured_bench_summary_shape(tmp_path):
    model, tok = tiny_model("llama")
    corpus = write_tiny_corpus(tmp_path / "c.txt")
    reqs = [EditRequest("What is up?", None, "A long answer here.", rephrases=("What's up?",), id=0,
                        portability={"sub_question": (("Why?", "Because."),)}),
            EditRequest("Who is it?", None, "Nobody at all.", id=1)]
    cfg = {"stats": {"corpus": str(corpus)}, "target": {"steps": 3}, "fit": {"steps": 3, "preservation_n": 2}}
    summary = run_bench(model, tok, method="unke", requests=reqs, dataset="unkebench", batch_size=1,
                        mode="independent", out_dir=tmp_path / "run", config=cfg, progress=False, cache_dir=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"] == "unstructured"
    for score in ("bleu", "rouge_l", "similarity"):
        assert set(summary["metrics"][score]) == {"original", "paraphrase"}
    assert 0.0 <= summary["metrics"]["bleu"]["original"] <= 1.0
    assert set(summary["metrics"]["rouge_l"]["original"]) == {"recall", "f1"}
    assert "sub_question_rouge_l" in summary["metrics"]
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["metrics"] == json.loads(json.dumps(summary["metrics"]))


@pytest.mark.parametrize("mode", ["sequential", "independent"])
def test_knowedit_protocol_on_zsre_records(tmp_path, mode):
    model, tok = tiny_model("llama")
    summary = run_bench(model, tok, method="ft", requests=tiny_requests(), dataset="zsre", protocol="knowedit",
                        batch_size=3 if mode == "sequential" else 1, mode=mode, out_dir=tmp_path / "run", config={"layer": 1, "steps": 3},
                        progress=False, cache_dir=tmp_path, save_edits=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"] == "knowedit"
    assert {"edit_succ", "locality", "portability"} <= set(summary["metrics"])
    assert summary["pre_metrics"]["locality"] == 1.0  # the pre-edit model against its own cache


def test_score_every_scores_a_strided_subset_with_the_full_runs_results(tmp_path):
    """Every request is edited; requests[::k] are scored, each exactly as a fully scored run scores it."""
    model, tok = tiny_model("llama")
    requests = tiny_requests() * 2
    kwargs = dict(method="ft", requests=requests, dataset="zsre", batch_size=2, mode="sequential",
                  config={"layer": 1, "steps": 3}, progress=False, cache_dir=tmp_path, save_edits=False)
    full = run_bench(model, tok, out_dir=tmp_path / "full", **kwargs)
    strided = run_bench(model, tok, out_dir=tmp_path / "strided", score_every=2, **kwargs)
    cases = {name: json.loads((tmp_path / name / "metrics.json").read_text())["cases"] for name in ("full", "strided")}
    assert [c["id"] for c in cases["strided"]["post"]] == [r.id for r in requests[::2]]
    for when in ("pre", "post"):
        assert cases["strided"][when] == cases["full"][when][::2]
    assert strided["n_scored"] == 3 and strided["score_every"] == 2 and "n_scored" not in full
    assert strided["timing"]["seconds_per_edit"] > 0 and full["n"] == strided["n"] == 6
    with pytest.raises(ConfigError, match="score_every"):
        run_bench(model, tok, **{**kwargs, "mode": "independent"}, out_dir=tmp_path / "x", score_every=2)
    with pytest.raises(ConfigError, match="score_every"):
        run_bench(model, tok, out_dir=tmp_path / "y", score_every=0, **kwargs)
