"""KnowEdit loader, KnowEdit metrics on a tiny model, and the Nash diagnostics plots/journal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kedit.data.knowedit import LOCALITY_PREFIX, load_knowedit
from kedit.data.loaders import DATASET_LOADERS, load_requests
from kedit.data.requests import EditRequest
from kedit.errors import DataError
from kedit.eval.cache import PreEditCache
from kedit.eval.knowedit import evaluate_knowedit
from kedit.runs.nash_plots import (
    load_diagnostics,
    merge_diagnostics,
    plot_cosine_histograms,
    plot_fixed_weight_sweep,
    plot_nash_figures,
    plot_weight_trajectories,
    write_diagnostics,
)
from kedit.stages.bargaining import bargain, plain_sum
from kedit.testing.tiny import tiny_model

FIXTURE = Path(__file__).parent / "fixtures" / "knowedit_sample.json"


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    """Tiny models run much faster on one intra-op thread; restored after the module."""


@pytest.fixture(scope="module")
def requests_():
    return load_knowedit(FIXTURE)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


# -- loader ------------------------------------------------------------------------------------------------------
def test_fixture_loads_all_styles(requests_):
    assert [r.id for r in requests_] == [0, 1, 2, 3]
    cf, cf_lists, recent, zsre = requests_
    # counterfact, string ground truths
    assert cf.prompt == "The native language of {} is" and cf.subject == "Mara Velk"
    assert cf.target_new == "Finnish" and cf.target_true == "Dutch"
    assert cf.portability["Subject_Aliasing"] == (("The native language of M. Velk is", "Finnish"),)
    assert cf.portability["reasoning"][0][1] == "Finland"  # [["Finland", alias]] -> first string
    rs = cf.portability[LOCALITY_PREFIX + "Relation_Specificity"]
    fa = cf.portability[LOCALITY_PREFIX + "Forgetfulness"]
    assert len(rs) == 2 and len(fa) == 1
    assert cf.locality == rs + fa  # flat union, in group order
    # counterfact, nested-list ground truths; "Reasoning" renamed "reasoning"
    assert cf_lists.target_true == "Tomas Reed"
    assert [a for _, a in cf_lists.portability["reasoning"]] == ["Latvia", "female"]
    assert "Reasoning" not in cf_lists.portability
    # recent: no ground_truth, a rephrase, Logical_Generalization [["no"], ["incorrect"], ...] -> "no"
    assert recent.target_true is None and recent.rephrases == ("Ilse Marrow died in the city of",)
    assert recent.portability["Logical_Generalization"] == (("Is Ilse Marrow still alive?", "no"),)
    assert LOCALITY_PREFIX + "Forgetfulness" not in recent.portability
    # KnowEdit-ZsRE style: rephrase_prompt, list ground truth, subject matched case-insensitively
    assert zsre.subject == "Velorum tree" and zsre.prompt == "Which genus does the {} belong to?"
    assert zsre.target_true == "Acer" and zsre.rephrases == ("What genus is the Velorum tree part of?",)
    assert zsre.locality == (("The taxon rank of the Velorum tree is", "species"),)


def test_first_only_slice_and_registry(requests_):
    first = load_knowedit(FIXTURE, first_only=True, n=2, start=1)
    assert [r.id for r in first] == [1, 2]
    assert len(first[0].portability["reasoning"]) == 1
    assert DATASET_LOADERS["knowedit"] is load_knowedit
    assert load_requests("knowedit", FIXTURE) == requests_


def _write(tmp_path, records) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


GOOD = {"subject": "Ada", "prompt": "Ada was born in", "target_new": "Paris",
        "locality": {"Relation_Specificity": [{"prompt": "Ada works as", "ground_truth": "a poet"}]}}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"target_new": None}, "target_new"),
        ({"target_new": ""}, "target_new"),
        ({"subject": "Bob"}, "subject"),
        ({"ground_truth": []}, "ground_truth"),
        ({"ground_truth": [[5]]}, r"ground_truth\[0\]\[0\]"),
        ({"portability": ["x"]}, "portability"),
        ({"portability": {"Subject_Aliasing": "x"}}, "portability.Subject_Aliasing"),
        ({"locality": {"Relation_Specificity": [{"prompt": "Ada works as"}]}}, r"locality.Relation_Specificity\[0\].ground_truth"),
        ({"locality": {"Forgetfulness": [{"prompt": "", "ground_truth": "x"}]}}, r"locality.Forgetfulness\[0\].prompt"),
        ({"rephrase": 3}, "rephrase"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, change, field):
    record = {**GOOD, **change}
    record = {k: v for k, v in record.items() if v is not None}
    path = _write(tmp_path, [GOOD, record])
    with pytest.raises(DataError, match=rf"bad\.json: record 1: field '{field}'"):
        load_knowedit(path)
    assert len(load_knowedit(path, n=1)) == 1  # only the selected records are validated


def test_wikibio_records_are_rejected(tmp_path):
    path = _write(tmp_path, [{"text": "This is a passage.", "labels": "More text.", "concept": "x"}])
    with pytest.raises(DataError, match="WikiBio"):
        load_knowedit(path)


# -- metrics ------------------------------------------------------------------------------------------------------
PORTABILITY = ("Subject_Aliasing", "reasoning", "Logical_Generalization")
LOCALITY = ("Relation_Specificity", "Forgetfulness")


def test_unchanged_model_has_full_locality_and_all_groups(llama, requests_):
    model, tok = llama
    pre = PreEditCache.build(model, tok, requests_)
    out = evaluate_knowedit(model, tok, requests_, pre, fluency=False)
    metrics = out["metrics"]
    assert set(metrics["portability"]) == set(PORTABILITY)
    assert set(metrics["locality"]) == set(LOCALITY)
    assert all(v == 1.0 for v in metrics["locality"].values()) and metrics["locality_mean"] == 1.0
    assert metrics["n_cases"] == 4 and metrics["fluency"] is None
    for key in ("Edit Succ.", "Rephrase", "SAA", "LGA", "RA", "Portability", "RSA", "FA", "Locality", "Fluency"):
        assert key in out["summary"]
    assert out["summary"]["RSA"] == 100.0 and out["summary"]["Fluency"] is None
    assert set(out["cases"][2]["locality"]) == {"Relation_Specificity"}
    assert set(out["protocol"]) >= {"edit_succ", "portability", "locality", "fluency", "aggregation"}
    # per-case aggregation: the case mean over groups, then the mean over cases
    case_means = [c["portability_mean"] for c in out["cases"]]
    assert metrics["portability_mean"] == pytest.approx(sum(case_means) / len(case_means))
    # the scores equal the shared scoring function's token accuracy
    from kedit.eval.scoring import token_accuracy

    r = requests_[0]
    assert out["cases"][0]["edit_succ"] == token_accuracy(model, tok, [(r.text, r.target_new)])[0]


def test_perturbed_model_loses_locality_against_the_original(llama, requests_):
    model, tok = llama
    pre = PreEditCache.build(model, tok, requests_)
    weight = model.lm_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 5 * saved.std())
        out = evaluate_knowedit(model, tok, requests_, pre, fluency=False)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert out["metrics"]["locality_mean"] < 1.0
    assert all(0.0 <= v <= 1.0 for v in out["metrics"]["locality"].values())


def test_fluency_and_unnamed_locality_and_missing_cache(llama):
    model, tok = llama
    r = EditRequest("{} was born in", "Ada", "Paris", locality=(("Bob lives in", "Rome"),),
                    portability={"reasoning": (("Ada's city is in", "France"),)})
    out = evaluate_knowedit(model, tok, [r], PreEditCache.build(model, tok, [r]), fluency_max_len=40)
    case = out["cases"][0]
    assert case["locality"] == {"locality": 1.0}
    assert isinstance(case["generation"], str) and case["fluency"] >= 0.0
    assert out["summary"]["Fluency"] == pytest.approx(100 * case["fluency"])
    sampled = evaluate_knowedit(model, tok, [r], fluency_max_len=40, fluency_top_k=5, seed=3)
    again = evaluate_knowedit(model, tok, [r], fluency_max_len=40, fluency_top_k=5, seed=3)
    assert sampled["cases"][0]["generation"] == again["cases"][0]["generation"]
    assert sampled["metrics"]["locality"] == {} and sampled["metrics"]["locality_mean"] is None


# -- diagnostics journal and plots ---------------------------------------------------------------------------------
def _diagnostics(method_fn, seed: int, steps: int = 6) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        g_p, g_e = torch.randn(20, generator=gen), torch.randn(20, generator=gen)
        out.append({"step": step, "layer": 7, **method_fn([g_p, g_e])[2]})
    return out


def test_diagnostics_journal_round_trip_and_plots(tmp_path):
    journal = tmp_path / "journal.jsonl"
    for batch in range(3):
        write_diagnostics(journal, _diagnostics(bargain, batch), batch=batch, method="nake")
    with open(journal, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"batch": 3, "method": "unke", "info": {"diagnostics": _diagnostics(plain_sum, 9)}}) + "\n")
        fh.write(json.dumps({"batch": 4, "method": "memit", "info": {}}) + "\n\n")
    diags = load_diagnostics(journal)
    assert len(diags) == 4 * 6
    assert {d["method"] for d in diags} == {"nake", "unke"}
    assert [d["batch"] for d in diags[::6]] == [0, 1, 2, 3]
    for d in diags:
        assert {"step", "cos_pe", "cos_gp", "cos_ge", "lambda_p", "lambda_e", "norm_ratio", "method"} <= set(d)

    paths = [
        plot_cosine_histograms(diags, tmp_path / "fig2.png"),
        plot_weight_trajectories(diags, tmp_path / "fig3.png"),
        plot_fixed_weight_sweep(
            [{"lambda_p": lp, "lambda_e": 1.0, "method": "fixed", "RSA": 50 + lp, "Edit Succ.": 99.0} for lp in (1, 2, 5, 10)]
            + [{"method": "nake", "RSA": 80.0, "Edit Succ.": 99.5}],
            tmp_path / "sub" / "fig4.png",
        ),
    ]
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
    figures = plot_nash_figures(journal, tmp_path / "figs", sweep=[{"lambda_p": 1.0, "RSA": 1.0}])
    assert set(figures) == {"cosines", "weights", "sweep"} and all(p.exists() for p in figures.values())


def test_merge_diagnostics_keeps_runs_of_one_combination_rule_apart(tmp_path):
    """AnyEdit* with and without bargaining journal the same method name; the merge labels by run."""
    journals = {}
    for run, fn in (("anyedit_unke", plain_sum), ("anyedit_unke+nash", bargain)):
        journals[run] = [tmp_path / run / "journal.jsonl", tmp_path / run / "missing.jsonl"]
        (tmp_path / run).mkdir()
        for batch in range(2):
            write_diagnostics(journals[run][0], _diagnostics(fn, batch), batch=batch, method="anyedit_unke")
    merged = load_diagnostics(merge_diagnostics(journals, tmp_path / "merged.jsonl"))
    by_run = {run: [d for d in merged if d["method"] == run] for run in journals}
    assert {run: len(v) for run, v in by_run.items()} == {"anyedit_unke": 12, "anyedit_unke+nash": 12}
    assert [d["cos_gp"] for d in by_run["anyedit_unke+nash"]] == [
        d["cos_gp"] for d in load_diagnostics(journals["anyedit_unke+nash"][0])]
    assert all(d["cos_gp"] > 0 and d["cos_ge"] > 0 for d in by_run["anyedit_unke+nash"])
    assert load_diagnostics(merge_diagnostics({"x": [tmp_path / "none.jsonl"]}, tmp_path / "empty.jsonl")) == []


def test_load_diagnostics_errors_name_the_line(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"diagnostics": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        load_diagnostics(journal)
    journal.write_text('{"diagnostics": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: field 'diagnostics'"):
        load_diagnostics(journal)
    with pytest.raises(ValueError, match="fixed-weight"):
        plot_fixed_weight_sweep([{"method": "nake", "RSA": 1.0}], tmp_path / "x.png")
