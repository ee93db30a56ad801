"""Kill-and-resume of an independent run: the finished batches' scores are read back from the
journal, no batch is edited twice or skipped, and the tables equal an uninterrupted run's."""
from __future__ import annotations

import json

import pytest

import kedit.editor
from kedit.errors import LedgerError
from kedit.runs.runner import run_bench
from kedit.testing.checks import cheap_config, kill_at_edit, tiny_requests, write_tiny_corpus
from kedit.testing.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


@pytest.fixture()
def setup(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    kwargs = dict(method="memit", requests=tiny_requests() * 2, dataset="counterfact", batch_size=2,
                  mode="independent", config=cheap_config("memit", corpus), cache_dir=tmp_path / "cache",
                  progress=False, keep_pre_edit=True)
    return model, tok, kwargs


def _edited_batches(monkeypatch) -> list[list[str]]:
    """Record the request ids of every batch ``Editor.edit`` is called on from here on."""
    original, seen = kedit.editor.Editor.edit, []

    def edit(self, requests):
        seen.append([r.id for r in requests])
        return original(self, requests)

    monkeypatch.setattr(kedit.editor.Editor, "edit", edit)
    return seen


def _tables(run):
    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return metrics["post"], metrics["cases"]["post"], summary["metrics"], summary["fluency"]


def test_independent_resume_after_kill_reads_finished_batches_back(tmp_path, monkeypatch, setup):
    model, tok, kwargs = setup
    run_bench(model, tok, out_dir=tmp_path / "straight", **kwargs)
    kill_at_edit(monkeypatch, 3)  # batches 1 and 2 finish, the kill comes before batch 3
    with pytest.raises(KeyboardInterrupt):
        run_bench(model, tok, out_dir=tmp_path / "killed", **kwargs)
    monkeypatch.undo()
    seen = _edited_batches(monkeypatch)
    summary = run_bench(model, tok, out_dir=tmp_path / "killed", resume=True, **kwargs)
    assert seen == [["tiny-1", "tiny-2"]]  # only the third batch is edited again
    assert _tables(tmp_path / "killed") == _tables(tmp_path / "straight")
    journal = [json.loads(line) for line in (tmp_path / "killed" / "journal.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in journal] == [0, 1, 2]
    assert summary["timing"]["edit_seconds_total"] == pytest.approx(sum(r["seconds"] for r in journal), abs=1e-5)


def test_a_line_cut_off_by_the_kill_is_edited_again(tmp_path, monkeypatch, setup):
    model, tok, kwargs = setup
    run = tmp_path / "run"
    run_bench(model, tok, out_dir=run, **kwargs)
    straight = _tables(run)
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    (run / "journal.jsonl").write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-write
    seen = _edited_batches(monkeypatch)
    run_bench(model, tok, out_dir=run, resume=True, **kwargs)
    assert seen == [["tiny-2", "tiny-0"], ["tiny-1", "tiny-2"]]
    assert _tables(run) == straight


def test_resume_of_a_finished_run_edits_nothing_and_of_an_empty_folder_everything(tmp_path, monkeypatch, setup):
    model, tok, kwargs = setup
    run_bench(model, tok, out_dir=tmp_path / "run", **kwargs)
    straight = _tables(tmp_path / "run")
    seen = _edited_batches(monkeypatch)
    run_bench(model, tok, out_dir=tmp_path / "run", resume=True, **kwargs)
    assert seen == [] and _tables(tmp_path / "run") == straight
    run_bench(model, tok, out_dir=tmp_path / "fresh", resume=True, **kwargs)
    assert len(seen) == 3 and _tables(tmp_path / "fresh") == straight


@pytest.mark.parametrize("change", ["config", "requests", "batch_size"])
def test_independent_resume_refuses_another_runs_folder(tmp_path, setup, change):
    model, tok, kwargs = setup
    run_bench(model, tok, out_dir=tmp_path / "run", **kwargs)
    before = (tmp_path / "run" / "journal.jsonl").read_text()
    other = dict(kwargs)
    if change == "config":
        other["config"] = {**kwargs["config"], "mom2_update_weight": 7.0}
    elif change == "requests":
        other["requests"] = kwargs["requests"][:4]
    else:
        other["batch_size"] = 3
    with pytest.raises(LedgerError, match="belongs to a different run"):
        run_bench(model, tok, out_dir=tmp_path / "run", resume=True, **other)
    assert (tmp_path / "run" / "journal.jsonl").read_text() == before  # nothing lost


def test_resume_on_another_cpu_warns_and_keeps_the_finished_requests(tmp_path, monkeypatch, setup, caplog):
    """Long-answer edits can sit on an edge where another CPU's kernels round the greedy answer the
    other way; a resume there still reads the finished requests back, and says what it mixes."""
    model, tok, kwargs = setup
    run_bench(model, tok, out_dir=tmp_path / "run", **kwargs)
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cpu"] = {"model": "Other CPU", "torch_capability": "AVX2"}
    manifest_path.write_text(json.dumps(manifest))
    seen = _edited_batches(monkeypatch)
    with caplog.at_level("WARNING", logger="kedit.runs.checkpoint"):
        run_bench(model, tok, out_dir=tmp_path / "run", resume=True, **kwargs)
    assert seen == []
    assert "edited on {'model': 'Other CPU', 'torch_capability': 'AVX2'}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kedit.runs.checkpoint"):
        run_bench(model, tok, out_dir=tmp_path / "run", resume=True, **kwargs)  # the manifest now names this CPU
    assert "edited on" not in caplog.text


def test_an_interrupted_run_archives_the_requests_it_finished(tmp_path, monkeypatch, setup):
    from kedit.errors import DataError
    from kedit.runs.pooling import pool_runs
    from kedit.runs.score_archive import archive_run, archive_runs

    model, tok, kwargs = setup
    kwargs = {**kwargs, "requests": tiny_requests(), "batch_size": 1}
    run_bench(model, tok, out_dir=tmp_path / "straight", **kwargs)
    kill_at_edit(monkeypatch, 3)  # requests 0 and 1 finish
    with pytest.raises(KeyboardInterrupt):
        run_bench(model, tok, out_dir=tmp_path / "bench" / "killed", **kwargs)
    monkeypatch.undo()
    with pytest.raises(DataError, match="--unfinished"):
        archive_run(tmp_path / "bench" / "killed", tmp_path / "a")
    (out,) = archive_runs(tmp_path / "bench", tmp_path / "a", unfinished=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["unfinished"] == "2 of 3 requests"
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["cases"]
    kept = json.loads((out / "metrics.json").read_text())["cases"]
    assert kept["post"] == straight["post"][:2] and kept["pre"] == straight["pre"][:2]
    journal = [json.loads(line) for line in (tmp_path / "bench" / "killed" / "journal.jsonl").read_text().splitlines()]
    assert pool_runs([out])["seconds_per_edit"] == pytest.approx(sum(r["seconds"] for r in journal) / 2)

    # the third request, edited later as a slice of its own, joins the same archive
    run_bench(model, tok, out_dir=tmp_path / "rest", **{**kwargs, "requests": tiny_requests()[2:]})
    archive_run(tmp_path / "rest", out)
    assert pool_runs([out])["metrics"] == pool_runs([tmp_path / "straight"])["metrics"]
    assert "unfinished" not in json.loads((out / "summary.json").read_text())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.json").write_text((tmp_path / "bench" / "killed" / "manifest.json").read_text())
    with pytest.raises(DataError, match="no finished request"):
        archive_run(tmp_path / "empty", tmp_path / "b", unfinished=True)
