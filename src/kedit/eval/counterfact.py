"""CounterFact probability-comparison metrics, MEMIT/AlphaEdit protocol (spec/metrics.md §1)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import nn

from kedit.data.requests import EditRequest
from kedit.eval.scoring import _check_requests, _mean, candidate_nll

__all__ = ["evaluate_counterfact"]

_SUCCESS_KEYS = ("efficacy", "generalization", "specificity")


def _compare(nll: dict, triples: list[tuple[str, str, str]]) -> tuple[float | None, float | None]:
    """Mean of 1[NLL(good) < NLL(bad)] and of exp(−NLL(good)) − exp(−NLL(bad)) over (prompt, good, bad)."""
    if not triples:
        return None, None
    success, magnitude = [], []
    for prompt, good, bad in triples:
        a, b = nll[(prompt, good)], nll[(prompt, bad)]
        success.append(float(a < b))
        magnitude.append(math.exp(-a) - math.exp(-b))
    return sum(success) / len(success), sum(magnitude) / len(magnitude)


def _harmonic_mean(values: list[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def _triples(r: EditRequest) -> dict[str, list[tuple[str, str, str]]]:
    """(prompt, candidate that should win, candidate that should lose) per metric of one request."""
    rewrite = [] if r.target_true is None else [(r.text, r.target_new, r.target_true)]
    paraphrase = [] if r.target_true is None else [(p, r.target_new, r.target_true) for p in r.rephrases]
    neighborhood = [(prompt, answer, r.target_new) for prompt, answer in r.locality]
    return {"efficacy": rewrite, "generalization": paraphrase, "specificity": neighborhood}


def evaluate_counterfact(
    model: nn.Module, tokenizer, requests: Sequence[EditRequest], *, batch_size: int = 32
) -> dict[str, Any]:
    """Score CounterFact-style requests by comparing candidate NLLs (spec/metrics.md §1).

    Per request (all values are fractions; papers report ×100):

    * ``efficacy`` = 1[NLL(target_new) < NLL(target_true)] on ``r.text`` (``post_rewrite_success``);
    * ``generalization`` = the same, averaged over ``r.rephrases`` (``post_paraphrase_success``);
    * ``specificity`` = mean over ``r.locality`` pairs (prompt, answer) of 1[NLL(answer) < NLL(target_new)]
      (``post_neighborhood_success``);
    * ``*_magnitude`` = the matching mean of exp(−NLL(winner)) − exp(−NLL(loser)) (``post_*_diff``).

    NLL is the mean per-token NLL of :func:`~kedit.eval.candidate_nll`; all pairs of all requests go
    through one batched call. A request without ``target_true`` has no efficacy/generalization
    (``None``) and is counted in ``skipped``; a request without rephrases or locality pairs has
    ``None`` for that metric. Means are over the cases that have a value; ``score`` is the harmonic
    mean of the three success means (``post_score``), ``None`` when one is missing.

    Returns:
        ``{"metrics": {efficacy, generalization, specificity, efficacy_magnitude,
        generalization_magnitude, specificity_magnitude, score, n_cases, skipped},
        "cases": [{id, efficacy, efficacy_magnitude, generalization, generalization_magnitude,
        specificity, specificity_magnitude, skipped}, ...]}``

    Example:
        >>> from kedit.data.requests import EditRequest
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> r = EditRequest("{} was born in", "Ada", "Paris", target_true="London", locality=(("Bob lives in", "Rome"),))
        >>> sorted(evaluate_counterfact(model, tok, [r])["metrics"])[:3]
        ['efficacy', 'efficacy_magnitude', 'generalization']
    """
    requests = _check_requests(requests, "evaluate_counterfact")
    per_request = [_triples(r) for r in requests]
    pairs = list(
        dict.fromkeys(
            pair
            for triples in per_request
            for group in triples.values()
            for prompt, good, bad in group
            for pair in ((prompt, good), (prompt, bad))
        )
    )
    nll = dict(zip(pairs, candidate_nll(model, tokenizer, pairs, batch_size=batch_size))) if pairs else {}
    cases = []
    for r, triples in zip(requests, per_request):
        case: dict[str, Any] = {"id": r.id}
        for key in _SUCCESS_KEYS:
            case[key], case[f"{key}_magnitude"] = _compare(nll, triples[key])
        case["skipped"] = r.target_true is None
        cases.append(case)
    metrics: dict[str, Any] = {}
    for key in _SUCCESS_KEYS:
        metrics[key] = _mean(c[key] for c in cases)
        metrics[f"{key}_magnitude"] = _mean(c[f"{key}_magnitude"] for c in cases)
    metrics["score"] = _harmonic_mean([metrics[k] for k in _SUCCESS_KEYS])
    metrics["n_cases"] = len(cases)
    metrics["skipped"] = sum(c["skipped"] for c in cases)
    return {"metrics": metrics, "cases": cases}
