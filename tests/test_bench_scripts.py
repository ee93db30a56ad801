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
