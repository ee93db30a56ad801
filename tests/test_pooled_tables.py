"""The markdown tables the docs take from pooled results: number formats, columns left out, refusals."""
from __future__ import annotations

import pytest

from kedit.runs.pooled_tables import fmt_diff, fmt_score, paired_table, runs_table


@pytest.mark.parametrize("x, text", [(0.9585, ".959"), (1.0, "1"), (0.0, "0"), (0.0004, "0"), (-0.0004, "0"),
                                     (0.9996, "1.000"), (-0.0125, "\u2212.013"), (4.5136, "4.51"),
                                     (None, "\u2013"), (float("nan"), "\u2013")])
def test_scores_print_as_the_docs_write_them(x, text):
    assert fmt_score(x) == text


@pytest.mark.parametrize("x, text", [(0.0483, "+.048"), (-0.0133, "\u2212.013"), (0.0, "0"), (0.1344, "+.134")])
def test_differences_carry_their_sign(x, text):
    assert fmt_diff(x) == text


def _run(n, edit, locality, portability=None, **extra):
    metrics = {"edit_succ": edit, "rephrase": 0.5, "locality": locality}
    pre = {"edit_succ": 0.2, "rephrase": 0.2, "locality": 1.0}
    if portability is not None:
        metrics["portability"], pre["portability"] = portability, 0.35
    return {"n": n, "metrics": metrics, "pre_metrics": pre, "fluency": {"pre": 3.07, "post": 4.5},
            "seconds_per_edit": 30.44, **extra}


def test_runs_table_rows_and_columns():
    runs = {"unke": _run(100, 0.959, 0.599, 0.299, conflict_rate=0.767, update_conflict_rate=0.373),
            "nake": _run(100, 0.959, 0.647, 0.309, conflict_rate=0.975, update_conflict_rate=0.0)}
    lines = runs_table("zsRE", runs).splitlines()
    assert lines[0] == ("| zsRE, 100 records | edit succ. | rephrase | portability | locality | fluency (bits) "
                        "| update conflicts | raw conflicts | s/edit |")
    assert lines[2] == "| unedited | .200 | .200 | .350 | 1 | 3.07 | \u2013 | \u2013 | \u2013 |"
    assert lines[4] == "| nake | .959 | .500 | .309 | .647 | 4.50 | 0 | .975 | 30.4 |"


def test_columns_no_run_has_are_left_out():
    """CounterFact carries no portability, and runs without diagnostics no conflict rates."""
    header = runs_table("CounterFact", {"unke": _run(90, 0.989, 0.591)}).splitlines()[0]
    assert "portability" not in header and "conflicts" not in header
    assert header.startswith("| CounterFact, 90 records | edit succ. | rephrase | locality |")


def test_runs_over_different_records_are_refused():
    with pytest.raises(ValueError, match="same records"):
        runs_table("zsRE", {"unke": _run(100, 0.9, 0.6), "nake": _run(90, 0.9, 0.6)})
    with pytest.raises(ValueError, match="no runs"):
        runs_table("zsRE", {})


def test_paired_table_skips_metrics_no_request_has():
    rows = [{"metric": "locality_mean", "n": 100, "mean_diff": 0.0483, "ci95": [0.0181, 0.0792],
             "b_higher": 23, "b_lower": 4, "equal": 73},
            {"metric": "portability_mean", "n": 0, "mean_diff": None, "ci95": None,
             "b_higher": 0, "b_lower": 0, "equal": 0}]
    lines = paired_table("zsRE: nake vs unke", rows).splitlines()
    assert lines[2:] == ["| locality | +.048 [.018, .079] | 23 / 4 / 73 | 100 |"]


def _long_run(n, bleu, by_domain=None):
    metrics = {"bleu": {"original": bleu, "paraphrase": None},
               "rouge_l": {"original": {"recall": 0.5, "f1": 0.4}, "paraphrase": {"recall": None, "f1": None}},
               "similarity": {"original": 0.9, "paraphrase": None}, "sacrebleu": {"original": 0.25, "paraphrase": None}}
    if by_domain:
        metrics["by_domain"] = {d: {"bleu": b, "rouge_l": None, "similarity": None} for d, b in by_domain.items()}
    return {"n": n, "protocol": "unstructured", "metrics": metrics, "pre_metrics": None, "seconds_per_edit": 101.96}


def test_long_answer_runs_get_their_own_table_and_domains():
    """Long answers print orig. / para. pairs (a benchmark without rephrases shows –) and, for
    EditEverything, BLEU per domain in the order the runs first name them."""
    text = runs_table("EditEverything", {"anyedit": _long_run(10, 0.8, {"math": 0.5, "code": 1.0}),
                                         "muke": _long_run(10, 0.9, {"code": 0.75, "news": 0.25})})
    lines = text.splitlines()
    assert lines[2] == "| anyedit | .800 / \u2013 | .500 / \u2013 | .900 / \u2013 | .250 / \u2013 | 102.0 |"
    assert "| EditEverything: BLEU (orig.) by domain | math | code | news |" in lines
    assert lines[-1] == "| muke | \u2013 | .750 | .250 |"
    assert "by domain" not in runs_table("UnKEBench", {"muke": _long_run(10, 0.9)})


def test_a_long_answer_column_no_run_has_is_left_out():
    """Score archives carry no texts, hence no corpus sacreBLEU: the column goes, the others stay."""
    archived = _long_run(10, 0.8)
    archived["metrics"]["sacrebleu"] = {"original": None, "paraphrase": None}
    lines = runs_table("UnKEBench", {"anyedit": archived}).splitlines()
    assert lines[0] == ("| UnKEBench, 10 records | BLEU orig. / para. | ROUGE-L r orig. / para. | "
                        "similarity orig. / para. | s/edit |")
    assert lines[2] == "| anyedit | .800 / \u2013 | .500 / \u2013 | .900 / \u2013 | 102.0 |"
    assert "sacreBLEU" in runs_table("UnKEBench", {"anyedit": archived, "muke": _long_run(10, 0.9)})
