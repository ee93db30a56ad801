"""The bench scripts' own logic: bench/long_form.py adds a later call's methods to the slice's table and
reuses its unedited scores; bench/length_sweep.py writes its summary as readable tables."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))  # length_sweep imports its sibling long_form
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def long_form():
    return _bench_module("long_form")


@pytest.fixture(scope="module")
def length_sweep():
    return _bench_module("length_sweep")


SLICE = {"max_answer_tokens": 128, "n": 20, "start": 8, "per_domain": 0, "domain_start": 0}


def test_earlier_runs_of_the_same_slice_are_kept(long_form, tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({**SLICE, "runs": {"unkebench:anyedit": {"n": 20}}}))
    assert long_form.earlier_runs(path, SLICE) == {"unkebench:anyedit": {"n": 20}}
    assert long_form.earlier_runs(path, {**SLICE, "start": 0}) == {}
    assert long_form.earlier_runs(path, {**SLICE, "max_answer_tokens": 256}) == {}
    assert long_form.earlier_runs(path, {**SLICE, "n": 8}) == {}
    assert long_form.earlier_runs(tmp_path / "absent.json", SLICE) == {}


def test_siblings_put_this_calls_methods_first(long_form, tmp_path):
    for name in ("unkebench-muke", "unkebench-anyedit", "editeverything-muke"):
        (tmp_path / name).mkdir()
    (tmp_path / "unkebench-stray.json").write_text("{}")
    assert long_form.siblings(tmp_path, "unkebench", ["unke"]) == ["unkebench-unke", "unkebench-anyedit",
                                                                   "unkebench-muke"]
    assert long_form.siblings(tmp_path, "unkebench", ["muke"]) == ["unkebench-muke", "unkebench-anyedit"]


def test_per_domain_takes_the_same_positions_in_every_domain(long_form):
    class R:
        def __init__(self, domain, i):
            self.domain, self.i = domain, i

    records = [R(d, i) for i, d in enumerate("aabaabbb")]
    chosen = long_form._per_domain(records, 2, skip=1)
    assert [(r.domain, r.i) for r in chosen] == [("a", 1), ("a", 3), ("b", 5), ("b", 6)]


class _WordTokenizer:
    """Tokens are words: lengths and cuts a test can count by eye."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}

    def decode(self, ids):
        return " ".join(self._words[: len(ids)])

    def __init__(self):
        self._words = []


def test_length_points_from_slices_and_archives(long_form, tmp_path, monkeypatch):
    from kedit.data.requests import EditRequest
    from kedit.runs.score_archive import archive_runs

    answers = {3: "one two three", 4: "a b c d e f g h", 9: "x y"}
    requests = [EditRequest(f"Q{i}?", None, a, id=i) for i, a in answers.items()]
    monkeypatch.setitem(long_form.DATASETS, "unkebench", (("unke", "x.json"), lambda path: requests))
    tok = _WordTokenizer()
    tok._words = "a b c d e f g h".split()

    def run(folder, scores):
        folder.mkdir(parents=True)
        post = [{"id": i, "original": {"bleu": b, "answers": ["t"], "predictions": ["t"]}} for i, b in scores.items()]
        (folder / "metrics.json").write_text(json.dumps({"protocol": "unstructured", "cases": {"post": post, "pre": []}}))
        (folder / "summary.json").write_text(json.dumps({"method": "m", "mode": "independent"}))

    run(tmp_path / "s0" / "unkebench-muke", {3: 0.5, 4: 1.0})
    run(tmp_path / "s1" / "unkebench-muke", {9: 0.25})
    run(tmp_path / "s1" / "unkebench-anyedit", {9: 0.75})
    (tmp_path / "s1" / "notes").mkdir()  # not a <dataset>-<method> folder
    archive_runs(tmp_path / "s1", tmp_path / "a1")
    points = long_form.slice_bleu_by_length([tmp_path / "s0", tmp_path / "a1"], tok, max_answer_tokens=5)
    assert points == {"anyedit": [(2, 0.75)], "muke": [(3, 0.5), (5, 1.0), (2, 0.25)]}  # record 4 cut to 5 tokens


def _point(length: int, mean: float, n: int) -> dict:
    return {"length": length, "n": n, "mean": mean, "ci95": [mean - 0.1, mean + 0.1]}


def test_sweep_table_rows_and_missing_cuts(length_sweep):
    paired = {"mean_diff": 0.168, "ci95": [0.011, 0.382], "b_higher": 4, "b_lower": 1}
    result = {"lengths": [32, 256],
              "series": {"bleu.original": {"unedited": [_point(32, 0.392, 5), _point(256, 0.094, 5)],
                                           "muke": [_point(32, 0.876, 5)]}},
              "paired": {"muke vs anyedit": {"bleu.original": {"256": paired}}},  # keys as read back from JSON
              "seconds_per_edit": {"muke": {"32": 21.9}}}
    rows = length_sweep.sweep_table(result, "bleu.original").splitlines()
    assert rows[0] == "| character BLEU, original question | 32 | 256 |"
    assert rows[2] == "| unedited | 0.392 (n=5) | 0.094 (n=5) |"
    assert rows[3] == "| muke | 0.876 (n=5) | – |"
    assert rows[4] == "| muke − anyedit [95 % interval] (higher / lower) | – | +0.168 [+0.011, +0.382] (4 / 1) |"
    assert rows[5] == "| s/edit muke | 22 | – |"
