"""kedit.eval on tiny random models: scores against brute-force loops, invariances, suites, cache."""
from __future__ import annotations

import math

import pytest
import torch

from kedit.data.requests import EditRequest
from kedit.eval import (
    PreEditCache,
    argmax_tokens,
    candidate_nll,
    evaluate_counterfact,
    evaluate_zsre,
    fluency,
    greedy_generate,
    ngram_entropy,
    token_accuracy,
)
from kedit.testing.tiny import tiny_model, tiny_tokenizer

PAIRS = [
    ("The capital of France is", "Paris"),
    ("Ada Lovelace was born in", " London"),
    ("Q", "a much longer answer than the prompt"),
    ("The mother tongue of Danielle Darrieux is", "French"),
    ("nq question: who wrote hamlet?", "Shakespeare"),
    ("x", "y"),
    ("Toyota is headquartered in", "Japan"),
    ("The Eiffel Tower is located in the city of", "Rome"),
    ("The capital of France is", "Paris"),  # duplicate on purpose
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    """Tiny models run ~100x faster on one intra-op thread than on two contended ones; restored after."""


@pytest.fixture(params=["llama", "gpt2", "gpt_neox"])
def family(request):
    return request.param


@pytest.fixture
def tiny(family, track):
    model, tok = tiny_model(family)
    track(model)
    return model, tok


def _ids(tok, prompt, candidate):
    p = tok(prompt)["input_ids"]
    c = tok(candidate if candidate.startswith(" ") else " " + candidate, add_special_tokens=False)["input_ids"]
    return p, c


def _brute_nll(model, tok, prompt, candidate):
    """−mean_j log P(c_j | p, c_<j), one unpadded forward pass per candidate token."""
    p, c = _ids(tok, prompt, candidate)
    total = 0.0
    with torch.no_grad():
        for j, token in enumerate(c):
            logits = model(torch.tensor([p + c[:j]])).logits[0, -1]
            total -= logits.double().log_softmax(-1)[token].item()
    return total / len(c)


def _bos_tokenizer():
    from tokenizers import processors

    tok = tiny_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
    )
    return tok


# -- scoring primitives ----------------------------------------------------------------------
def test_candidate_nll_matches_brute_force(tiny):
    model, tok = tiny
    got = candidate_nll(model, tok, PAIRS, batch_size=4)
    want = [_brute_nll(model, tok, p, c) for p, c in PAIRS]
    assert got == pytest.approx(want, abs=1e-5)


def test_candidate_nll_with_bos_adding_tokenizer(track):
    model, _ = tiny_model("llama")
    track(model)
    tok = _bos_tokenizer()
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    got = candidate_nll(model, tok, PAIRS[:4], batch_size=3)
    want = [_brute_nll(model, tok, p, c) for p, c in PAIRS[:4]]  # prompt carries BOS, candidate does not
    assert got == pytest.approx(want, abs=1e-5)
    # a candidate scored after a BOS-less prompt gives other numbers: the BOS really is in the prompt
    assert got != pytest.approx(candidate_nll(model, tiny_tokenizer(), PAIRS[:4]), abs=1e-4)
    assert len(argmax_tokens(model, tok, [("The sky is", "blue")])[0]) == len(" blue")


def test_scores_do_not_depend_on_batch_size_or_padding_side(tiny):
    model, tok = tiny
    results = []
    for side in ("right", "left"):
        tok.padding_side = side
        for batch_size in (1, 7):
            results.append(
                (
                    candidate_nll(model, tok, PAIRS, batch_size=batch_size),
                    token_accuracy(model, tok, PAIRS, batch_size=batch_size),
                    argmax_tokens(model, tok, PAIRS, batch_size=batch_size),
                )
            )
    nll0, acc0, arg0 = results[0]
    for nll, acc, arg in results[1:]:
        assert nll == pytest.approx(nll0, abs=1e-5)
        assert acc == acc0
        assert arg == arg0


def test_token_accuracy_matches_per_prefix_construction(tiny):
    """spec/metrics.md §2: one prompt ``prompt + decode(t_<i)`` per target token, argmax at its last position."""
    model, tok = tiny
    got = token_accuracy(model, tok, PAIRS, batch_size=5)
    want = []
    with torch.no_grad():
        for prompt, candidate in PAIRS:
            _, targets = _ids(tok, prompt, candidate)
            hits = 0
            for i, t in enumerate(targets):
                ids = tok(prompt + tok.decode(targets[:i]))["input_ids"]
                hits += int(model(torch.tensor([ids])).logits[0, -1].argmax()) == t
            want.append(hits / len(targets))
    assert got == want
    # argmax_tokens is consistent with the accuracy
    for (prompt, candidate), pred, acc in zip(PAIRS, argmax_tokens(model, tok, PAIRS), got):
        _, targets = _ids(tok, prompt, candidate)
        assert sum(p == t for p, t in zip(pred, targets)) / len(targets) == acc


def test_leading_space_added_once_and_training_mode_restored(track):
    model, tok = tiny_model("gpt2")  # GPT-2 has dropout: eval_mode must switch it off
    track(model)
    reference = candidate_nll(model, tok, [("The sky is", "blue")])
    model.train()
    assert candidate_nll(model, tok, [("The sky is", " blue")]) == pytest.approx(reference, abs=1e-6)
    assert model.training and all(m.training for m in model.modules())


def test_invalid_inputs_raise(track):
    model, tok = tiny_model("llama")
    track(model)
    with pytest.raises(ValueError, match="empty candidate"):
        candidate_nll(model, tok, [("The sky is", "  ")])
    with pytest.raises(ValueError, match="'batch_size' parameter of candidate_nll"):
        candidate_nll(model, tok, PAIRS, batch_size=0)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        token_accuracy(model, tok, [("", "blue")])
    with pytest.raises(ValueError, match="'requests' is empty"):
        evaluate_counterfact(model, tok, [])


def test_greedy_generate_matches_manual_loop_and_is_batch_invariant(tiny):
    model, tok = tiny
    prompts = ["Hello there", "Hi", "The capital of France is", "Q"]
    got = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert got == greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=1)
    ids = tok(prompts[2])["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got[2] == tok.decode(ids[len(tok(prompts[2])["input_ids"]):], skip_special_tokens=True)

    sampled = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, top_k=5, seed=1)
    assert sampled == greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=1, top_k=5, seed=1)
    assert sampled != greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, top_k=5, seed=2)
    # top_k=1 sampling is greedy decoding
    assert greedy_generate(model, tok, prompts, max_new_tokens=6, top_k=1) == got


def test_greedy_generate_progress_counts_every_prompt_and_changes_nothing(tiny, capsys):
    model, tok = tiny
    prompts = ["Hello there", "Hi", "The capital of France is", "Q", "A"]
    quiet = greedy_generate(model, tok, prompts, max_new_tokens=4, batch_size=2)
    assert capsys.readouterr().err == ""
    shown = greedy_generate(model, tok, prompts, max_new_tokens=4, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet
    assert "generating" in err and "5/5" in err  # three batches, counted in prompts


# -- fluency ---------------------------------------------------------------------------------
def test_ngram_entropy_hand_computed():
    # words: the cat the cat the -> bigrams {(the,cat):2, (cat,the):2}: H2 = 1 bit;
    # trigrams {(the,cat,the):2, (cat,the,cat):1}: H3 = log2(3) - 2/3
    h2, h3 = 1.0, math.log2(3) - 2 / 3
    want = (2 / 3 * h2 + 4 / 3 * h3) / 2
    assert ngram_entropy("the cat the cat the") == pytest.approx(want, abs=1e-12)
    # Treebank tokenization splits the final period and the clitic: I 'm fine .
    assert ngram_entropy("I'm fine.") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("word") == 0.0
    assert fluency(["the cat the cat the", "word"]) == pytest.approx(want / 2)
    with pytest.raises(ValueError, match="'texts' is empty"):
        fluency([])


# -- CounterFact -----------------------------------------------------------------------------
def _greedy_char(model, tok, prompt):
    """The model's greedy next character after ``prompt + " "`` (the first candidate token is the space)."""
    return greedy_generate(model, tok, [prompt + " "], max_new_tokens=1)[0]


def test_counterfact_forced_case(track):
    model, tok = tiny_model("llama")
    track(model)
    text = "Ada Lovelace was born in"
    new = _greedy_char(model, tok, text)
    assert len(new) == 1 and new.strip(), f"greedy continuation {new!r} is not a visible character"
    true = next(c for c in "qzxjk" if c != new)
    rephrases = ("Ada Lovelace's birthplace is", "Where was Ada Lovelace born? In")
    neighbours = ("Charles Babbage was born in", "Bob lives in", "The capital of France is", "x", "Q")
    # keep the neighbours whose own argmax answer differs from target_new
    locality = tuple((p, a) for p in neighbours if (a := _greedy_char(model, tok, p)) != new and a.strip())
    assert len(locality) >= 2
    req = EditRequest.from_text(text, "Ada Lovelace", new, target_true=true, rephrases=rephrases, locality=locality, id=7)

    out = evaluate_counterfact(model, tok, [req], batch_size=2)
    case, metrics = out["cases"][0], out["metrics"]
    assert case["id"] == 7 and not case["skipped"]
    # target_new is the argmax after the shared space token, so it wins on the rewrite prompt
    assert case["efficacy"] == 1.0
    assert case["specificity"] == 1.0  # each neighbour's answer is its own argmax
    nll_new, nll_true = candidate_nll(model, tok, [(text, new), (text, true)])
    assert case["efficacy_magnitude"] == pytest.approx(math.exp(-nll_new) - math.exp(-nll_true))
    assert case["efficacy_magnitude"] > 0
    para = [float(_brute_nll(model, tok, p, new) < _brute_nll(model, tok, p, true)) for p in rephrases]
    assert case["generalization"] == pytest.approx(sum(para) / len(para))
    spec = [
        math.exp(-_brute_nll(model, tok, p, a)) - math.exp(-_brute_nll(model, tok, p, new)) for p, a in locality
    ]
    assert case["specificity_magnitude"] == pytest.approx(sum(spec) / len(spec), abs=1e-5)
    rates = [metrics[k] for k in ("efficacy", "generalization", "specificity")]
    want_score = 0.0 if 0 in rates else 3 / sum(1 / r for r in rates)
    assert metrics["score"] == pytest.approx(want_score)
    assert metrics["n_cases"] == 1 and metrics["skipped"] == 0

    swapped = EditRequest.from_text(text, "Ada Lovelace", true, target_true=new, id=8)
    assert evaluate_counterfact(model, tok, [swapped])["cases"][0]["efficacy"] == 0.0


def test_counterfact_skips_requests_without_target_true(track):
    model, tok = tiny_model("gpt2")
    track(model)
    with_true = EditRequest("{} was born in", "Ada", "Paris", target_true="London", locality=(("Bob is from", "Rome"),))
    without = EditRequest("{} plays", "Messi", "tennis", rephrases=("The sport of Messi is",), locality=(("Pele plays", "soccer"),))
    out = evaluate_counterfact(model, tok, [with_true, without])
    assert out["metrics"]["skipped"] == 1 and out["metrics"]["n_cases"] == 2
    skipped = out["cases"][1]
    assert skipped["skipped"] and skipped["efficacy"] is None and skipped["generalization"] is None
    assert skipped["specificity"] in (0.0, 1.0)
    assert out["metrics"]["efficacy"] == out["cases"][0]["efficacy"]
    assert out["metrics"]["generalization"] is None and out["metrics"]["score"] is None
    assert out["metrics"]["specificity"] == pytest.approx((out["cases"][0]["specificity"] + skipped["specificity"]) / 2)


# -- zsRE / KnowEdit and the pre-edit cache --------------------------------------------------
def _zsre_requests():
    return [
        EditRequest(
            "What is the native language of {}?", "Danielle Darrieux", "English",
            rephrases=("Which language did Danielle Darrieux speak natively?",),
            locality=(("nq question: who wrote hamlet?", "Shakespeare"), ("nq question: capital of italy?", "Rome")),
            portability={"Subject_Aliasing": (("What is the mother tongue of D. Darrieux?", "English"),),
                         "reasoning": (("Which country's language did Darrieux speak?", "England"),)},
            id="a",
        ),
        EditRequest(
            "Who is the author of {}?", "Hamlet", "Marlowe",
            locality=(("nq question: largest planet?", "Jupiter"),),
            portability={"Subject_Aliasing": (("Who wrote The Tragedy of Hamlet?", "Marlowe"),)},
            id="b",
        ),
    ]


def test_zsre_metrics_are_token_accuracies(track):
    model, tok = tiny_model("llama")
    track(model)
    reqs = _zsre_requests()
    out = evaluate_zsre(model, tok, reqs, batch_size=3)
    for r, case in zip(reqs, out["cases"]):
        assert case["id"] == r.id
        assert case["efficacy"] == token_accuracy(model, tok, [(r.text, r.target_new)])[0]
        spec = token_accuracy(model, tok, list(r.locality))
        assert case["specificity"] == pytest.approx(sum(spec) / len(spec))
        by_key = {k: token_accuracy(model, tok, list(v))[0] for k, v in r.portability.items()}
        assert case["portability_by_key"] == pytest.approx(by_key)
        assert case["portability"] == pytest.approx(sum(by_key.values()) / len(by_key))
        assert case["locality_pre"] is None
    assert out["cases"][1]["generalization"] is None
    m = out["metrics"]
    assert m["generalization"] == out["cases"][0]["generalization"]
    assert m["portability_by_key"]["reasoning"] == out["cases"][0]["portability_by_key"]["reasoning"]
    assert m["portability_by_key"]["Subject_Aliasing"] == pytest.approx(
        sum(c["portability_by_key"]["Subject_Aliasing"] for c in out["cases"]) / 2
    )
    assert m["locality_pre"] is None and m["n_cases"] == 2


def test_pre_edit_cache_scores_locality_against_the_original_model(track):
    model, tok = tiny_model("llama")
    track(model)
    reqs = _zsre_requests()
    pre = PreEditCache.build(model, tok, reqs, suites=("zsre", "counterfact"))
    assert len(pre) == 3 and ("nq question: largest planet?", "Jupiter") in pre
    assert set(pre.results) == {"zsre", "counterfact"}
    assert pre.results["zsre"]["metrics"] == evaluate_zsre(model, tok, reqs)["metrics"]

    assert evaluate_zsre(model, tok, reqs, pre=pre)["metrics"]["locality_pre"] == 1.0
    generator = torch.Generator().manual_seed(0)
    scores = []
    for _ in range(2):  # a sequential run: the model drifts further, the reference stays the original
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=generator))
        scores.append(evaluate_zsre(model, tok, reqs, pre=pre)["metrics"]["locality_pre"])
        post = argmax_tokens(model, tok, [("nq question: largest planet?", "Jupiter")])[0]
        assert pre.locality_argmax("nq question: largest planet?", "Jupiter") != post
    assert all(s < 1.0 for s in scores)

    restored = PreEditCache.from_dict(pre.to_dict())
    assert restored.locality_argmax("nq question: who wrote hamlet?", "Shakespeare") == pre.locality_argmax(
        "nq question: who wrote hamlet?", "Shakespeare"
    )
    with pytest.raises(KeyError, match="no entry for locality pair"):
        pre.locality_argmax("unseen prompt", "answer")
    with pytest.raises(ValueError, match="'suites' parameter of PreEditCache.build"):
        PreEditCache.build(model, tok, reqs, suites=("mmlu",))
