"""Loaders for unstructured (long-answer) editing benchmarks: UnKEBench, AKEW MQuAKE-CF, EditEverything.

Every record becomes a question-answer edit (``EditRequest`` with ``subject=None``): the question is the
prompt and the long free text is ``target_new``.  Scoring is :func:`kedit.eval.unstructured.evaluate_unstructured`
(spec/metrics.md §4).  Mappings follow the UnKE / AnyEdit / μKE dataset classes (``dataset_classes/unke.py``,
``mquake.py``, ``editevery.py``), minus their chat-template wrapping and EOS suffix, which kedit adds at
encoding time (``kedit.stages.chat``).

* **UnKEBench** (``unke/final_data_v2.json``; keys id, question, para_question, answer, sub_question,
  sub_answer): prompt = ``question``; target_new = ``answer``; rephrases = (``para_question``,);
  portability ``"sub_question"`` = the (sub_question[i], sub_answer[i]) pairs; id = ``id``.
* **AKEW MQuAKE-CF** (``akew/MQuAKE-CF.json``): see :func:`load_akew_mquake`.
* **EditEverything** (``editeverything/editevery.json``; keys id, question, answer, category): prompt =
  ``question``; target_new = ``answer``; domain = ``category``; id = ``id``.

Answers are kept verbatim (not stripped): the long text is the edit target and the BLEU reference.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from kedit.data._records import Record, build, json_type, read_json_list, select
from kedit.data.requests import EditRequest
from kedit.errors import ConfigError, param_message

__all__ = ["load_unkebench", "load_akew_mquake", "load_editeverything"]

logger = logging.getLogger(__name__)

_MULTI_HOP = ("all", "single_edit", "none")


def load_unkebench(path: str | os.PathLike, *, n: int | None = None, start: int = 0) -> list[EditRequest]:
    """Load UnKEBench records ``start .. start+n`` (1,000 long-answer QA edits).

    Args:
        path: the JSON list (e.g. ``unke/final_data_v2.json``).
        n: how many records (None: all from ``start``).
        start: index of the first record.

    The request id is the record's ``id`` (its index when absent).  ``sub_question`` and ``sub_answer``
    must have the same length.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DataError: the file is not a JSON list, or a selected record is malformed (file, record, field named).

    Example:
        >>> reqs = load_unkebench(data_dir() / "unke/final_data_v2.json", n=1)  # doctest: +SKIP
        >>> reqs[0].prompt, reqs[0].rephrases  # doctest: +SKIP
        ("What is George Rankin's occupation?", ('What does George Rankin do for a living?',))
    """
    records, source = read_json_list(path, "UnKEBench")
    chosen = select(records, n=n, start=start, source=source, owner="load_unkebench")
    requests = [_from_unke(Record(value, source, index)) for index, value in chosen]
    logger.info("loaded %d UnKEBench requests from %s", len(requests), source)
    return requests


def load_akew_mquake(
    path: str | os.PathLike,
    *,
    n: int | None = None,
    start: int = 0,
    n_sub_questions: int | None = 5,
    multi_hop: str = "all",
) -> list[EditRequest]:
    """Load AKEW's MQuAKE-CF subset (354 cases) as unstructured edits.

    Mapping (AnyEdit/μKE ``dataset_classes/mquake.py``), with ``rw = requested_rewrite[0]``:

    * prompt = ``rw.question`` — the natural-language question of the edited single-hop fact
      ("What is the country of citizenship of Ellie Kemper?").  The AKEW README describes it as "the question
      used for query", and ``fact_new_uns`` is a paragraph about exactly that fact, so it is the question
      the long answer answers.  The top-level ``questions`` are MQuAKE's *multi-hop* questions, whose
      answer is the short ``new_answer`` entity, not the paragraph; ``rw.prompt`` is a cloze template.
    * target_new = ``rw.fact_new_uns`` (the ChatGPT-written unstructured fact); target_true = None.
    * portability ``"sub_question"`` = the first ``n_sub_questions`` of ``rw.unsfact_triplets_GPT`` as
      (``prompt`` with ``{}`` filled by ``subject``, ``target``) — the reference's sub-questions (cloze
      statements such as "Croatia is located in" → "Southeast Europe").
    * portability ``"multi_hop"`` = each of ``questions`` paired with ``new_answer`` (not scored by the
      reference; kept for multi-hop portability).
    * no rephrases (the reference reports no paraphrase score for MQuAKE); id = ``case_id``.

    Only the first rewrite is edited, as in the reference: 77 of the 354 cases carry 2–3 rewrites, and
    for those the multi-hop ``new_answer`` also depends on the rewrites that are not applied.

    Args:
        path: the JSON list (``akew/MQuAKE-CF.json``).
        n, start: record slice, as for the other loaders.
        n_sub_questions: keep the first this many triplets (None: all); the reference keeps 5.
        multi_hop: ``"all"`` (every case), ``"single_edit"`` (only cases with exactly one rewrite,
            where the multi-hop answer follows from the edit alone) or ``"none"``.

    Raises:
        ConfigError: bad ``multi_hop`` / ``n_sub_questions``.
        FileNotFoundError, DataError: as :func:`load_unkebench`.

    Example:
        >>> reqs = load_akew_mquake(data_dir() / "akew/MQuAKE-CF.json", n=1)  # doctest: +SKIP
        >>> reqs[0].prompt, sorted(reqs[0].portability)  # doctest: +SKIP
        ('What is the country of citizenship of Ellie Kemper?', ['multi_hop', 'sub_question'])
    """
    if multi_hop not in _MULTI_HOP:
        raise ConfigError(param_message("multi_hop", "load_akew_mquake", f"one of {list(_MULTI_HOP)}", multi_hop))
    if n_sub_questions is not None and (
        isinstance(n_sub_questions, bool) or not isinstance(n_sub_questions, int) or n_sub_questions < 0
    ):
        raise ConfigError(param_message("n_sub_questions", "load_akew_mquake", "None or an int >= 0", n_sub_questions))
    records, source = read_json_list(path, "AKEW MQuAKE-CF")
    chosen = select(records, n=n, start=start, source=source, owner="load_akew_mquake")
    requests = [_from_akew(Record(value, source, index), n_sub_questions, multi_hop) for index, value in chosen]
    logger.info("loaded %d AKEW MQuAKE-CF requests from %s (multi_hop=%s)", len(requests), source, multi_hop)
    return requests


def load_editeverything(path: str | os.PathLike, *, n: int | None = None, start: int = 0) -> list[EditRequest]:
    """Load EditEverything records (552 long-form QA edits; ``category`` → ``domain``).

    Categories in the shipped file: physics, biology, math, chemistry, code, poetry, news.  The reference
    reports every metric per category (spec/metrics.md §4); :func:`~kedit.eval.unstructured.evaluate_unstructured`
    groups by ``domain``.

    Raises:
        FileNotFoundError, DataError: as :func:`load_unkebench`.

    Example:
        >>> reqs = load_editeverything(data_dir() / "editeverything/editevery.json", n=1)  # doctest: +SKIP
        >>> reqs[0].domain  # doctest: +SKIP
        'math'
    """
    records, source = read_json_list(path, "EditEverything")
    chosen = select(records, n=n, start=start, source=source, owner="load_editeverything")
    requests = [_from_editevery(Record(value, source, index)) for index, value in chosen]
    logger.info("loaded %d EditEverything requests from %s", len(requests), source)
    return requests


# -- record mappings ---------------------------------------------------------------------------
def _from_unke(rec: Record) -> EditRequest:
    question = rec.text("question")
    answer = rec.text("answer")
    para = rec.text("para_question", None)
    sub_questions = rec.text_list("sub_question")
    sub_answers = rec.text_list("sub_answer")
    if len(sub_questions) != len(sub_answers):
        raise rec.fail(
            "sub_answer",
            f"must have one answer per sub_question (got {len(sub_answers)} answers for {len(sub_questions)} questions)",
        )
    portability = {"sub_question": tuple(zip(sub_questions, sub_answers))} if sub_questions else {}
    ident = rec.ident("id")
    return build(rec, lambda: EditRequest(
        prompt=question, subject=None, target_new=answer,
        rephrases=() if para is None else (para,), portability=portability, id=ident,
    ))


def _first_rewrite(rec: Record) -> tuple[Record, int]:
    """``requested_rewrite[0]`` as a Record (a bare object is accepted as a list of one)."""
    value = rec.raw("requested_rewrite")
    if isinstance(value, dict):
        return Record(value, rec.source, rec.index, "requested_rewrite."), 1
    if not isinstance(value, list):
        raise rec.fail("requested_rewrite", f"must be a list of rewrite objects (got {json_type(value)})")
    if not value:
        raise rec.fail("requested_rewrite", "must be non-empty (the first rewrite is the edit)")
    return Record(value[0], rec.source, rec.index, "requested_rewrite[0]."), len(value)


def _triplet_pairs(rw: Record, limit: int | None) -> tuple[tuple[str, str], ...]:
    triplets = rw.raw("unsfact_triplets_GPT", [])
    if not isinstance(triplets, list):
        raise rw.fail("unsfact_triplets_GPT", f"must be a list of {{subject, prompt, target}} objects (got {json_type(triplets)})")
    pairs = []
    for i, value in enumerate(triplets[:limit] if limit is not None else triplets):
        t = Record(value, rw.source, rw.index, f"{rw.prefix}unsfact_triplets_GPT[{i}].")
        template, subject, target = t.text("prompt"), t.text("subject"), t.text("target", strip=True)
        if template.count("{}") != 1:
            raise t.fail("prompt", f"must contain exactly one '{{}}' for the subject (prompt={template!r})")
        pairs.append((template.replace("{}", subject), target))
    return tuple(pairs)


def _from_akew(rec: Record, n_sub_questions: int | None, multi_hop: str) -> EditRequest:
    rw, n_rewrites = _first_rewrite(rec)
    question = rw.text("question")
    fact = rw.text("fact_new_uns")
    portability: dict[str, Any] = {}
    sub = _triplet_pairs(rw, n_sub_questions)
    if sub:
        portability["sub_question"] = sub
    if multi_hop == "all" or (multi_hop == "single_edit" and n_rewrites == 1):
        questions = rec.text_list("questions")
        if questions:
            new_answer = rec.text("new_answer", strip=True)
            portability["multi_hop"] = tuple((q, new_answer) for q in questions)
    ident = rec.ident("case_id")
    return build(rec, lambda: EditRequest(
        prompt=question, subject=None, target_new=fact, portability=portability, id=ident,
    ))


def _from_editevery(rec: Record) -> EditRequest:
    question = rec.text("question")
    answer = rec.text("answer")
    category = rec.text("category", strip=True)
    ident = rec.ident("id")
    return build(rec, lambda: EditRequest(prompt=question, subject=None, target_new=answer, domain=category, id=ident))
