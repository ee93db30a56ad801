"""Dataset name -> loader registry, so configs and the CLI can say ``dataset: zsre`` instead of
importing a function, plus a key-based guess for files whose dataset is not stated."""
from __future__ import annotations

import logging
import os
from typing import Callable

from kedit.data._records import read_json_list
from kedit.data.counterfact import load_counterfact
from kedit.data.knowedit import load_knowedit
from kedit.data.requests import EditRequest
from kedit.data.unstructured import load_akew_mquake, load_editeverything, load_unkebench
from kedit.data.zsre import load_zsre
from kedit.errors import DataError, closest

__all__ = ["DATASET_LOADERS", "load_requests", "detect_dataset"]

logger = logging.getLogger(__name__)

Loader = Callable[..., list[EditRequest]]

DATASET_LOADERS: dict[str, Loader] = {
    "counterfact": load_counterfact,
    "zsre": load_zsre,
    "knowedit": load_knowedit,
    "unkebench": load_unkebench,
    "akew-mquake": load_akew_mquake,
    "editeverything": load_editeverything,
}


def load_requests(
    dataset: str, path: str | os.PathLike, *, n: int | None = None, start: int = 0
) -> list[EditRequest]:
    """Load requests with the loader registered under ``dataset`` (``"auto"``: guess from the keys).

    Raises:
        DataError: unknown dataset name (the message lists the known ones), or a malformed file.
        FileNotFoundError: ``path`` is not a file.

    Example:
        >>> reqs = load_requests("zsre", data_dir() / "zsre/zsre_mend_edit.json", n=3)  # doctest: +SKIP
    """
    if dataset == "auto":
        dataset = detect_dataset(path)
        logger.info("%s: detected dataset %r", path, dataset)
    loader = DATASET_LOADERS.get(dataset) if isinstance(dataset, str) else None
    if loader is None:
        known = sorted(DATASET_LOADERS)
        hint = closest(str(dataset), known)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise DataError(f"Unknown dataset {dataset!r}; known datasets: {known} (or 'auto').{did_you_mean}")
    return loader(path, n=n, start=start)


def detect_dataset(path: str | os.PathLike) -> str:
    """Guess the dataset name from the keys of the file's first record.

    ``requested_rewrite`` whose (first) rewrite has ``fact_new_uns`` → ``"akew-mquake"`` (checked before
    CounterFact, which shares ``requested_rewrite``); question/para_question/answer/sub_question →
    ``"unkebench"``; question/answer/category → ``"editeverything"``.
    """
    records, source = read_json_list(path, "dataset")
    if not records:
        raise DataError(f"{source}: contains no records, so its dataset cannot be guessed; name it explicitly")
    first = records[0]
    keys = set(first) if isinstance(first, dict) else set()
    if "requested_rewrite" in keys and _has_unstructured_fact(first["requested_rewrite"]):
        return "akew-mquake"
    if "requested_rewrite" in keys or {"prompt", "subject", "target_new"} <= keys:
        return "counterfact"
    if {"src", "subject", "answers"} <= keys:
        return "zsre"
    if {"question", "para_question", "answer", "sub_question"} <= keys:
        return "unkebench"
    if {"question", "answer", "category"} <= keys:
        return "editeverything"
    raise DataError(
        f"{source}: record 0: cannot tell the dataset from its keys {sorted(keys)}; expected 'requested_rewrite' "
        "or prompt/subject/target_new (counterfact), src/subject/answers (zsre), requested_rewrite with "
        "fact_new_uns (akew-mquake), question/para_question/answer/sub_question (unkebench), or "
        "question/answer/category (editeverything)"
    )


def _has_unstructured_fact(rewrite) -> bool:
    """True when the (first) requested rewrite carries AKEW's ``fact_new_uns``."""
    if isinstance(rewrite, list):
        rewrite = rewrite[0] if rewrite else None
    return isinstance(rewrite, dict) and "fact_new_uns" in rewrite
