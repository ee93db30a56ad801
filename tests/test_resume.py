"""Kill-and-resume of a sequential run: no lost or repeated edit, bit-identical final weights."""
from __future__ import annotations

import json

import pytest
import torch

import kedit.editor
from kedit.errors import ConfigError, LedgerError
from kedit.runs.retention import retention_series
from kedit.runs.run_dir import PRE_EDIT_FILE, finished_summary, has_checkpoint, shared_pre_edit
from kedit.runs.runner import run_bench
from kedit.testing.checks import cheap_config, kill_at_edit, tiny_requests, write_tiny_corpus
from kedit.testing.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


def _requests():
    return tiny_requests() * 2  # 6 edits → 3 batches of 2


def _count_evaluations(monkeypatch) -> dict[str, int]:
    """Count the runner's scoring passes (pre-edit and final) from here on."""
    from kedit.runs import runner

    calls = {"evaluate": 0}
    original_evaluate = runner.protocols.evaluate

    def counted(*args, **kw):
        calls["evaluate"] += 1
        return original_evaluate(*args, **kw)

    monkeypatch.setattr(runner.protocols, "evaluate", counted)
    return calls


def _final_weights(tmp_path, monkeypatch, *, kill_after=None, method="lyaplock"):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    calls = {"n": 0}
    original_edit = kedit.editor.Editor.edit
    captured = {}

    def edit(self, requests):
        if kill_after is not None and calls["n"] == kill_after:
            captured.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        out = original_edit(self, requests)
        captured.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return out

    monkeypatch.setattr(kedit.editor.Editor, "edit", edit)
    kwargs = dict(method=method, requests=_requests(), dataset="counterfact", batch_size=2, mode="sequential",
                  out_dir=tmp_path / "run", config=cheap_config(method, corpus), cache_dir=tmp_path / "cache",
                  progress=False, checkpoint_every=1)
    if kill_after is None:
        run_bench(model, tok, **kwargs)
        return captured, model
    with pytest.raises(KeyboardInterrupt):
        run_bench(model, tok, **kwargs)
    kill_after = None
    run_bench(model, tok, **kwargs, resume=True)
    return captured, model


@pytest.mark.parametrize("method", ["lyaplock", "alphaedit", "critical_path"])
def test_resume_after_kill_gives_bit_identical_weights(tmp_path, monkeypatch, method):
    straight, _ = _final_weights(tmp_path / "a", monkeypatch, method=method)
    monkeypatch.undo()
    resumed, _ = _final_weights(tmp_path / "b", monkeypatch, kill_after=2, method=method)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    journal = (tmp_path / "b" / "run" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in journal] == [0, 1, 2]  # none lost, none repeated


def test_resume_refuses_missing_or_foreign_checkpoints(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    kwargs = dict(method="memit", requests=_requests(), dataset="counterfact", batch_size=2, mode="sequential",
                  config=cheap_config("memit", corpus), cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(LedgerError, match="no 'checkpoint/' folder"):
        run_bench(model, tok, out_dir=tmp_path / "empty", resume=True, **kwargs)
    run_bench(model, tok, out_dir=tmp_path / "run", checkpoint_every=1, **kwargs)
    (tmp_path / "run" / "checkpoint" / "state.safetensors").unlink()
    with pytest.raises(LedgerError, match="incomplete checkpoint"):
        run_bench(model, tok, out_dir=tmp_path / "run", resume=True, **kwargs)
    run_bench(model, tok, out_dir=tmp_path / "run2", checkpoint_every=1, **kwargs)
    other = {**kwargs, "config": {**kwargs["config"], "mom2_update_weight": 7.0}}
    with pytest.raises(LedgerError, match="different run"):
        run_bench(model, tok, out_dir=tmp_path / "run2", resume=True, **other)


def test_sequential_lyaplock_summary_has_budget_ratios_and_plot(tmp_path, monkeypatch):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    from kedit.ledger.ledger import Ledger

    held = []  # what the history holds at the end of the run: shapes only, no storage per batch
    original_revert = Ledger.revert

    def revert(self):
        held.extend(d.is_meta for e in self.history for d in e.deltas.values())
        return original_revert(self)

    monkeypatch.setattr(Ledger, "revert", revert)
    summary = run_bench(model, tok, method="lyaplock", requests=_requests(), dataset="counterfact", batch_size=2,
                        mode="sequential", out_dir=tmp_path / "run", config=cheap_config("lyaplock", corpus),
                        cache_dir=tmp_path / "cache", progress=False)
    ratios = summary["lyaplock"]
    assert 0 < ratios["final_budget_ratio"] <= ratios["max_budget_ratio"]
    # the first batch defines D0, so its ratio is exactly 1/α
    first = json.loads((tmp_path / "run" / "journal.jsonl").read_text().splitlines()[0])["info"]["lyaplock"]
    layer = next(iter(first["D"]))
    assert abs(first["D"][layer] / first["budget"][layer] - 1 / 60) < 1e-12
    assert (tmp_path / "run" / "preservation_loss.png").stat().st_size > 1000
    lines = [json.loads(line) for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()]
    assert summary["memory"]["peak_rss_mb"] == max(line["memory_mb"]["peak"] for line in lines) > 0
    assert summary["memory"]["rss_mb_last"] == lines[-1]["memory_mb"]["rss"]
    assert held and all(held)
    # which edits the final model still holds, by position in the stream
    groups = retention_series(tmp_path / "run")
    cases = json.loads((tmp_path / "run" / "metrics.json").read_text())["cases"]["post"]
    assert groups[0]["first"] == 1 and sum(g["n"] for g in groups) == len(cases) == summary["n"]
    assert groups[-1]["last"] == sum(len(line["request_ids"]) for line in lines)  # repeated ids placed apart
    assert (tmp_path / "run" / "retention.png").stat().st_size > 1000


def test_resume_reads_the_pre_edit_scores_back(tmp_path, monkeypatch, caplog):
    """Scoring the unedited model is not repeated on resume (at 1,000 requests it costs as much as 100
    edits), the locality cache survives the round trip, and the summary equals an uninterrupted run's."""
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    kwargs = dict(method="memit", requests=_requests(), dataset="zsre", batch_size=2, mode="sequential",
                  config=cheap_config("memit", corpus), cache_dir=tmp_path / "cache", progress=False,
                  checkpoint_every=1)
    straight = run_bench(model, tok, out_dir=tmp_path / "a", **kwargs)

    kill_at_edit(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_bench(model, tok, out_dir=tmp_path / "b", **kwargs)
    monkeypatch.undo()
    calls = _count_evaluations(monkeypatch)
    resumed = run_bench(model, tok, out_dir=tmp_path / "b", resume=True, **kwargs)
    assert calls["evaluate"] == 1  # the final model only
    assert resumed["pre_metrics"] == straight["pre_metrics"] and resumed["metrics"] == straight["metrics"]

    saved = tmp_path / "b" / PRE_EDIT_FILE
    fingerprint = json.loads(saved.read_text())["weights_fingerprint"]
    saved.write_text(saved.read_text().replace(fingerprint, "other-weights"))
    with caplog.at_level("WARNING", logger="kedit.runs.run_dir"):
        run_bench(model, tok, out_dir=tmp_path / "b", resume=True, **kwargs)
    assert calls["evaluate"] == 3 and "scoring the unedited model again" in caplog.text


def test_another_method_starts_from_a_comparisons_pre_edit_scores(tmp_path, monkeypatch, caplog):
    """A second method of one comparison reads the first one's pre-edit scores (and keeps its own
    copy for its resume); scores of other requests are refused with a warning and measured again."""
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    common = dict(requests=_requests(), dataset="zsre", batch_size=2, mode="sequential",
                  cache_dir=tmp_path / "cache", progress=False, checkpoint_every=1)
    first = run_bench(model, tok, method="memit", out_dir=tmp_path / "memit",
                      config=cheap_config("memit", corpus), **common)
    calls = _count_evaluations(monkeypatch)
    second = run_bench(model, tok, method="alphaedit", out_dir=tmp_path / "alphaedit",
                       config=cheap_config("alphaedit", corpus), pre_edit_from=tmp_path / "memit", **common)
    assert calls["evaluate"] == 1  # the final model only
    assert second["pre_metrics"] == first["pre_metrics"]
    own = json.loads((tmp_path / "alphaedit" / PRE_EDIT_FILE).read_text())
    assert own == json.loads((tmp_path / "memit" / PRE_EDIT_FILE).read_text())

    fewer = {**common, "requests": _requests()[:4]}
    with caplog.at_level("WARNING", logger="kedit.runs.run_dir"):
        run_bench(model, tok, method="alphaedit", out_dir=tmp_path / "fewer", config=cheap_config("alphaedit", corpus),
                  pre_edit_from=tmp_path / "memit" / PRE_EDIT_FILE, **fewer)
    assert calls["evaluate"] == 3 and "scoring the unedited model again" in caplog.text
    with pytest.raises(ConfigError, match="neither a pre_edit.json file nor a run directory"):
        run_bench(model, tok, method="memit", out_dir=tmp_path / "x", config=cheap_config("memit", corpus),
                  pre_edit_from=tmp_path / "no-such-run", **common)


def test_independent_methods_of_one_comparison_score_the_unedited_model_once(tmp_path, monkeypatch):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    common = dict(requests=_requests()[:2], dataset="zsre", batch_size=1, mode="independent",
                  cache_dir=tmp_path / "cache", progress=False, keep_pre_edit=True)
    first = run_bench(model, tok, method="memit", out_dir=tmp_path / "memit", config=cheap_config("memit", corpus),
                      **common)
    calls = _count_evaluations(monkeypatch)
    second = run_bench(model, tok, method="rome", out_dir=tmp_path / "rome", config=cheap_config("rome", corpus),
                       pre_edit_from=shared_pre_edit(tmp_path, ["memit", "rome"]), **common)
    assert calls["evaluate"] == 2  # one per edited request, none for the unedited model
    assert second["pre_metrics"] == first["pre_metrics"]
    assert (tmp_path / "rome" / PRE_EDIT_FILE).is_file()


def test_finished_summary_and_shared_pre_edit_find_earlier_processes_files(tmp_path):
    """The two questions a multi-process comparison asks of its output folder."""
    assert finished_summary(tmp_path / "memit") is None and shared_pre_edit(tmp_path, ["memit", "rect"]) is None
    (tmp_path / "rect").mkdir()
    (tmp_path / "rect" / PRE_EDIT_FILE).write_text("{}")
    (tmp_path / "rect" / "summary.json").write_text('{"method": "rect"}')
    assert shared_pre_edit(tmp_path, ["memit", "rect"]) == tmp_path / "rect" / PRE_EDIT_FILE
    assert finished_summary(tmp_path / "rect") == {"method": "rect"} and not has_checkpoint(tmp_path / "rect")
