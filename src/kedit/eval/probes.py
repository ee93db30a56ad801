"""General-capability probes: SST-2, MRPC, CoLA, RTE, NLI and MMLU, 0-shot (spec/metrics.md §5).

The items are AlphaEdit's fixed evaluation subsets (``<data>/glue/<task>.pkl``, plain ``list[dict]``
pickles), read with an unpickler that refuses every class (:func:`load_probe_set`). Per task the
first ``skip = 10`` items are reserved for few-shot context (unused: 0-shot) and the next ``n = 100``
are scored.

Each item is scored twice:

* **generation** — greedy decoding of ``GEN_LEN = 5`` new tokens from the exact prompt; the answer is
  parsed from the new text (:func:`parse_answer`, unparseable → ``-1``, which counts as wrong).
  Gives ``correct``/``incorrect``/``invalid``, ``accuracy = correct / n``, weighted ``f1`` and ``mcc``.
* **candidates** — the candidate continuation with the lowest mean per-token NLL given the prompt
  (:func:`~kedit.eval.scoring.candidate_nll`, i.e. the highest geometric-mean per-token probability)
  is the prediction; gives ``f1_new`` (and ``accuracy_new``). Ties go to the first candidate (class 0),
  as the reference ``1 if p_yes > p_no else 0``.

Class indices, candidates and label conventions (each checked against records of the files):

=======  ===============================  =================================  ==========================
task     gold class (file field)          class 0 / class 1 (… / 3)          candidates (class order)
=======  ===============================  =================================  ==========================
sst2     ``label`` (1 = positive)         negative / positive                " negative", " positive"
mrpc     ``label`` (1 = paraphrase)       No / Yes                           " No", " Yes"
cola     ``label`` (1 = acceptable)       No / Yes                           " No", " Yes"
rte      ``1 - label`` (GLUE 0 = entail)  False / True                       " False", " True"
nli      ``label == "entailment"``        False / True                       " False", " True"
mmlu     ``answer`` (0..3)                A / B / C / D                      " A", " B", " C", " D"
=======  ===============================  =================================  ==========================

Deviations from the reference code (AlphaEdit ``glue_eval/*_eval.py``), each deliberate:

* **RTE labels**: GLUE RTE uses ``0 = entailment, 1 = not_entailment`` (``rte.pkl`` record 0, "The
  Dalai Lama has been living in exile since 10,000." from "…more than 10,000 Tibetans living in
  exile", is label 1; record 1, a verbatim entailment, is label 0). The reference maps label 1 to
  "True", which inverts the gold answers; here label 0 ↔ True.
* **Answer parsing** matches whole words (``\\byes\\b``) and takes the first one in the generated
  text; the reference tests substrings in a fixed order (so "not"/"know" count as "no"). MMLU takes
  the first standalone capital letter A–D, optionally in parentheses (the reference looks for a
  letter followed by a newline).
* The generated text is only the new tokens (the reference decodes prompt + continuation and splits
  on the prompt's last marker, which is equivalent unless the continuation repeats the marker).

Weighted F1 and MCC follow scikit-learn's ``f1_score(average="weighted")`` and ``matthews_corrcoef``
(the ``-1`` predictions are a class of their own with zero support; :func:`weighted_f1`, :func:`mcc`).
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kedit.errors import ConfigError, DataError, param_message

__all__ = [
    "PROBES",
    "GEN_LEN",
    "load_probe_set",
    "probe_prompt",
    "gold_label",
    "parse_answer",
    "weighted_f1",
    "mcc",
    "run_probes",
    "compact",
    "mean_f1",
    "CANDIDATES",
]

PROBES = ("sst2", "mrpc", "cola", "rte", "nli", "mmlu")
GEN_LEN = 5  # new tokens generated per item (glue_eval.py gen_len)
FEW_SHOT_RESERVED = 10  # items at the start of each file kept for few-shot context

_KEYS = {
    "sst2": ("sentence", "label"),
    "mrpc": ("sentence1", "sentence2", "label"),
    "cola": ("sentence", "label"),
    "rte": ("sentence1", "sentence2", "label"),
    "nli": ("sentence1", "sentence2", "label"),
    "mmlu": ("question", "choices", "answer"),
}


# -- loading ------------------------------------------------------------------------------------
class _RefusingUnpickler(pickle.Unpickler):
    """An unpickler that loads builtin containers and scalars only: every class lookup raises."""

    def __init__(self, fh, source: str):
        super().__init__(fh)
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise DataError(f"refusing to unpickle class {module}.{name} from {self._source}")


def _check_name(name: str, caller: str) -> None:
    if name not in PROBES:
        raise ConfigError(param_message("name", caller, f"one of {list(PROBES)}", name))


def load_probe_set(name: str, path: str | os.PathLike | None = None, *, n: int | None = 100,
                   skip: int = FEW_SHOT_RESERVED) -> list[dict[str, Any]]:
    """The probe items of task ``name``: records ``skip … skip + n`` of its pickle.

    Args:
        name: one of :data:`PROBES`.
        path: the pickle (default ``data_dir()/"glue"/f"{name}.pkl"``).
        n: number of items (None: all after ``skip``); fewer are returned when the file is shorter.
        skip: leading items reserved for few-shot context (metrics.md §5: 10).

    Raises:
        DataError: the file pickles any class (nothing is imported or constructed), is not a list of
            dicts, or a record lacks a field the task's prompt needs.

    Example:
        >>> items = load_probe_set("sst2", n=2)  # doctest: +SKIP
        >>> sorted(items[0])  # doctest: +SKIP
        ['idx', 'label', 'sentence']
    """
    _check_name(name, "load_probe_set")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ConfigError(param_message("n", "load_probe_set", "None or an int >= 0", n))
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise ConfigError(param_message("skip", "load_probe_set", "an int >= 0", skip))
    if path is None:
        from kedit.paths import data_dir

        path = data_dir() / "glue" / f"{name}.pkl"
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: probe file for {name!r} not found (set KEDIT_DATA_DIR or pass path=).")
    raw = path.read_bytes()
    try:
        data = _RefusingUnpickler(io.BytesIO(raw), str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a pickled list of dicts. Got {type(data).__name__} instead.")
    items = data[skip:] if n is None else data[skip:skip + n]
    for i, record in enumerate(items):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {skip + i} must be a dict. Got {type(record).__name__} instead.")
        missing = [k for k in _KEYS[name] if k not in record]
        if missing:
            raise DataError(f"{path}: record {skip + i}: missing field(s) {missing} for task {name!r}")
    return items


# -- prompts, labels, parsing --------------------------------------------------------------------
def probe_prompt(name: str, item: Mapping[str, Any]) -> str:
    """The exact 0-shot prompt of metrics.md §5 for one item.

    Example:
        >>> probe_prompt("sst2", {"sentence": "great film", "label": 1})
        'Review :great film\\nSentiment :'
    """
    if name == "sst2":
        return "Review :" + item["sentence"] + "\nSentiment :"
    if name == "mrpc":
        return ("Are the sentences paraphrases of each other.\n"
                f"Sentence 1: {item['sentence1']}\nSentence 2: {item['sentence2']}\nAnswer:")
    if name == "cola":
        return f"Is this sentence linguistically acceptable?\nSentence: {item['sentence']}\nAnswer: "
    if name == "rte":
        return f"{item['sentence1']}\nquestion: {item['sentence2']} True or False?\nanswer:"
    if name == "nli":
        return f"{item['sentence1']} entails the {item['sentence2']} True or False? Answer:"
    if name == "mmlu":
        choices = item["choices"]
        if len(choices) != 4:
            raise DataError(f"mmlu item must have 4 choices. Got {len(choices)} instead "
                            f"(question={item['question']!r}).")
        options = "".join(f"({letter}) {choice}\n" for letter, choice in zip("ABCD", choices))
        return f"Question: {item['question']}\n{options}Answer:"
    _check_name(name, "probe_prompt")
    raise AssertionError  # unreachable


def gold_label(name: str, item: Mapping[str, Any]) -> int:
    """The gold class index of one item (module docstring table): 1 = positive/yes/true, 0..3 = A..D."""
    if name in ("sst2", "mrpc", "cola"):
        return int(item["label"])
    if name == "rte":
        return 1 if int(item["label"]) == 0 else 0  # GLUE RTE: 0 = entailment (True)
    if name == "nli":
        return 1 if item["label"] == "entailment" else 0
    if name == "mmlu":
        return int(item["answer"])
    _check_name(name, "gold_label")
    raise AssertionError  # unreachable


_WORDS = {
    "sst2": {"negative": 0, "positive": 1},
    "mrpc": {"no": 0, "yes": 1},
    "cola": {"no": 0, "yes": 1},
    "rte": {"false": 0, "true": 1},
    "nli": {"false": 0, "true": 1},
}
_WORD_RE = {k: re.compile(r"\b(" + "|".join(v) + r")\b", re.IGNORECASE) for k, v in _WORDS.items()}
_LETTER_RE = re.compile(r"(?<![A-Za-z])\(?([ABCD])\)?(?![A-Za-z])")

CANDIDATES: dict[str, tuple[str, ...]] = {
    "sst2": (" negative", " positive"),
    "mrpc": (" No", " Yes"),
    "cola": (" No", " Yes"),
    "rte": (" False", " True"),
    "nli": (" False", " True"),
    "mmlu": (" A", " B", " C", " D"),
}


def parse_answer(name: str, text: str) -> int:
    """The class index named first in a generated continuation ``text``; -1 when none is.

    Binary tasks match whole words, case-insensitively (positive/negative, yes/no, true/false);
    MMLU takes the first standalone capital letter A–D, optionally in parentheses.

    Example:
        >>> parse_answer("mrpc", " Yes, they are"), parse_answer("cola", " I do not know")
        (1, -1)
        >>> parse_answer("mmlu", " (C) 42")
        2
    """
    _check_name(name, "parse_answer")
    if name == "mmlu":
        match = _LETTER_RE.search(text)
        return "ABCD".index(match.group(1)) if match else -1
    match = _WORD_RE[name].search(text)
    return _WORDS[name][match.group(1).lower()] if match else -1


# -- metrics -------------------------------------------------------------------------------------
def _confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length. Got {y_true.shape} and {y_pred.shape}.")
    labels = np.union1d(y_true, y_pred)
    t = np.searchsorted(labels, y_true)
    p = np.searchsorted(labels, y_pred)
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)  # rows: true, columns: predicted
    np.add.at(matrix, (t, p), 1)
    return labels, matrix


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Support-weighted mean of the per-class F1 = 2·TP / (2·TP + FP + FN) (scikit-learn
    ``f1_score(average="weighted")``; a class never predicted has F1 0; 0.0 for empty input).

    Example:
        >>> weighted_f1([0, 0, 1, 1], [0, 1, 1, 1])  # F1: class 0 = 2/3, class 1 = 4/5
        0.7333333333333334
    """
    if len(y_true) == 0:
        return 0.0
    _, matrix = _confusion(y_true, y_pred)
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    denom = 2 * tp + (predicted - tp) + (support - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


def mcc(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K, scikit-learn
    ``matthews_corrcoef``): ``(c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))`` over the
    confusion matrix (c correct, s total, t_k / p_k true / predicted counts); 0.0 when undefined.

    Example:
        >>> round(mcc([0, 0, 1, 1], [0, 1, 1, 1]), 4)  # (3·4 − 8) / sqrt((16 − 10)(16 − 8))
        0.5774
    """
    if len(y_true) == 0:
        return 0.0
    _, matrix = _confusion(y_true, y_pred)
    t = matrix.sum(axis=1).astype(float)
    p = matrix.sum(axis=0).astype(float)
    c, s = float(np.trace(matrix)), float(matrix.sum())
    cov_tp = c * s - float(p @ t)
    cov_pp = s * s - float(p @ p)
    cov_tt = s * s - float(t @ t)
    if cov_pp * cov_tt == 0:
        return 0.0
    return cov_tp / math.sqrt(cov_pp * cov_tt)


# -- running -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _TaskRun:
    name: str
    gold: list[int]
    pred: list[int]
    pred_new: list[int]
    seconds: float

    def result(self) -> dict[str, Any]:
        n = len(self.gold)
        correct = sum(p == g for p, g in zip(self.pred, self.gold))
        invalid = sum(p == -1 for p in self.pred)
        correct_new = sum(p == g for p, g in zip(self.pred_new, self.gold))
        return {
            "n": n,
            "correct": correct,
            "incorrect": n - correct - invalid,
            "invalid": invalid,
            "accuracy": correct / n if n else None,
            "f1": weighted_f1(self.gold, self.pred),
            "mcc": mcc(self.gold, self.pred),
            "f1_new": weighted_f1(self.gold, self.pred_new),
            "accuracy_new": correct_new / n if n else None,
            "seconds": round(self.seconds, 3),
        }


def _items_for(name: str, data, n: int) -> list[dict[str, Any]]:
    if data is None or isinstance(data, (str, os.PathLike)):
        path = None if data is None else Path(data) / f"{name}.pkl"
        return load_probe_set(name, path, n=n)
    if name not in data:
        raise ConfigError(f"run_probes: 'data' has no items for task {name!r} (keys: {sorted(data)}).")
    return list(data[name])[:n]


def run_probes(model, tokenizer, names: Sequence[str] = PROBES, *, n: int = 100,
               data: Mapping[str, Sequence[Mapping[str, Any]]] | str | os.PathLike | None = None,
               batch_size: int = 16, progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Score the general-capability probes on the model as it is now (metrics.md §5, 0-shot).

    Args:
        names: tasks from :data:`PROBES`.
        n: items per task (the first ``n`` after the 10 reserved ones).
        data: None (read ``data_dir()/glue``), a folder holding ``<task>.pkl``, or a mapping
            ``{task: items}`` of already loaded items (the first ``n`` of each are used).
        batch_size: prompts per generation / scoring pass (does not change the answers beyond
            floating-point noise of padded batches).
        progress: optional callback called with each task name before it runs.

    Returns:
        ``{task: {n, correct, incorrect, invalid, accuracy, f1, mcc, f1_new, accuracy_new, seconds}}``.

    Example:
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> items = {"sst2": [{"sentence": "fine", "label": 1}]}
        >>> run_probes(model, tok, ["sst2"], data=items)["sst2"]["n"]
        1
    """
    from kedit.eval.scoring import candidate_nll, greedy_generate

    if isinstance(names, str):
        names = [names]
    for name in names:
        _check_name(name, "run_probes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(param_message("n", "run_probes", "a positive int", n))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if progress is not None:
            progress(name)
        t0 = time.perf_counter()
        items = _items_for(name, data, n)
        prompts = [probe_prompt(name, item) for item in items]
        gold = [gold_label(name, item) for item in items]
        texts = (greedy_generate(model, tokenizer, prompts, max_new_tokens=GEN_LEN, batch_size=batch_size)
                 if items else [])
        pred = [parse_answer(name, text) for text in texts]
        candidates = CANDIDATES[name]
        pairs = [(prompt, c) for prompt in prompts for c in candidates]
        nll = candidate_nll(model, tokenizer, pairs, batch_size=batch_size) if pairs else []
        k = len(candidates)
        pred_new = [int(np.argmin(nll[i * k:(i + 1) * k])) for i in range(len(prompts))]
        out[name] = _TaskRun(name, gold, pred, pred_new, time.perf_counter() - t0).result()
    return out


def compact(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The journal form of :func:`run_probes` results: ``{task: {accuracy, f1, mcc, f1_new, invalid}}``."""
    keys = ("accuracy", "f1", "mcc", "f1_new", "invalid")
    return {task: {k: r.get(k) for k in keys} for task, r in results.items()}


def mean_f1(results: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean over tasks of the generation-parsed weighted F1 (None without tasks)."""
    values = [r["f1"] for r in results.values() if r.get("f1") is not None]
    return sum(values) / len(values) if values else None
