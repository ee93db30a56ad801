"""Data loaders: real benchmark files, both CounterFact layouts, slicing, and every error message."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kedit.data import DATASET_LOADERS, EditRequest, load_counterfact, load_requests, load_zsre
from kedit.data._records import Record, build
from kedit.data.loaders import detect_dataset
from kedit.data.zsre import _from_mend
from kedit.errors import ConfigError, DataError

CF_FILES = ["counterfact/counterfact-edit.json", "counterfact/counterfact-train.json"]
ZSRE_FILE = "zsre/zsre_mend_edit.json"


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


# Invented records (not copied from any dataset).
def flat(i=0, **over):
    rec = {
        "case_id": 100 + i,
        "prompt": f"The capital city of Zarnovia {i} is",
        "target_new": " Quellport ",
        "subject": f"Zarnovia {i}",
        "ground_truth": "Old Vesk",
        "rephrase_prompt": f"Zarnovia {i} is governed from",
        "locality_prompt": "The capital city of Brundle is",
        "locality_ground_truth": "Hollin",
    }
    rec.update(over)
    return rec


def rome(i=0, **over):
    rec = {
        "case_id": 7 + i,
        "requested_rewrite": {
            "prompt": "{} plays the instrument called the",
            "subject": f"Mira Tolvane {i}",
            "target_new": {"str": "oboe", "id": "Q1"},
            "target_true": {"str": "cello ", "id": "Q2"},
        },
        "paraphrase_prompts": ["Onstage, Mira always reaches for her", "Mira Tolvane's favourite instrument is the"],
        "neighborhood_prompts": ["Pell Arnsby plays the", "The instrument of Dov Ketter is the"],
        "attribute_prompts": ["Some oboe player plays the"],
        "generation_prompts": ["Mira Tolvane is known for"],
    }
    rec.update(over)
    return rec


def zsre(**over):
    rec = {
        "subject": "Velmora Bridge",
        "src": "When was Velmora Bridge opened?",
        "pred": "1901",
        "rephrase": "In what year did Velmora Bridge open?",
        "alt": "1925",
        "answers": ["1899", "1900"],
        "loc": "nq question: who painted the blue fox",
        "loc_ans": " Anna Pell",
        "portability": {"Recalled Relation": "(x, y, z)", "New Question": "What opened in 1925?", "New Answer": "Velmora Bridge"},
    }
    rec.update(over)
    return rec


# -- real files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CF_FILES)
def test_counterfact_real_first_five(shared_data, name):
    path = shared_data / name
    raw = json.loads(path.read_text(encoding="utf-8"))[:5]
    reqs = load_counterfact(path, n=5)
    assert len(reqs) == 5
    for rec, req in zip(raw, reqs):
        assert isinstance(req, EditRequest)
        assert req.text == rec["prompt"]
        assert req.subject == rec["subject"]
        assert req.prompt == rec["prompt"].replace(rec["subject"], "{}", 1)
        assert req.target_new == rec["target_new"].strip()
        assert req.target_true == rec["ground_truth"].strip()
        assert req.rephrases == (rec["rephrase_prompt"],)
        assert req.locality == ((rec["locality_prompt"], rec["locality_ground_truth"].strip()),)
        assert req.id == rec["case_id"]


def test_counterfact_real_record0_values(shared_data):
    req = load_counterfact(shared_data / CF_FILES[0], n=1)[0]
    assert (req.prompt, req.subject, req.target_new, req.target_true) == (
        "The mother tongue of {} is", "Danielle Darrieux", "English", "French")


def test_zsre_real_first_five(shared_data):
    path = shared_data / ZSRE_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))[:5]
    reqs = load_zsre(path, n=5)
    assert len(reqs) == 5
    for i, (rec, req) in enumerate(zip(raw, reqs)):
        assert req.text == rec["src"]
        assert req.prompt == rec["src"].replace(rec["subject"], "{}")
        assert req.subject == rec["subject"]
        assert req.target_new == rec["answers"][0].strip()
        assert req.target_true == rec["pred"].strip()
        assert req.rephrases == (rec["rephrase"],)
        assert req.locality == ((rec["loc"] + "?", rec["loc_ans"].strip()),)
        port = rec["portability"]
        assert req.portability == {"reasoning": ((port["New Question"], port["New Answer"].strip()),)}
        assert req.id == i
    assert reqs[0].prompt == "When was the inception of {}?"
    assert reqs[0].locality[0][0].endswith("spongebob?")


def test_zsre_real_alt_target(shared_data):
    path = shared_data / ZSRE_FILE
    rec = json.loads(path.read_text(encoding="utf-8"))[0]
    req = load_zsre(path, n=1, target="alt")[0]
    assert (req.target_new, req.target_true) == (rec["alt"], rec["answers"][0])


def test_slicing_real(shared_data):
    path = shared_data / CF_FILES[1]
    head = load_counterfact(path, n=8)
    assert load_counterfact(path, n=3, start=2) == head[2:5]
    assert load_counterfact(path, n=0) == []
    z = load_zsre(shared_data / ZSRE_FILE, n=4, start=10)
    assert [r.id for r in z] == [10, 11, 12, 13]


def test_load_requests_and_detect_real(shared_data):
    cf, zs = shared_data / CF_FILES[0], shared_data / ZSRE_FILE
    assert set(DATASET_LOADERS) == {"counterfact", "zsre", "unkebench", "akew-mquake", "editeverything", "knowedit"}
    assert load_requests("counterfact", cf, n=2, start=1) == load_counterfact(cf, n=2, start=1)
    assert load_requests("zsre", zs, n=2) == load_zsre(zs, n=2)
    assert detect_dataset(cf) == "counterfact" and detect_dataset(zs) == "zsre"
    assert load_requests("auto", zs, n=1) == load_zsre(zs, n=1)


# -- synthetic files ---------------------------------------------------------------------------
def test_rome_layout(tmp_path):
    path = write(tmp_path, "rome.json", [rome(0), rome(1, requested_rewrite=[rome(1)["requested_rewrite"]])])
    reqs = load_counterfact(path)
    r = reqs[0]
    assert r.prompt == "{} plays the instrument called the" and r.subject == "Mira Tolvane 0"
    assert (r.target_new, r.target_true, r.id) == ("oboe", "cello", 7)
    assert r.rephrases == tuple(rome()["paraphrase_prompts"])
    assert r.locality == (("Pell Arnsby plays the", "cello"), ("The instrument of Dov Ketter is the", "cello"))
    assert r.generation_prompts == ("Mira Tolvane is known for",)
    assert reqs[1].subject == "Mira Tolvane 1" and reqs[1].id == 8  # one-element list accepted
    assert detect_dataset(path) == "counterfact"


def test_rome_optional_lists_and_bare_targets(tmp_path):
    rec = {"requested_rewrite": {"prompt": "The home of {} is", "subject": "Quist", "target_new": "Lune",
                                 "target_true": {"str": "Arda"}}}
    req = load_counterfact(write(tmp_path, "r.json", [rec]))[0]
    assert (req.target_new, req.target_true, req.id, req.rephrases, req.locality) == ("Lune", "Arda", 0, (), ())


def test_flat_layout_synthetic(tmp_path):
    path = write(tmp_path, "cf.json", [flat(i) for i in range(4)])
    reqs = load_counterfact(path, start=1)
    assert [r.id for r in reqs] == [101, 102, 103]
    assert reqs[0].target_new == "Quellport" and reqs[0].text == "The capital city of Zarnovia 1 is"
    minimal = {k: v for k, v in flat().items() if k in ("prompt", "subject", "target_new")}
    req = load_counterfact(write(tmp_path, "min.json", [minimal]))[0]
    assert (req.id, req.target_true, req.rephrases, req.locality) == (0, None, (), ())


def test_zsre_case_insensitive_subject(tmp_path):
    path = write(tmp_path, "z.json", [zsre(subject="velmora BRIDGE"), zsre(pred=None, portability=None)])
    a, b = load_zsre(path)
    assert a.subject == "Velmora Bridge" and a.text == "When was Velmora Bridge opened?"
    assert a.target_new == "1899" and a.locality == (("nq question: who painted the blue fox?", "Anna Pell"),)
    assert b.target_true is None and b.portability == {}


def test_slicing_edges(tmp_path):
    path = write(tmp_path, "cf.json", [flat(i) for i in range(3)])
    assert [r.id for r in load_counterfact(path, n=10, start=1)] == [101, 102]
    with pytest.raises(DataError, match=r"cf\.json: start=3 is past the last record \(the file has 3 records\)"):
        load_counterfact(path, start=3)
    with pytest.raises(ConfigError, match=r"'n' parameter of load_counterfact"):
        load_counterfact(path, n=-1)
    with pytest.raises(ConfigError, match=r"'start' parameter of load_zsre"):
        load_zsre(path, start=True)
    with pytest.raises(ConfigError, match=r"'target' parameter of load_zsre"):
        load_zsre(path, target="pred")
    empty = write(tmp_path, "empty.json", [])
    assert load_counterfact(empty) == [] and load_zsre(empty) == []


# -- error paths ---------------------------------------------------------------------------------
CF_ERRORS = [
    (flat(3, subject="Nobody"), r"record 3: field 'subject' must occur in 'prompt' \(subject='Nobody'"),
    (flat(3, target_new=""), r"record 3: field 'target_new' must be non-empty"),
    (flat(3, target_new="  "), r"record 3: field 'target_new' must be non-empty"),
    (flat(3, subject=5), r"record 3: field 'subject' must be a string \(got int\)"),
    (flat(3, ground_truth=["x"]), r"record 3: field 'ground_truth' must be a string \(got list\)"),
    ({k: v for k, v in flat(3).items() if k != "target_new"}, r"record 3: field 'target_new' is missing"),
    (flat(3, case_id=1.5), r"record 3: field 'case_id' must be an int or a string \(got float\)"),
    (flat(3, locality_ground_truth=None), r"record 3: field 'locality_ground_truth' is missing but 'locality_prompt'"),
    (flat(3, prompt="Zarnovia 3 {} is"), r"record 3: field 'prompt' must not contain '\{\}' itself"),
    (flat(3, rephrase_prompt=""), r"record 3: field 'rephrase_prompt' must be non-empty"),
    (["not", "a", "dict"], r"record 3: the record must be a JSON object \(got list\)"),
]


@pytest.mark.parametrize("bad, message", CF_ERRORS)
def test_counterfact_flat_errors(tmp_path, bad, message):
    path = write(tmp_path, "counterfact-bad.json", [flat(0), flat(1), flat(2), bad, flat(4)])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        load_counterfact(path)
    assert len(load_counterfact(path, n=3)) == 3  # unselected bad records are not parsed


def _rw(**over):
    rw = dict(rome()["requested_rewrite"])
    rw.update(over)
    return rw


ROME_ERRORS = [
    (rome(requested_rewrite=[_rw(), _rw()]), r"field 'requested_rewrite' must hold exactly one rewrite \(got a list of 2\)"),
    (rome(requested_rewrite=_rw(prompt="Mira plays the")), r"field 'requested_rewrite\.prompt' must contain exactly one '\{\}'"),
    (rome(requested_rewrite=_rw(prompt="{} and {}")), r"field 'requested_rewrite\.prompt' must contain exactly one"),
    (rome(requested_rewrite=_rw(target_new={"id": "Q1"})), r"field 'requested_rewrite\.target_new\.str' is missing"),
    (rome(requested_rewrite=_rw(target_true=3)), r"field 'requested_rewrite\.target_true' must be a JSON object \(got int\)"),
    (rome(requested_rewrite=_rw(subject="")), r"field 'requested_rewrite\.subject' must be non-empty"),
    (rome(requested_rewrite=[3]), r"field 'requested_rewrite\[0\]' must be a JSON object \(got int\)"),
    (rome(paraphrase_prompts="one prompt"), r"field 'paraphrase_prompts' must be a list of strings \(got str\)"),
    (rome(neighborhood_prompts=["ok", " "]), r"field 'neighborhood_prompts\[1\]' must be non-empty"),
    (rome(generation_prompts=[None]), r"field 'generation_prompts\[0\]' must be a string \(got null\)"),
    ({"case_id": 1}, r"field 'requested_rewrite' is missing"),
]


@pytest.mark.parametrize("bad, message", ROME_ERRORS)
def test_counterfact_rome_errors(tmp_path, bad, message):
    path = write(tmp_path, "rome-bad.json", [rome(0), bad])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": record 1: " + message):
        load_counterfact(path)


ZSRE_ERRORS = [
    (zsre(subject="Harbor Tower"), r"field 'subject' must occur in 'src' \(subject='Harbor Tower', src='When was"),
    (zsre(answers=[]), r"field 'answers' must be non-empty"),
    (zsre(answers="1899"), r"field 'answers' must be a list of strings \(got str\)"),
    (zsre(answers=[1899]), r"field 'answers\[0\]' must be a string \(got int\)"),
    ({k: v for k, v in zsre().items() if k != "src"}, r"field 'src' is missing"),
    (zsre(subject=None), r"field 'subject' must be a string \(got null\)"),
    (zsre(loc_ans=None), r"field 'loc_ans' is missing but 'loc' is present"),
    (zsre(src="When was {} Velmora Bridge opened?"), r"field 'src' must not contain '\{\}' itself"),
    (zsre(portability={"New Question": "q?"}), r"field 'portability\.New Answer' is missing"),
    (zsre(portability="yes"), r"field 'portability' must be a JSON object \(got str\)"),
    (zsre(pred=""), r"field 'pred' must be non-empty"),
]


@pytest.mark.parametrize("bad, message", ZSRE_ERRORS)
def test_zsre_errors(tmp_path, bad, message):
    path = write(tmp_path, "zsre-bad.json", [zsre(), zsre(), bad])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": record 2: " + message):
        load_zsre(path)


def test_zsre_alt_missing(tmp_path):
    path = write(tmp_path, "z.json", [{k: v for k, v in zsre().items() if k != "alt"}])
    assert load_zsre(path)[0].target_new == "1899"  # alt only needed for target="alt"
    with pytest.raises(DataError, match=r"z\.json: record 0: field 'alt' is missing"):
        load_zsre(path, target="alt")


@pytest.mark.parametrize("loader", [load_counterfact, load_zsre])
def test_file_level_errors(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match=r"nope\.json' does not exist"):
        loader(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        loader(tmp_path)
    bad = write(tmp_path, "bad.json", '[\n  {"a": 1,}\n]')
    with pytest.raises(DataError, match=r"bad\.json: is not valid JSON: .* at line 2 column \d+ \(char \d+\)"):
        loader(bad)
    obj = write(tmp_path, "obj.json", {"records": []})
    with pytest.raises(DataError, match=r"obj\.json: must be a JSON list of records \(got dict\)"):
        loader(obj)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'["\xff\xfe"]')
    with pytest.raises(DataError, match=r"bin\.json: is not UTF-8 text"):
        loader(binary)


def test_counterfact_unknown_layout(tmp_path):
    path = write(tmp_path, "odd.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"odd\.json: record 0: not a CounterFact record.*keys present: \['answer', 'question'\]"):
        load_counterfact(path)


def test_load_requests_unknown_and_detect_errors(tmp_path):
    with pytest.raises(DataError, match=r"Unknown dataset 'zsr'; known datasets: \[.*'counterfact'.*'zsre'\].*Did you mean 'zsre'"):
        load_requests("zsr", tmp_path / "x.json")
    with pytest.raises(DataError, match=r"e\.json: contains no records"):
        detect_dataset(write(tmp_path, "e.json", []))
    with pytest.raises(DataError, match=r"u\.json: record 0: cannot tell the dataset from its keys \['q'\]"):
        detect_dataset(write(tmp_path, "u.json", [{"q": 1}]))
    assert detect_dataset(write(tmp_path, "z.json", [zsre()])) == "zsre"
    assert load_requests("auto", write(tmp_path, "f.json", [flat()]))[0].id == 100


def test_build_reprefixes_request_errors():
    rec = Record({}, "some/file.json", 4)
    with pytest.raises(DataError, match=r"^some/file\.json: record 4: field 'target_new' must be non-empty"):
        build(rec, lambda: EditRequest(prompt="{} is", subject="Ada", target_new=" "))


# -- properties ----------------------------------------------------------------------------------
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(prefix=_text, subject=_text.filter(lambda s: s.strip()), suffix=_text)
def test_from_text_roundtrip(prefix, subject, suffix):
    text = prefix + subject + suffix
    assume("{}" not in text and "{" not in subject and "}" not in subject)
    req = EditRequest.from_text(text, subject, "x")
    assert req.text == text
    assert req.prompt.count("{}") == 1


_ascii = st.text(st.sampled_from("abcdefghijKLMNOP ?,.'-"), max_size=20)


@settings(max_examples=100, deadline=None)
@given(prefix=_ascii, subject=_ascii.filter(lambda s: s.strip()), suffix=_ascii, flip=st.booleans())
def test_zsre_template_roundtrip(prefix, subject, suffix, flip):
    src = prefix + subject + suffix
    given_subject = subject.swapcase() if flip else subject
    req = _from_mend(Record(zsre(src=src, subject=given_subject), "p.json", 0), "answers")
    assert req.text == src
    assert req.subject.lower() == subject.lower()
