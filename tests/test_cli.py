"""The ``kedit`` command line on a tiny Llama checkpoint: methods, bench (both modes), edit, demo,
export, stats, and the one-line error contract (``error: <message>``, exit code 2)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kedit.cli import app
from kedit.ledger import load_edit_set
from kedit.methods.memit import MemitConfig
from kedit.methods.registry import build_config
from kedit.models.fingerprint import weights_fingerprint
from kedit.testing.tiny import tiny_model

SUMMARY_KEYS = {"method", "dataset", "n", "batch_size", "mode", "metrics", "pre_metrics", "timing", "stats", "fluency",
                "memory"}
MEMORY_KEYS = {"peak_rss_mb", "rss_mb_first", "rss_mb_last"}  # no growth slope: fewer than 4 batches
TIMING_KEYS = {"seconds_per_edit", "edit_seconds_total", "stats_seconds"}

# Invented counterfacts in the EasyEdit CounterFact layout (not taken from any dataset).
RECORDS = [
    {"case_id": 0, "prompt": "Ada Quill lives in the city of", "subject": "Ada Quill", "target_new": "Rome",
     "ground_truth": "Oslo", "rephrase_prompt": "The home town of Ada Quill is",
     "locality_prompt": "Bo Lind lives in the city of", "locality_ground_truth": "Lima"},
    {"case_id": 1, "prompt": "The favourite food of Max Fern is", "subject": "Max Fern", "target_new": "soup",
     "ground_truth": "rice", "rephrase_prompt": "Max Fern likes to eat",
     "locality_prompt": "The favourite food of Eve Dunn is", "locality_ground_truth": "bread"},
    {"case_id": 2, "prompt": "Zed Moss works as a", "subject": "Zed Moss", "target_new": "pilot",
     "ground_truth": "baker", "rephrase_prompt": "The job of Zed Moss is",
     "locality_prompt": "Kim Vale works as a", "locality_ground_truth": "nurse"},
    {"case_id": 3, "prompt": "Ivy Stone speaks", "subject": "Ivy Stone", "target_new": "Dutch",
     "ground_truth": "Greek", "rephrase_prompt": "The language of Ivy Stone is",
     "locality_prompt": "Tom Reed speaks", "locality_ground_truth": "Welsh"},
]


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread (restored after the module)."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, tok = tiny_model("llama")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: the river flows past {i * 7} old mills and a quiet town."
                                for i in range(200)))
    overrides = {"layers": [1, 2], "stats": {"token_budget": 2000, "seq_len": 64, "corpus": str(corpus)},
                 "target": {"steps": 3, "context_templates": [[5, 1]]}}
    (root / "memit.yaml").write_text(yaml.safe_dump(overrides))
    data = root / "cf.json"
    data.write_text(json.dumps(RECORDS, indent=1))
    return {"root": root, "model": root / "model", "config": root / "memit.yaml", "overrides": overrides,
            "data": data, "cache": root / "cache", "fingerprint": weights_fingerprint(model)}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def common(env):
    return ["--model", env["model"], "--config", env["config"], "--cache-dir", env["cache"]]


@pytest.fixture(scope="module")
def runs(env):
    out = {}
    for mode in ("independent", "sequential"):
        directory = env["root"] / f"run-{mode}"
        result = invoke("bench", "--method", "memit", "--data", env["data"], "--n", 4, "--batch-size", 2,
                        "--mode", mode, "--out", directory, "--seed", 0, "--no-progress", *common(env))
        out[mode] = (result, directory)
    return out


def test_methods_lists_presets():
    result = invoke("methods")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")}
    assert {"memit", "rome", "alphaedit", "ft"} <= rows


def test_methods_shows_config_fields():
    result = invoke("methods", "memit")
    assert result.exit_code == 0, result.output
    assert "target.steps" in result.output and "stats.token_budget" in result.output


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_bench_writes_summary(runs, mode):
    result, directory = runs[mode]
    assert result.exit_code == 0, result.output
    summary = json.loads((directory / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS and set(summary["memory"]) == MEMORY_KEYS
    assert summary["memory"]["peak_rss_mb"] >= summary["memory"]["rss_mb_last"] > 0
    assert (summary["method"], summary["dataset"], summary["n"], summary["batch_size"], summary["mode"]) == (
        "memit", "counterfact", 4, 2, mode)
    for block in ("metrics", "pre_metrics"):
        for key in ("efficacy", "generalization", "specificity"):
            assert 0.0 <= summary[block][key] <= 1.0, (block, key)
        assert all(v is None or 0.0 <= v <= 1.0 for v in summary[block].values())
    assert set(summary["timing"]) == TIMING_KEYS
    assert summary["fluency"]["pre"] >= 0 and summary["fluency"]["post"] >= 0
    timing = summary["timing"]
    assert timing["edit_seconds_total"] > 0 and timing["stats_seconds"] >= 0
    assert timing["seconds_per_edit"] == pytest.approx(timing["edit_seconds_total"] / 4)
    assert summary["stats"]["token_budget"] == 2000
    assert "efficacy" in result.output  # the table


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_bench_journal_has_one_line_per_batch(runs, mode):
    _, directory = runs[mode]
    lines = [json.loads(x) for x in (directory / "journal.jsonl").read_text().splitlines()]
    assert [x["batch"] for x in lines] == [0, 1]
    assert [x["request_ids"] for x in lines] == [[0, 1], [2, 3]]
    assert all(x["seconds"] > 0 and x["info"]["value_steps"] for x in lines)
    assert all(0 < x["info"]["value_seconds"] <= x["seconds"] for x in lines)  # the value share of the batch
    assert not any("fingerprint" in key for x in lines for key in x)


def test_bench_config_round_trips(runs, env):
    _, directory = runs["sequential"]
    path = directory / "config.yaml"
    loaded = MemitConfig.from_yaml(path)
    expected = build_config("memit", env["overrides"], model_type="llama", n_layers=4)
    assert loaded.to_dict() == expected.to_dict()
    assert loaded.to_yaml() == path.read_text()


def test_bench_manifest(runs, env):
    _, directory = runs["independent"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["data"]["sha256"] == hashlib.sha256(env["data"].read_bytes()).hexdigest()
    assert manifest["seed"] == 0
    assert manifest["model"]["weights_fingerprint"] == env["fingerprint"]
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"] and manifest["kedit_version"]
    assert manifest["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability() and manifest["cpu"]["model"]
    assert manifest["args"]["mode"] == "independent" and manifest["args"]["batch_size"] == 2


def test_sequential_saves_edit_set_and_exports(runs, env):
    from transformers import AutoModelForCausalLM

    _, directory = runs["sequential"]
    edit_set = load_edit_set(directory / "edits")
    assert edit_set.request_ids() == [0, 1, 2, 3]
    assert edit_set.base_fingerprint == env["fingerprint"]
    assert not (runs["independent"][1] / "edits").exists()

    out = env["root"] / "exported"
    result = invoke("export", "--edits", directory / "edits", "--out", out, "--model", env["model"])
    assert result.exit_code == 0, result.output
    base = AutoModelForCausalLM.from_pretrained(env["model"])
    edited = AutoModelForCausalLM.from_pretrained(out)
    for name in edit_set.names():
        want = base.get_parameter(name).detach() + edit_set.deltas[name]
        torch.testing.assert_close(edited.get_parameter(name).detach(), want)


def test_unknown_config_key_exits_2(env, tmp_path):
    bad = dict(env["overrides"], stats={**env["overrides"]["stats"], "tokn_budget": 5})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = invoke("bench", "--data", env["data"], "--out", tmp_path / "run", "--model", env["model"],
                    "--config", path)
    assert result.exit_code == 2
    assert "error:" in result.output and "tokn_budget" in result.output
    assert "Traceback" not in result.output


def test_missing_data_file_exits_2(env, tmp_path):
    missing = tmp_path / "nowhere" / "cf.json"
    result = invoke("bench", "--data", missing, "--out", tmp_path / "run", "--model", env["model"])
    assert result.exit_code == 2
    assert "error:" in result.output and str(missing) in result.output


def test_edit_shows_generations(env):
    result = invoke("edit", "--prompt", "{} lives in the city of", "--subject", "Ada Quill", "--target", "Rome",
                    "--target-true", "Oslo", "--max-new-tokens", 4, *common(env))
    assert result.exit_code == 0, result.output
    assert "before" in result.output and "after" in result.output and "Ada Quill lives in" in result.output


def test_demo_reverts_bit_identically(env, tmp_path):
    result = invoke("demo", "--max-new-tokens", 3, "--out", tmp_path, *common(env))
    assert result.exit_code == 0, result.output
    assert "bit-identical" in result.output
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert demo["reverted_identical"] and len(demo["requests"]) == 4
    assert demo["fingerprints"]["reverted"] == env["fingerprint"] != demo["fingerprints"]["edited"]


def test_stats_precomputes_cache(env, tmp_path):
    cache = tmp_path / "cache"
    result = invoke("stats", "--layers", "0-1", "--token-budget", 500, "--model", env["model"], "--config",
                    env["config"], "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert len(list((cache / "stats").glob("mom2-*.safetensors"))) == 2


ZSRE = [
    {"subject": "Ada Quill", "src": "Which city does Ada Quill live in?", "rephrase": "Where is Ada Quill's home?",
     "answers": ["Rome"], "alt": "Lima", "loc": "nq question: who wrote the tall mill song", "loc_ans": "Bo Lind"},
    {"subject": "Zed Moss", "src": "What is the job of Zed Moss?", "rephrase": "Zed Moss works as what?",
     "answers": ["pilot"], "alt": "baker", "loc": "nq question: how many moons has the red star", "loc_ans": "two"},
]


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_run_bench_zsre_restores_weights(env, tmp_path, mode):
    from kedit.data.loaders import load_requests
    from kedit.models.loading import load_model
    from kedit.runs import run_bench

    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(ZSRE))
    requests = load_requests("auto", data)
    model, tok = load_model(env["model"])
    summary = run_bench(model, tok, method="memit", requests=requests, dataset="zsre", batch_size=1, mode=mode,
                        out_dir=tmp_path / "run", config=env["overrides"], data_path=data, progress=False,
                        cache_dir=env["cache"])
    assert weights_fingerprint(model) == env["fingerprint"]
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS and summary["n"] == 2
    assert summary["pre_metrics"]["locality_pre"] == 1.0  # the unedited model agrees with itself
    assert all(v is None or 0.0 <= v <= 1.0 for v in summary["metrics"].values())
    assert len((tmp_path / "run" / "journal.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "run" / "edits").exists() == (mode == "sequential")
