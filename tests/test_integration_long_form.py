"""Long-answer edits on the embedded SmolLM2-135M-Instruct: one UnKE, one AnyEdit, one μKE and one
Matryoshka-vanilla edit of a ~60-token UnKEBench answer must make greedy decoding reproduce it
(character BLEU > 0.8, the unedited model is far below), and revert must restore every weight (whole-block edits too).
The SmolLM2 settings are the tuned ones of ``bench/configs/smollm2`` (see docs/long-form.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import kedit
from kedit.data.unstructured import load_unkebench
from kedit.eval.unstructured import char_bleu, generate_answers
from kedit.models.fingerprint import weights_fingerprint

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "configs" / "smollm2"


@pytest.fixture(scope="module", autouse=True)
def _all_cores(all_cores):
    """The embedded model uses every core."""


@pytest.fixture(scope="module")
def record(smollm, shared_data):
    model, tok = smollm
    r = load_unkebench(shared_data / "unke" / "final_data_v2.json", start=2, n=1)[0]
    answer = tok.decode(tok(r.target_new, add_special_tokens=False)["input_ids"][:60]).strip()
    import dataclasses

    r = dataclasses.replace(r, target_new=answer)
    before = generate_answers(model, tok, [r.text], max_new_tokens=90)[0]
    return r, char_bleu(answer, before)


@pytest.mark.parametrize("method", ["unke", "anyedit", "muke", "muke_vanilla"])
def test_long_answer_edit_reproduces_answer(smollm, record, method, track):
    model, tok = smollm
    track(model)
    request, bleu_before = record
    base = weights_fingerprint(model)
    config = yaml.safe_load((CONFIGS / f"{method}.yaml").read_text())
    editor = kedit.Editor(model, tok, method, config)
    editor.edit([request])
    after = generate_answers(model, tok, [request.text], max_new_tokens=90)[0]
    editor.revert()
    assert weights_fingerprint(model) == base, "revert must restore every weight bit for bit"
    bleu_after = char_bleu(request.target_new, after)
    assert bleu_before < 0.6, bleu_before
    assert bleu_after > 0.8, (bleu_before, bleu_after, after)
