"""KnowEdit loader (Zhang et al. 2024; EasyEdit ``KnowEditDataset``): WikiData_counterfact,
WikiData_recent and the KnowEdit ZsRE split (spec/metrics.md §3).

Record layout (a JSON list; EasyEdit ``examples/KnowEdit.md``, ``easyeditor/dataset/knowedit.py``)::

    {"subject": "Leo Arons",
     "prompt": "The place of death of Leo Arons is",        # the full sentence, subject included
     "target_new": "Berlin",
     "ground_truth": "Potsdam" | ["Potsdam"] | [["Potsdam", ...]],   # optional
     "rephrase": "..." (recent) | "rephrase_prompt": "..." (ZsRE),   # optional, str or list of str
     "portability": {"Subject_Aliasing": [{"prompt": ..., "ground_truth": ...}, ...],
                     "Logical_Generalization": [...], "Reasoning" | "reasoning": [...]},   # optional
     "locality": {"Relation_Specificity": [{"prompt": ..., "ground_truth": ...}, ...],
                  "Forgetfulness": [...]}}                                                # optional

Mapping onto :class:`~kedit.data.requests.EditRequest`:

* ``prompt`` becomes a ``{}`` template at the first occurrence of ``subject`` (matched
  case-insensitively when it does not occur verbatim, keeping the casing found in the prompt);
  ``target_true`` = the first string of ``ground_truth``; ``rephrases`` = ``rephrase`` or
  ``rephrase_prompt``; ``id`` = ``case_id`` / ``id`` when present, else the record index.
* **ground truths**: a string is used as is; a list is reduced to its first string, depth first
  (``[["Berlin", "Berlin, Germany"]]`` → ``"Berlin"``; ``[["no"], ["incorrect"]]`` → ``"no"``): the
  alternatives after the first are aliases that EasyEdit's scoring also ignores.
* **portability** groups keep their names, except ``"Reasoning"`` which becomes ``"reasoning"``
  (EasyEdit's ``portability_inputs`` key, and the zsRE loader's).
* **locality** groups cannot live in ``EditRequest.locality`` (a flat tuple of pairs) with their
  names, so each group is stored twice: its pairs go into the flat ``locality`` (so
  :class:`~kedit.eval.cache.PreEditCache` caches them and the other suites see them), and the group
  itself goes into ``portability`` under the key ``"locality:" + name``, e.g.
  ``"locality:Relation_Specificity"``.  :func:`kedit.eval.knowedit.evaluate_knowedit` treats keys
  with that prefix (:data:`LOCALITY_PREFIX`) as locality groups; other suites (``evaluate_zsre``)
  would list them among the portability keys.
* ``first_only=True`` keeps only the first item of every portability/locality group, as EasyEdit's
  ``run_knowedit_llama2.py`` does for WikiData_counterfact (``pr = pr[0]``); default keeps all.

WikiBio records (``text``/``labels``/``concept``) are not edit requests of this kind and are rejected.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any

from kedit.data._records import Record, build, json_type, read_json_list, select
from kedit.data.requests import EditRequest

__all__ = ["load_knowedit", "LOCALITY_PREFIX"]

logger = logging.getLogger(__name__)

LOCALITY_PREFIX = "locality:"
_RENAME = {"Reasoning": "reasoning"}


def load_knowedit(
    path: str | os.PathLike, *, n: int | None = None, start: int = 0, first_only: bool = False
) -> list[EditRequest]:
    """Load KnowEdit records ``start .. start+n`` (WikiData_counterfact / WikiData_recent / ZsRE).

    Args:
        path: the JSON file (e.g. ``wiki_counterfact/test_cf.json``, ``wiki_recent/recent_test.json``).
        n: how many records (None: all from ``start``).
        start: index of the first record.
        first_only: keep only the first item of each portability/locality group (EasyEdit's script).

    Returns:
        One request per record; locality groups are stored as described in the module docstring.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DataError: the file is not a JSON list, or a selected record is malformed (file, record and field named).

    Example:
        >>> reqs = load_knowedit("tests/fixtures/knowedit_sample.json", n=1)  # doctest: +SKIP
        >>> sorted(reqs[0].portability)  # doctest: +SKIP
        ['Subject_Aliasing', 'locality:Forgetfulness', 'locality:Relation_Specificity', 'reasoning']
    """
    records, source = read_json_list(path, "KnowEdit")
    chosen = select(records, n=n, start=start, source=source, owner="load_knowedit")
    requests = [_from_record(Record(value, source, index), first_only) for index, value in chosen]
    logger.info("loaded %d KnowEdit requests from %s", len(requests), source)
    return requests


def _from_record(rec: Record, first_only: bool) -> EditRequest:
    if "prompt" not in rec.value and {"text", "labels", "concept"} & set(rec.value):
        raise rec.fail("prompt", "is missing: this looks like a WikiBio record (text/labels/concept), "
                                 "which load_knowedit does not support")
    subject, template = _template(rec, rec.text("prompt"), rec.text("subject"))
    target_new = rec.text("target_new", strip=True)
    truth = rec.raw("ground_truth", None)
    target_true = None if truth is None else _first_text(rec, "ground_truth", truth)
    rephrases = _rephrases(rec)
    portability: dict[str, tuple[tuple[str, str], ...]] = {}
    for name, pairs in _groups(rec, "portability", first_only).items():
        name = _RENAME.get(name, name)
        portability[name] = portability.get(name, ()) + pairs
    locality_groups = _groups(rec, "locality", first_only)
    locality = tuple(dict.fromkeys(pair for pairs in locality_groups.values() for pair in pairs))
    portability.update({LOCALITY_PREFIX + k: v for k, v in locality_groups.items()})
    return build(rec, lambda: EditRequest(
        prompt=template, subject=subject, target_new=target_new, target_true=target_true,
        rephrases=rephrases, locality=locality, portability=portability,
        id=rec.ident("case_id") if "case_id" in rec.value else rec.ident("id"),
    ))


def _template(rec: Record, prompt: str, subject: str) -> tuple[str, str]:
    """(subject as spelled in the prompt, the prompt with its first occurrence replaced by ``{}``)."""
    if "{}" in prompt:
        raise rec.fail("prompt", f"must not contain '{{}}' itself (prompt={prompt!r})")
    at = prompt.find(subject)
    if at < 0:
        match = re.search(re.escape(subject), prompt, flags=re.IGNORECASE)
        if match is None:
            raise rec.fail("subject", f"must occur in 'prompt' (subject={subject!r}, prompt={prompt!r})")
        at, subject = match.start(), match.group()
    return subject, prompt[:at] + "{}" + prompt[at + len(subject):]


def _first_text(rec: Record, field: str, value: Any) -> str:
    """The first string of a (possibly nested) list of answers; a string as is."""
    path = field
    while isinstance(value, list):
        if not value:
            raise rec.fail(path, "must be a non-empty string or list of strings (got an empty list)")
        value, path = value[0], f"{path}[0]"
    return rec.check_text(path, value, True)


def _rephrases(rec: Record) -> tuple[str, ...]:
    out: list[str] = []
    for field in ("rephrase", "rephrase_prompt"):
        value = rec.raw(field, None)
        if value is None:
            continue
        if isinstance(value, str):
            out.append(rec.check_text(field, value, False))
        elif isinstance(value, list):
            out.extend(rec.check_text(f"{field}[{i}]", v, False) for i, v in enumerate(value))
        else:
            raise rec.fail(field, f"must be a string or a list of strings (got {json_type(value)})")
    return tuple(dict.fromkeys(out))


def _groups(rec: Record, field: str, first_only: bool) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{group: ((prompt, first ground truth), ...)}`` of a portability/locality block; empty groups dropped."""
    block = rec.raw(field, None)
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise rec.fail(field, f"must be an object mapping group names to lists (got {json_type(block)})")
    groups: dict[str, tuple[tuple[str, str], ...]] = {}
    for name, items in block.items():
        where = f"{field}.{name}"
        if items is None:
            continue
        if isinstance(items, dict):  # a single item instead of a list of one
            items = [items]
        if not isinstance(items, list):
            raise rec.fail(where, f"must be a list of {{prompt, ground_truth}} objects (got {json_type(items)})")
        pairs = []
        for i, item in enumerate(items[:1] if first_only else items):
            if not isinstance(item, dict):
                raise rec.fail(f"{where}[{i}]", f"must be an object with 'prompt' and 'ground_truth' (got {json_type(item)})")
            for key in ("prompt", "ground_truth"):
                if item.get(key) is None:
                    raise rec.fail(f"{where}[{i}].{key}", f"is missing (keys present: {sorted(item)})")
            prompt = item["prompt"][0] if isinstance(item["prompt"], list) and item["prompt"] else item["prompt"]
            pairs.append((rec.check_text(f"{where}[{i}].prompt", prompt, False),
                          _first_text(rec, f"{where}[{i}].ground_truth", item["ground_truth"])))
        if pairs:
            groups[name] = tuple(pairs)
    return groups
