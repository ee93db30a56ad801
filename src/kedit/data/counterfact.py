"""CounterFact loader: turns either published CounterFact layout into ``EditRequest`` objects.

Two layouts circulate and both are read, detected per file from the first record:

* EasyEdit/MEND ("flat"): ``case_id, prompt, target_new, subject, ground_truth, rephrase_prompt,
  locality_prompt, locality_ground_truth``; the prompt holds the subject verbatim
  (the files under ``counterfact/`` in the shared data folder).
* ROME ("original"): ``case_id, requested_rewrite{prompt, subject, target_new{str,id},
  target_true{str,id}}, paraphrase_prompts, neighborhood_prompts, generation_prompts``; the prompt
  is already a ``{}`` template. Neighborhood prompts are scored against ``target_true``.

Targets are stripped and stored without a leading space: the scoring code adds it per tokenizer.
"""
from __future__ import annotations

import logging
import os

from kedit.data._records import Record, build, read_json_list, select
from kedit.data.requests import EditRequest
from kedit.errors import DataError

__all__ = ["load_counterfact"]

logger = logging.getLogger(__name__)

_FLAT_KEYS = ("prompt", "subject", "target_new")


def load_counterfact(path: str | os.PathLike, *, n: int | None = None, start: int = 0) -> list[EditRequest]:
    """Load CounterFact records ``start .. start+n`` from ``path`` (either layout, see module docstring).

    Only the selected records are parsed and validated, so a slice of a large file loads quickly.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DataError: the file is not a JSON list, or a selected record is malformed; the message names
            the file, the record index and the field.

    Example:
        >>> reqs = load_counterfact(data_dir() / "counterfact/counterfact-edit.json", n=2)  # doctest: +SKIP
        >>> reqs[0].text, reqs[0].target_new  # doctest: +SKIP
        ('The mother tongue of Danielle Darrieux is', 'English')
    """
    records, source = read_json_list(path, "CounterFact")
    if not records:
        logger.warning("%s: contains no records", source)
        return []
    layout = _detect_layout(Record(records[0], source, 0))
    parse = _from_rome if layout == "rome" else _from_flat
    chosen = select(records, n=n, start=start, source=source, owner="load_counterfact")
    requests = [parse(Record(value, source, index)) for index, value in chosen]
    logger.info("loaded %d CounterFact requests from %s (%s layout)", len(requests), source, layout)
    return requests


def _detect_layout(first: Record) -> str:
    keys = first.value
    if "requested_rewrite" in keys:
        return "rome"
    if all(k in keys for k in _FLAT_KEYS):
        return "flat"
    raise DataError(
        f"{first.source}: record 0: not a CounterFact record: expected a 'requested_rewrite' field (ROME layout) "
        f"or the fields {list(_FLAT_KEYS)} (EasyEdit/MEND layout); keys present: {sorted(keys)}"
    )


def _from_flat(rec: Record) -> EditRequest:
    """EasyEdit/MEND layout: the full prompt contains the subject; one rephrase, one locality pair."""
    prompt = rec.text("prompt")
    subject = rec.text("subject")
    target_new = rec.text("target_new", strip=True)
    target_true = rec.text("ground_truth", None, strip=True)
    rephrase = rec.text("rephrase_prompt", None)
    loc_prompt = rec.text("locality_prompt", None)
    loc_answer = rec.text("locality_ground_truth", None, strip=True)
    if (loc_prompt is None) != (loc_answer is None):
        missing, present = ("locality_ground_truth", "locality_prompt") if loc_answer is None else (
            "locality_prompt", "locality_ground_truth")
        raise rec.fail(missing, f"is missing but {present!r} is present (the two come as a pair)")
    case_id = rec.ident("case_id")
    return build(rec, lambda: EditRequest.from_text(
        prompt, subject, target_new,
        target_true=target_true,
        rephrases=() if rephrase is None else (rephrase,),
        locality=() if loc_prompt is None else ((loc_prompt, loc_answer),),
        id=case_id,
        _source=rec.source, _index=rec.index,
    ))


def _from_rome(rec: Record) -> EditRequest:
    """ROME layout: a ``{}`` template, target dicts, and prompt lists."""
    rewrite = rec.raw("requested_rewrite")
    if isinstance(rewrite, list):
        if len(rewrite) != 1:
            raise rec.fail(
                "requested_rewrite",
                f"must hold exactly one rewrite (got a list of {len(rewrite)}); CounterFact has one rewrite per "
                "case, so split multi-rewrite records (e.g. MQuAKE) into one record each",
            )
        rw = Record(rewrite[0], rec.source, rec.index, "requested_rewrite[0].")
    else:
        rw = rec.child("requested_rewrite")
    prompt = rw.text("prompt")
    if prompt.count("{}") != 1:
        raise rw.fail("prompt", f"must contain exactly one '{{}}' for the subject (prompt={prompt!r})")
    subject = rw.text("subject")
    target_new = _target(rw, "target_new")
    target_true = _target(rw, "target_true")
    paraphrases = rec.text_list("paraphrase_prompts")
    neighborhood = rec.text_list("neighborhood_prompts")
    generation = rec.text_list("generation_prompts")
    case_id = rec.ident("case_id")
    return build(rec, lambda: EditRequest(
        prompt=prompt, subject=subject, target_new=target_new, target_true=target_true,
        rephrases=paraphrases,
        locality=tuple((p, target_true) for p in neighborhood),
        generation_prompts=generation,
        id=case_id,
    ))


def _target(rw: Record, field: str) -> str:
    """``{"str": ..., "id": ...}`` as in ROME's file; a bare string is accepted too."""
    value = rw.raw(field)
    if isinstance(value, str):
        return rw.text(field, strip=True)
    return rw.child(field).text("str", strip=True)
