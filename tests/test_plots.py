"""Journal plots compared across methods (LyapLock Fig. 3/4), from synthetic journals."""
from __future__ import annotations

import json

import pytest

from kedit.runs.plots import plot_preservation_comparison, plot_probe_comparison, preservation_series
from kedit.runs.retention import place_cases, plot_retention, retention_series, stream_order

_PNG = b"\x89PNG\r\n\x1a\n"


def _journal(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _probes(f1):
    return {"sst2": {"accuracy": f1, "f1": f1}, "rte": {"accuracy": f1, "f1": f1 / 2}}


def _synthetic(tmp_path):
    """memit: health D(t) and probes; lyaplock: queue info and health D(t); ft: neither."""
    memit = _journal(tmp_path / "memit.jsonl", [
        {"batch": b, "n_requests": 10, "health": {"preservation_loss": {"4": 0.1 * 3 ** b, "5": 0.2 * 3 ** b},
                                                  **({"probes": _probes(0.8 - 0.2 * b)} if b % 2 else {})}}
        for b in range(4)])
    lyaplock = _journal(tmp_path / "lyaplock.jsonl", [
        {"batch": b, "n_requests": 10,
         "info": {"lyaplock": {"D": {"4": 0.01 * (b + 1), "5": 0.02}, "budget": {"4": 0.6, "5": 1.2},
                               "Z": {"4": 1.0, "5": 1.0}, "weight": {"4": 1000.0, "5": 1000.0}}},
         "health": {"preservation_loss": {"4": 0.011 * (b + 1), "5": 0.021}}}
        for b in range(4)])
    ft = _journal(tmp_path / "ft.jsonl", [{"batch": 0, "n_requests": 10, "health": {"perplexity": 3.0}}])
    return {"memit": memit, "lyaplock": lyaplock, "ft": ft}


def test_preservation_series_prefers_the_health_measurement(tmp_path):
    journals = _synthetic(tmp_path)
    rows = preservation_series(journals["lyaplock"])
    assert [r["edits"] for r in rows] == [10, 20, 30, 40]
    assert rows[1]["D"] == {4: 0.022, 5: 0.021} and rows[1]["budget"] == {4: 0.6, 5: 1.2}
    assert preservation_series(journals["memit"])[2] == {"edits": 30, "D": {4: 0.9, 5: 1.8}, "budget": None}
    assert preservation_series(journals["ft"]) == []
    queue_only = _journal(tmp_path / "queue.jsonl", [{"n_requests": 5, "info": {"lyaplock": {"D": {"1": 2.0},
                                                                                            "budget": {"1": 3.0}}}}])
    assert preservation_series(queue_only) == [{"edits": 5, "D": {1: 2.0}, "budget": {1: 3.0}}]


def test_comparison_plots_write_pngs(tmp_path):
    journals = _synthetic(tmp_path)
    out = plot_preservation_comparison(journals, tmp_path / "out" / "preservation_loss.png")
    assert out.read_bytes().startswith(_PNG) and out.stat().st_size > 1000
    out = plot_probe_comparison(journals, tmp_path / "out" / "probes.png", pre={"memit": 0.7, "ft": None})
    assert out.read_bytes().startswith(_PNG) and out.stat().st_size > 1000
    assert plot_preservation_comparison({"ft": journals["ft"]}, tmp_path / "none.png") is None
    assert plot_probe_comparison({"lyaplock": journals["lyaplock"]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


# -- retention by stream position ----------------------------------------------------------------
def _sequential_run(path, order, post, pre=None):
    """A finished run directory: batches of two applying ``order``; ``post``/``pre``: id → efficacy (None = skipped)."""
    path.mkdir()
    _journal(path / "journal.jsonl", [{"batch": b, "request_ids": order[2 * b:2 * b + 2], "n_requests": 2}
                                      for b in range((len(order) + 1) // 2)])
    cases = {"post": [{"id": i, "efficacy": v, "skipped": v is None} for i, v in post.items()],
             "pre": [{"id": i, "efficacy": v} for i, v in (pre or {}).items()]}
    (path / "metrics.json").write_text(json.dumps({"protocol": "counterfact", "cases": cases}), encoding="utf-8")
    return path


def test_retention_series_places_cases_by_the_journal_order(tmp_path):
    # applied 5, 3, 9, 1, 7; 7 skipped; 42 never applied
    run = _sequential_run(tmp_path / "run", [5, 3, 9, 1, 7],
                          {5: 0.0, 3: 0.25, 9: 1.0, 1: 0.5, 42: 1.0, 7: None},
                          pre={5: 0.5, 3: 0.5, 9: 0.0, 1: 0.0})
    assert stream_order(run / "journal.jsonl") == [5, 3, 9, 1, 7]
    rows = retention_series(run, "efficacy", bins=2)
    assert rows == [{"first": 1, "last": 2, "n": 2, "post": 0.125, "pre": 0.5},
                    {"first": 3, "last": 4, "n": 2, "post": 0.75, "pre": 0.0}]
    assert [r["n"] for r in retention_series(run, bins=3)] == [2, 1, 1]
    assert len(retention_series(run, bins=99)) == 4  # never more groups than cases
    assert retention_series(run, "generalization", bins=1)[0]["post"] is None


def test_cases_are_placed_on_a_stride_and_in_streams_that_repeat_an_id():
    order = ["a", "b", "a", "c", "b", "a"]
    assert place_cases(order, [{"id": "a"}, {"id": "a"}, {"id": "b"}]) == [1, 3, 5]  # score_every 2
    assert place_cases(order, [{"id": "a"}, {"id": "z"}, {"id": "c"}]) == [1, None, 4]
    assert place_cases(order, [{"id": "c"}, {"id": "b"}, {"id": "c"}]) == [4, 5, None]  # none after 5


def test_retention_refuses_bad_input_and_plots_only_scored_runs(tmp_path):
    run = _sequential_run(tmp_path / "run", [0, 1, 2, 3], {0: 0.0, 1: 1.0, 2: 1.0, 3: 1.0}, pre={0: 0.0, 1: 0.0})
    with pytest.raises(ValueError, match="bins must be an int >= 1"):
        retention_series(run, bins=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no journal.jsonl or metrics.json"):
        retention_series(tmp_path / "empty")
    out = plot_retention({"memit": run}, tmp_path / "out" / "retention.png", bins=2)
    assert out.read_bytes().startswith(_PNG)
    unscored = _sequential_run(tmp_path / "unscored", [0, 1], {0: None, 1: None})
    assert plot_retention({"x": unscored}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
