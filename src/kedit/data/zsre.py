"""zsRE loader for the MEND record layout (spec/metrics.md §2, MEMIT's ``MENDQADataset``).

Record keys: ``subject, src, rephrase, answers, alt, loc, loc_ans`` plus optional ``pred`` and
``portability{Recalled Relation, New Question, New Answer}`` (EasyEdit's annotated test set).

Mapping (metrics.md §2): prompt = ``src`` with the subject replaced by ``{}``; target_new =
``answers[0]``; rephrases = (``rephrase``,); locality = ((``loc + "?"``, ``loc_ans``),) — MEMIT appends
the "?" to the "nq question: ..." text; target_true = ``pred`` when present.

The portability questions of ``zsre_mend_edit.json`` were written for the ``alt`` answer (the
EasyEdit/KnowEdit convention, target_new = ``alt``), not for ``answers[0]``; pass ``target="alt"`` to
get that pairing (target_true is then ``answers[0]``, as in EasyEdit).
"""
from __future__ import annotations

import logging
import os
import re

from kedit.data._records import Record, build, json_type, read_json_list, select
from kedit.data.requests import EditRequest
from kedit.errors import ConfigError, param_message

__all__ = ["load_zsre"]

logger = logging.getLogger(__name__)

_TARGETS = ("answers", "alt")


def load_zsre(
    path: str | os.PathLike, *, n: int | None = None, start: int = 0, target: str = "answers"
) -> list[EditRequest]:
    """Load zsRE records ``start .. start+n`` from a MEND-layout JSON list.

    Args:
        path: the JSON file (e.g. ``zsre/zsre_mend_edit.json``).
        n: how many records (None: all from ``start``).
        start: index of the first record.
        target: ``"answers"`` (MEMIT/AlphaEdit: target_new = answers[0], target_true = pred) or
            ``"alt"`` (EasyEdit/KnowEdit: target_new = alt, target_true = answers[0]).

    The request id is the record's index in the file. When ``subject`` does not occur verbatim in
    ``src`` it is matched case-insensitively, and the casing found in ``src`` is used.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DataError: the file is not a JSON list, or a selected record is malformed (file, record, field named).

    Example:
        >>> reqs = load_zsre(data_dir() / "zsre/zsre_mend_edit.json", n=1)  # doctest: +SKIP
        >>> reqs[0].prompt  # doctest: +SKIP
        'When was the inception of {}?'
    """
    if target not in _TARGETS:
        raise ConfigError(param_message("target", "load_zsre", f"one of {list(_TARGETS)}", target))
    records, source = read_json_list(path, "zsRE")
    chosen = select(records, n=n, start=start, source=source, owner="load_zsre")
    requests = [_from_mend(Record(value, source, index), target) for index, value in chosen]
    logger.info("loaded %d zsRE requests from %s (target=%s)", len(requests), source, target)
    return requests


def _from_mend(rec: Record, target: str) -> EditRequest:
    src = rec.text("src")
    subject, template = _template(rec, src, rec.text("subject"))
    answer = _first_answer(rec)
    if target == "alt":
        target_new, target_true = rec.text("alt", strip=True), answer
    else:
        target_new, target_true = answer, rec.text("pred", None, strip=True)
    rephrase = rec.text("rephrase", None)
    loc = rec.text("loc", None)
    loc_ans = rec.text("loc_ans", None, strip=True)
    if (loc is None) != (loc_ans is None):
        missing, present = ("loc_ans", "loc") if loc_ans is None else ("loc", "loc_ans")
        raise rec.fail(missing, f"is missing but {present!r} is present (the two come as a pair)")
    portability = _portability(rec)
    return build(rec, lambda: EditRequest(
        prompt=template, subject=subject, target_new=target_new, target_true=target_true,
        rephrases=() if rephrase is None else (rephrase,),
        locality=() if loc is None else ((loc + "?", loc_ans),),
        portability=portability,
        id=rec.index,
    ))


def _template(rec: Record, src: str, subject: str) -> tuple[str, str]:
    """(subject as spelled in src, src with its first occurrence replaced by ``{}``)."""
    if "{}" in src:
        raise rec.fail("src", f"must not contain '{{}}' itself (src={src!r})")
    at = src.find(subject)
    if at < 0:
        match = re.search(re.escape(subject), src, flags=re.IGNORECASE)
        if match is None:
            raise rec.fail("subject", f"must occur in 'src' (subject={subject!r}, src={src!r})")
        logger.debug("%s: record %d: subject %r matched as %r (case differs)", rec.source, rec.index, subject, match.group())
        at, subject = match.start(), match.group()
    return subject, src[:at] + "{}" + src[at + len(subject):]


def _first_answer(rec: Record) -> str:
    answers = rec.raw("answers")
    if not isinstance(answers, list):
        raise rec.fail("answers", f"must be a list of strings (got {json_type(answers)})")
    if not answers:
        raise rec.fail("answers", "must be non-empty (target_new is answers[0])")
    return rec.check_text("answers[0]", answers[0], True)


def _portability(rec: Record) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{"reasoning": ((New Question, New Answer),)}`` when the optional block is present."""
    if rec.raw("portability", None) is None:
        return {}
    block = rec.child("portability")
    return {"reasoning": ((block.text("New Question"), block.text("New Answer", strip=True)),)}
