"""Pooling independent-edit slices: the pooled table is the table of all their cases together."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kedit.errors import DataError
from kedit.runs.pooling import paired_comparison, pool_runs
from kedit.runs.protocols import aggregate, headline

_score = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def knowedit_case(draw, case_id: int) -> dict:
    """A KnowEdit case; some requests have no portability block, as in the real records."""
    case = {"id": case_id, "edit_succ": draw(_score), "rephrase": draw(_score), "fluency": draw(st.floats(0, 6)),
            "locality": {"locality": draw(_score)}}
    if draw(st.booleans()):
        case["portability"] = {"reasoning": draw(_score)}
        case["portability_mean"] = case["portability"]["reasoning"]
    case["locality_mean"] = case["locality"]["locality"]
    return case


def _write_run(folder, cases_post, cases_pre, *, method="nake", protocol="knowedit", mode="independent",
               seconds=1.0):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"protocol": protocol, "cases": {"post": cases_post,
                                                                                    "pre": cases_pre}}))
    (folder / "summary.json").write_text(json.dumps({"method": method, "mode": mode,
                                                     "timing": {"edit_seconds_total": seconds}}))
    return folder


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(2, 12))
def test_pooled_slices_equal_the_table_of_all_cases(tmp_path_factory, data, n):
    post = [data.draw(knowedit_case(i)) for i in range(n)]
    pre = [data.draw(knowedit_case(i)) for i in range(n)]
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3)))
    bounds = [0, *cuts, n]
    root = tmp_path_factory.mktemp("slices")
    dirs = [_write_run(root / f"s{a}", post[a:b], pre[a:b], seconds=float(b - a) * 3.0)
            for a, b in zip(bounds, bounds[1:])]
    pooled = pool_runs(dirs)
    assert pooled["n"] == n
    assert _close(pooled["metrics"], headline("knowedit", aggregate("knowedit", post)))
    assert _close(pooled["pre_metrics"], headline("knowedit", aggregate("knowedit", pre)))
    assert math.isclose(pooled["fluency"]["post"], sum(c["fluency"] for c in post) / n)
    assert math.isclose(pooled["seconds_per_edit"], 3.0)


def test_portability_mean_is_over_the_requests_that_have_it(tmp_path):
    """Averaging the slices' headline numbers by n would give 0.5 here; the right pooled value is 1.0."""
    with_block = {"id": 0, "edit_succ": 1.0, "portability": {"reasoning": 1.0}, "portability_mean": 1.0,
                  "locality": {"locality": 1.0}, "locality_mean": 1.0}
    without = {"id": 1, "edit_succ": 0.0, "locality": {"locality": 0.0}, "locality_mean": 0.0}
    dirs = [_write_run(tmp_path / "a", [with_block], []), _write_run(tmp_path / "b", [without], [])]
    pooled = pool_runs(dirs)
    assert pooled["metrics"]["portability"] == 1.0 and pooled["metrics"]["edit_succ"] == 0.5
    assert pooled["pre_metrics"] is None


def test_overlapping_or_mismatched_slices_are_refused(tmp_path):
    case = {"id": 7, "edit_succ": 1.0}
    a = _write_run(tmp_path / "a", [case], [])
    with pytest.raises(DataError, match="request 7 is also in"):
        pool_runs([a, _write_run(tmp_path / "b", [case], [])])
    with pytest.raises(DataError, match="cannot pool with nake"):
        pool_runs([a, _write_run(tmp_path / "c", [{"id": 8, "edit_succ": 1.0}], [], method="unke")])
    with pytest.raises(DataError, match="only independent edits pool"):
        pool_runs([_write_run(tmp_path / "d", [case], [], mode="sequential")])
    with pytest.raises(DataError, match="summary.json: missing"):
        pool_runs([tmp_path / "nowhere"])
    with pytest.raises(DataError, match="no run directories"):
        pool_runs([])


def test_paired_comparison_counts_wins_and_brackets_the_mean_difference(tmp_path):
    loc_a = [0.5, 0.5, 0.25, 1.0, 0.0, 0.75]
    loc_b = [0.75, 0.5, 0.5, 1.0, 0.25, 1.0]

    def cases(locs, missing):
        return [{"id": i, "edit_succ": 1.0, "locality_mean": v, "portability_mean": None if i in missing else v}
                for i, v in enumerate(locs)]

    a = [_write_run(tmp_path / "a0", cases(loc_a, {1})[:3], [], method="unke"),
         _write_run(tmp_path / "a1", cases(loc_a, {1})[3:], [], method="unke")]
    b = [_write_run(tmp_path / "b", cases(loc_b, {4}), [], method="nake")]  # other slicing, same requests
    out = paired_comparison(a, b, "locality_mean")
    diffs = [y - x for x, y in zip(loc_a, loc_b)]
    assert out["n"] == 6 and out["n_missing"] == 0
    assert math.isclose(out["mean_diff"], sum(diffs) / 6) and math.isclose(out["mean_b"] - out["mean_a"], sum(diffs) / 6)
    assert (out["b_higher"], out["b_lower"], out["equal"]) == (4, 0, 2)
    lo, hi = out["ci95"]
    assert min(diffs) <= lo <= out["mean_diff"] <= hi <= max(diffs)
    assert paired_comparison(a, b, "locality_mean") == out  # seeded resampling
    port = paired_comparison(a, b, "portability_mean")
    assert port["n"] == 4 and port["n_missing"] == 2  # request 1 lacks it in A, request 4 in B
    same = paired_comparison(a, a, "edit_succ")
    assert same["mean_diff"] == 0 and same["ci95"] == [0, 0] and same["equal"] == 6


def test_paired_comparison_refuses_different_requests_or_metrics(tmp_path):
    a = [_write_run(tmp_path / "a", [{"id": 0, "edit_succ": 1.0}, {"id": 1, "edit_succ": 0.0}], [])]
    b = [_write_run(tmp_path / "b", [{"id": 0, "edit_succ": 1.0}], [])]
    with pytest.raises(DataError, match="different requests"):
        paired_comparison(a, b, "edit_succ")
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_comparison(a, a, "bleu")


def _knowedit(i, locality, edit=1.0):
    return {"id": i, "edit_succ": edit, "rephrase": 0.5, "fluency": 4.0, "locality": {"locality": locality},
            "locality_mean": locality, "portability": {"reasoning": 0.25}, "portability_mean": 0.25}


def _journal(folder, cos_pe):
    steps = [{"step": s, "layer": 1, "cos_pe": c, "cos_gp": 0.5, "cos_ge": 0.5 if c > -0.9 else -0.1,
              "lambda_p": 1.0, "lambda_e": 1.0, "norm_ratio": 1.0} for s, c in enumerate(cos_pe)]
    (folder / "journal.jsonl").write_text(json.dumps({"batch": 0, "info": {"diagnostics": steps}}) + "\n")


def test_pool_report_writes_the_tables_conflicts_and_pairs_of_sliced_benchmarks(tmp_path):
    from kedit.runs.pool_report import pool_report

    locs = {"unke": [0.5, 0.25, 1.0, 0.5], "nake": [0.75, 0.5, 1.0, 0.5]}
    for lo, hi, folder in ((0, 2, "s0"), (2, 4, "s1")):
        for name, loc in locs.items():
            run = _write_run(tmp_path / folder / name, [_knowedit(i, loc[i]) for i in range(lo, hi)],
                             [_knowedit(i, 1.0, edit=0.0) for i in range(lo, hi)], method=name, seconds=10.0)
            _journal(run, [-0.5, 0.2] if name == "unke" else [-0.95, -0.5])
    report = pool_report([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out", runs=["unke", "nake"],
                         pairs=[("unke", "nake")], title="zsRE")
    unke, nake = report["runs"]["unke"], report["runs"]["nake"]
    assert unke["n"] == nake["n"] == 4 and unke["seconds_per_edit"] == 5.0
    assert math.isclose(nake["metrics"]["locality"], 2.75 / 4)
    assert (unke["conflict_rate"], nake["conflict_rate"]) == (0.5, 1.0)  # over both slices' steps
    assert (unke["update_conflict_rate"], nake["update_conflict_rate"]) == (0.0, 0.5)
    tables = (tmp_path / "out" / "tables.md").read_text()
    assert "| nake | 1 | .500 | .250 | .688 | 4 | .500 | 1 | 5.0 |" in tables
    assert "| locality | +.125 [" in tables and "| 2 / 0 / 2 | 4 |" in tables
    saved = json.loads((tmp_path / "out" / "pooled.json").read_text())
    assert saved["paired"]["nake vs unke"][3]["b_higher"] == 2
    assert report["files"]["cosines"].exists() and report["files"]["paired_unke_nake"].exists()


def test_paired_scores_are_the_requests_both_sides_score(tmp_path):
    from kedit.runs.paired_plots import plot_paired_scores
    from kedit.runs.pooling import paired_scores

    a = [_write_run(tmp_path / "a", [{"id": 0, "fluency": 4.0}, {"id": 1, "fluency": None}], [])]
    b = [_write_run(tmp_path / "b", [{"id": 1, "fluency": 3.0}, {"id": 0, "fluency": 5.0}], [])]
    assert paired_scores(a, b, "fluency") == {"pairs": [(0, 4.0, 5.0)], "n_missing": 1}
    assert paired_scores(a, b, "rephrase") == {"pairs": [], "n_missing": 2}
    assert plot_paired_scores({"rephrase": []}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_pool_report_refuses_a_pair_it_does_not_pool(tmp_path):
    from kedit.runs.pool_report import pool_report

    run = _write_run(tmp_path / "s" / "unke", [_knowedit(0, 1.0)], [], method="unke")
    with pytest.raises(DataError, match=r"names \['nake'\]"):
        pool_report([tmp_path / "s"], tmp_path / "out", runs=["unke"], pairs=[("unke", "nake")])
    with pytest.raises(DataError, match="no slices"):
        pool_report([], tmp_path / "out")
    assert run.exists() and not (tmp_path / "out").exists()  # nothing written on refusal


def test_kedit_pool_pools_run_directories_of_one_method(tmp_path):
    from typer.testing import CliRunner

    from kedit.cli import app

    slices = [str(_write_run(tmp_path / f"r{k}", [_knowedit(k, 0.5)], [_knowedit(k, 1.0, edit=0.0)], method="unke"))
              for k in range(3)]
    result = CliRunner().invoke(app, ["pool", *slices, "--out", str(tmp_path / "out"), "--title", "zsRE"])
    assert result.exit_code == 0, result.output
    assert "| unke | 1 | .500 | .250 | .500 | 4 | 1.0 |" in (tmp_path / "out" / "tables.md").read_text()
    bad = CliRunner().invoke(app, ["pool", *slices, "--out", str(tmp_path / "o2"), "--pair", "unke"])
    assert bad.exit_code == 2 and "A,B" in bad.output
    overlap = CliRunner().invoke(app, ["pool", slices[0], slices[0], "--out", str(tmp_path / "o3")])
    assert overlap.exit_code == 2 and "disjoint" in overlap.output


def _long_case(i, bleu, rouge_recall, sim, *, paraphrase=True):
    """A long-answer case as ``evaluate_unstructured`` writes it (scores only)."""
    text = ["the cat sat on the mat"]
    block = {"bleu": bleu, "rouge_l": {"recall": rouge_recall, "f1": rouge_recall / 2}, "similarity": sim,
             "answers": text, "predictions": text}
    return {"id": i, "domain": None, "original": dict(block), "portability": {},
            "paraphrase": {**block, "bleu": bleu / 2} if paraphrase else None}


def test_long_answer_scores_are_read_per_question(tmp_path):
    from kedit.runs.pooling import LONG_FORM_METRICS, case_metrics, case_score, paired_scores

    case = _long_case(0, 0.8, 0.6, 0.9)
    assert case_metrics("unstructured") == LONG_FORM_METRICS and "fluency" in case_metrics("zsre")
    assert [case_score(case, m) for m in LONG_FORM_METRICS] == [0.8, 0.4, 0.6, 0.6, 0.9, 0.9]
    assert case_score(_long_case(1, 0.8, 0.6, 0.9, paraphrase=False), "bleu.paraphrase") is None
    a = [_write_run(tmp_path / "a", [_long_case(0, 0.5, 0.5, 0.5), _long_case(1, 0.2, 0.2, 0.2, paraphrase=False)],
                    [], method="anyedit", protocol="unstructured")]
    b = [_write_run(tmp_path / "b", [_long_case(1, 0.3, 0.3, 0.3), _long_case(0, 1.0, 0.5, 0.5)],
                    [], method="muke", protocol="unstructured")]
    assert paired_scores(a, b, "bleu.original") == {"pairs": [(0, 0.5, 1.0), (1, 0.2, 0.3)], "n_missing": 0}
    assert paired_scores(a, b, "bleu.paraphrase") == {"pairs": [(0, 0.25, 0.5)], "n_missing": 1}
    with pytest.raises(ValueError, match="'unstructured' runs"):
        paired_scores(a, b, "locality_mean")
    knowedit = [_write_run(tmp_path / "k", [{"id": 0, "edit_succ": 1.0}, {"id": 1, "edit_succ": 1.0}], [])]
    with pytest.raises(DataError, match="compare runs of one benchmark"):
        paired_scores(a, knowedit, "edit_succ")


def test_pool_report_of_long_answer_slices(tmp_path):
    from kedit.runs.pool_report import pool_report

    bleu = {"anyedit": [0.5, 0.75, 1.0], "muke": [1.0, 0.75, 1.0]}
    for lo, hi, folder in ((0, 1, "s0"), (1, 3, "s1")):
        for name, scores in bleu.items():
            _write_run(tmp_path / folder / f"unkebench-{name}",
                       [_long_case(i, scores[i], 0.5, 0.9) for i in range(lo, hi)],
                       [_long_case(i, 0.25, 0.25, 0.5) for i in range(lo, hi)],
                       method=name, protocol="unstructured", seconds=30.0)
    report = pool_report([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out",
                         runs=["unkebench-anyedit", "unkebench-muke"], pairs=[("unkebench-anyedit", "unkebench-muke")],
                         title="UnKEBench")
    assert report["runs"]["unkebench-muke"]["metrics"]["bleu"] == {"original": 2.75 / 3, "paraphrase": 2.75 / 6}
    lines = (tmp_path / "out" / "tables.md").read_text().splitlines()
    assert lines[0] == ("| UnKEBench, 3 records | BLEU orig. / para. | ROUGE-L r orig. / para. | "
                        "similarity orig. / para. | sacreBLEU orig. / para. | s/edit |")
    assert lines[2] == "| unedited | .250 / .125 | .250 / .250 | .500 / .500 | 1 / 1 | \u2013 |"
    assert lines[3] == "| unkebench-anyedit | .750 / .375 | .500 / .500 | .900 / .900 | 1 / 1 | 20.0 |"
    bleu_row = next(line for line in lines if line.startswith("| BLEU (orig.)"))
    assert bleu_row.startswith("| BLEU (orig.) | +.167 [") and bleu_row.endswith("| 1 / 0 / 2 | 3 |")
    assert report["files"]["paired_unkebench-anyedit_unkebench-muke"].exists()
