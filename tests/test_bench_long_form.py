"""bench/long_form.py: a later call with other --methods adds to the slice's table and reuses its
unedited scores."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "long_form.py"


@pytest.fixture(scope="module")
def long_form():
    spec = importlib.util.spec_from_file_location("bench_long_form", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SLICE = {"max_answer_tokens": 128, "start": 8, "domain_start": 0}


def test_earlier_runs_of_the_same_slice_are_kept(long_form, tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({**SLICE, "runs": {"unkebench:anyedit": {"n": 20}}}))
    assert long_form.earlier_runs(path, SLICE) == {"unkebench:anyedit": {"n": 20}}
    assert long_form.earlier_runs(path, {**SLICE, "start": 0}) == {}
    assert long_form.earlier_runs(path, {**SLICE, "max_answer_tokens": 256}) == {}
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
