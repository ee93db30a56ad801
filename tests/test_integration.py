"""Integration on the embedded SmolLM2-135M-Instruct: the edits must actually flip facts.

Value targets are shared through one ValueCache: MEMIT and AlphaEdit optimise the same targets
on the same unedited weights, and batched optimisation equals one-by-one, so each request's
target is optimised once for the whole module (that is the toolkit's own reuse path).
"""
from __future__ import annotations


import pytest
import torch

import kedit
from kedit.data import load_counterfact
from kedit.eval import evaluate_counterfact
from kedit.methods.base import ValueCache
from kedit.models.fingerprint import weights_fingerprint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _all_cores(all_cores):
    """The embedded model uses every core."""


@pytest.fixture(scope="module")
def setup(smollm, shared_data):
    model, tok = smollm
    requests = load_counterfact(shared_data / "counterfact" / "counterfact-edit.json", n=30)
    return model, tok, requests, ValueCache(), weights_fingerprint(model)


def _flips(model, tok, requests) -> int:
    cases = evaluate_counterfact(model, tok, requests)["cases"]
    return sum(int(c["efficacy"] == 1.0) for c in cases)


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_batch_of_ten_flips_nine(setup, method, track):
    model, tok, requests, cache, base = setup
    track(model)
    editor = kedit.Editor(model, tok, method, value_cache=cache)
    editor.edit(requests[:10])
    flips = _flips(model, tok, requests[:10])
    editor.revert()
    assert weights_fingerprint(model) == base
    assert flips >= 9, f"{method} flipped only {flips}/10 in one batch"


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_independent_edits_flip_nine_of_ten(setup, method, track):
    model, tok, requests, cache, base = setup
    track(model)
    editor = kedit.Editor(model, tok, method, value_cache=cache)
    flips = 0
    for request in requests[:10]:
        editor.edit([request])
        flips += _flips(model, tok, [request])
        editor.revert()
    assert weights_fingerprint(model) == base, "revert must restore the weights bit for bit"
    assert flips >= 9, f"{method} flipped only {flips}/10 independent edits"


def test_sequential_alphaedit_keeps_specificity(setup, track):
    model, tok, requests, cache, base = setup
    track(model)
    before = evaluate_counterfact(model, tok, requests)["metrics"]["specificity"]
    editor = kedit.Editor(model, tok, "alphaedit", value_cache=cache)
    for start in range(0, 30, 10):
        editor.edit(requests[start : start + 10])
    after = evaluate_counterfact(model, tok, requests)["metrics"]
    assert len(editor.state) == len(editor.config.layers)  # past-key sums, one d_k×d_k per layer
    editor.revert()
    assert weights_fingerprint(model) == base
    assert after["specificity"] >= before - 0.10, (before, after)
    assert after["efficacy"] >= 0.8, after


def test_edit_changes_greedy_generation(setup, track):
    model, tok, requests, cache, base = setup
    track(model)
    request = kedit.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", target_true="Paris")
    prompt = tok(request.text, return_tensors="pt")
    with torch.no_grad():
        before = tok.decode(model.generate(**prompt, max_new_tokens=6, do_sample=False)[0, prompt["input_ids"].shape[1]:])
    editor = kedit.Editor(model, tok, "rome", value_cache=cache)
    editor.edit([request])
    with torch.no_grad():
        after = tok.decode(model.generate(**prompt, max_new_tokens=6, do_sample=False)[0, prompt["input_ids"].shape[1]:])
    editor.revert()
    assert "Rome" in after and "Rome" not in before, (before, after)
