"""Score archives: a run without its texts pools and pairs to the same numbers as the run."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kedit.cli import app
from kedit.errors import DataError
from kedit.runs.pooling import LONG_FORM_METRICS, paired_scores_by_metric, pool_runs
from kedit.runs.score_archive import TEXT_KEYS, archive_run, archive_runs, strip_texts

QUESTION, ANSWER = "Which river flows through Quimper?", "The Odet flows through Quimper and on to Bénodet."


def _block(bleu: float, prediction: str) -> dict:
    return {"question": QUESTION, "answers": [ANSWER], "predictions": [prediction], "bleu": bleu,
            "rouge_l": {"recall": bleu, "f1": bleu / 2}, "similarity": 1 - bleu / 3}


def _case(i: int, bleu: float) -> dict:
    para = {**_block(bleu / 2, "The Loire."), "questions": [QUESTION], "per_question": [{"bleu": bleu / 2}]}
    del para["question"]
    return {"id": i, "domain": None, "max_new_tokens": 64, "original": _block(bleu, f"The Odet, {i}."),
            "paraphrase": para, "portability": {"sub_question": {"predictions": ["x"], "rouge_l": {"recall": bleu, "f1": 0.1}}},
            "fluency": 4.0 + bleu}


def _run(folder, ids, scores, *, method="muke", config_hash="c1"):
    folder.mkdir(parents=True)
    cases = {"post": [_case(i, s) for i, s in zip(ids, scores)], "pre": [_case(i, s / 4) for i, s in zip(ids, scores)]}
    (folder / "metrics.json").write_text(json.dumps({"protocol": "unstructured", "cases": cases}))
    (folder / "summary.json").write_text(json.dumps({"method": method, "mode": "independent", "dataset": "unkebench",
                                                     "n": len(ids), "timing": {"edit_seconds_total": 10.0 * len(ids)}}))
    (folder / "manifest.json").write_text(json.dumps({"format": "kedit.run", "request_ids": list(ids),
                                                      "config_hash": config_hash}))
    (folder / "journal.jsonl").write_text(json.dumps({"cases": cases["post"]}) + "\n")
    return folder


@settings(max_examples=25, deadline=None)
@given(value=st.recursive(st.none() | st.floats(allow_nan=False) | st.text(max_size=3),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(sorted(TEXT_KEYS) + ["bleu", "id", "cases"]), inner, max_size=4),
                          max_leaves=20))
def test_strip_texts_leaves_no_text_key_and_every_other_value(nested_keys, value):
    stripped = strip_texts(value)
    assert not TEXT_KEYS & nested_keys(stripped)
    assert strip_texts(stripped) == stripped
    if not TEXT_KEYS & nested_keys(value):
        assert stripped == value


def test_archive_holds_no_text_and_pools_to_the_runs_scores(tmp_path):
    a = [_run(tmp_path / "s0" / "unkebench-anyedit", [0, 1], [0.5, 0.25], method="anyedit"),
         _run(tmp_path / "s1" / "unkebench-anyedit", [2], [1.0], method="anyedit")]
    b = [_run(tmp_path / "s0" / "unkebench-muke", [0, 1], [0.75, 0.5]), _run(tmp_path / "s1" / "unkebench-muke", [2], [0.5])]
    archived = [archive_runs(tmp_path / s, tmp_path / "archive" / s) for s in ("s0", "s1")]
    assert [p.name for p in archived[0]] == ["unkebench-anyedit", "unkebench-muke"]
    for path in (tmp_path / "archive").rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "Quimper" not in text and "Odet" not in text and "Loire" not in text, path
    assert sorted(p.name for p in (tmp_path / "archive" / "s0" / "unkebench-muke").iterdir()) == \
        ["metrics.json", "sources.json", "summary.json"]

    arch_a = [tmp_path / "archive" / s / "unkebench-anyedit" for s in ("s0", "s1")]
    arch_b = [tmp_path / "archive" / s / "unkebench-muke" for s in ("s0", "s1")]
    run, kept = pool_runs(a), pool_runs(arch_a)
    for score in ("bleu", "rouge_l", "similarity"):
        assert kept["metrics"][score] == run["metrics"][score]
        assert kept["pre_metrics"][score] == run["pre_metrics"][score]
    assert kept["metrics"]["bleu"]["original"] == pytest.approx(1.75 / 3)
    assert kept["fluency"] == run["fluency"] and kept["seconds_per_edit"] == run["seconds_per_edit"] == 10.0
    assert run["metrics"]["sacrebleu"]["original"] is not None and kept["metrics"]["sacrebleu"]["original"] is None
    assert kept["metrics"]["sub_question_rouge_l"] == run["metrics"]["sub_question_rouge_l"]
    assert paired_scores_by_metric(arch_a, arch_b) == paired_scores_by_metric(a, b)
    assert set(paired_scores_by_metric(arch_a, arch_b)) == set(LONG_FORM_METRICS)


def test_archive_refuses_unfinished_runs_and_its_own_source(tmp_path):
    run = _run(tmp_path / "bench" / "unkebench-muke", [0], [0.5])
    (tmp_path / "bench" / "unkebench-unke").mkdir()
    (tmp_path / "bench" / "unkebench-unke" / "journal.jsonl").write_text("")
    written = archive_runs(tmp_path / "bench", tmp_path / "out")
    assert [p.name for p in written] == ["unkebench-muke"]  # the interrupted run is skipped
    with pytest.raises(DataError, match="not a finished run .*summary.json"):
        archive_run(tmp_path / "bench" / "unkebench-unke", tmp_path / "out2")
    with pytest.raises(DataError, match="would overwrite"):
        archive_run(run, run)
    with pytest.raises(DataError, match="holds no finished run"):
        archive_runs(tmp_path / "bench" / "unkebench-unke", tmp_path / "out3")
    assert json.loads((run / "metrics.json").read_text())["cases"]["post"][0]["original"]["answers"] == [ANSWER]


def test_cli_archive_then_pool(tmp_path):
    runner = CliRunner()
    _run(tmp_path / "s0" / "unkebench-muke", [0, 1], [0.5, 1.0])
    ok = runner.invoke(app, ["archive", str(tmp_path / "s0"), "--out", str(tmp_path / "a0")])
    assert ok.exit_code == 0 and "Archived 1 run(s)" in ok.output
    pooled = runner.invoke(app, ["pool", str(tmp_path / "a0"), "--runs", "unkebench-muke", "--out", str(tmp_path / "p")])
    assert pooled.exit_code == 0, pooled.output
    assert json.loads((tmp_path / "p" / "pooled.json").read_text())["runs"]["unkebench-muke"]["n"] == 2
    empty = runner.invoke(app, ["archive", str(tmp_path / "p"), "--out", str(tmp_path / "a1")])
    assert empty.exit_code == 2 and "holds no finished run" in empty.output


def test_slices_accumulate_in_one_archive(tmp_path):
    runs = [_run(tmp_path / "a" / "muke", [0, 1], [0.5, 0.25]), _run(tmp_path / "b" / "muke", [2], [1.0])]
    out = tmp_path / "archive" / "unkebench-muke"
    archive_run(runs[0], out)
    archive_run(runs[1], out)
    pooled, kept = pool_runs(runs), pool_runs([out])
    assert kept["n"] == 3 and kept["metrics"]["bleu"] == pooled["metrics"]["bleu"]
    assert kept["seconds_per_edit"] == pooled["seconds_per_edit"] == 10.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["timing"]["edit_seconds_total"] == 30.0
    assert summary["metrics"]["bleu"]["original"] == pytest.approx(1.75 / 3)  # recomputed, not the last slice's
    assert summary["metrics"]["sacrebleu"]["original"] is None
    assert [m["request_ids"] for m in json.loads((out / "sources.json").read_text())] == [[0, 1], [2]]

    with pytest.raises(DataError, match=r"already holds requests \['2'\]"):
        archive_run(runs[1], out)
    with pytest.raises(DataError, match="cannot add anyedit"):
        archive_run(_run(tmp_path / "c" / "anyedit", [5], [0.5], method="anyedit"), out)
    with pytest.raises(DataError, match="archive runs of one config together"):
        archive_run(_run(tmp_path / "d" / "muke", [6], [0.5], config_hash="c2"), out)
    assert json.loads((out / "summary.json").read_text())["n"] == 3  # refused additions change nothing
