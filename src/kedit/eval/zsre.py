"""ZsRE / KnowEdit token-accuracy metrics (spec/metrics.md §2, §3)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from kedit.data.requests import EditRequest
from kedit.eval.scoring import _check_requests, _mean, _score

if TYPE_CHECKING:
    from kedit.eval.cache import PreEditCache

__all__ = ["evaluate_zsre"]


def _pairs_of(r: EditRequest) -> list[tuple[str, str]]:
    pairs = [(r.text, r.target_new), *((p, r.target_new) for p in r.rephrases), *r.locality]
    for group in r.portability.values():
        pairs.extend(group)
    return pairs


def evaluate_zsre(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    *,
    pre: "PreEditCache | None" = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score requests by teacher-forced token accuracy (spec/metrics.md §2 zsRE, §3 KnowEdit).

    Per request (fractions; papers report ×100), with ``acc(p, a)`` = :func:`~kedit.eval.token_accuracy`:

    * ``efficacy`` = acc(``r.text``, target_new) (KnowEdit "Edit Succ.");
    * ``generalization`` = mean over ``r.rephrases`` of acc(rephrase, target_new);
    * ``specificity`` = mean over ``r.locality`` of acc(prompt, ground-truth answer) — against the
      answers, not pre-edit predictions (§2; prompts are used verbatim, so a zsRE loader adds the "?");
    * ``portability_by_key`` = {key: mean acc over ``r.portability[key]``}; ``portability`` = mean over keys;
    * ``locality_pre`` (only with ``pre``) = mean over locality pairs of the fraction of answer
      positions where the argmax equals the *original* model's argmax cached in ``pre`` (KnowEdit
      RSA/FA, §3; EasyEdit issue #643).

    One batched forward pass covers all pairs of all requests. A metric a request has no prompts for
    is ``None``; means are over the cases that have a value.

    Returns:
        ``{"metrics": {efficacy, generalization, specificity, portability, portability_by_key,
        locality_pre, n_cases}, "cases": [{id, efficacy, generalization, specificity, portability,
        portability_by_key, locality_pre}, ...]}``

    Raises:
        KeyError: ``pre`` has no entry for one of the locality pairs.

    Example:
        >>> from kedit.data.requests import EditRequest
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("gpt2")
        >>> r = EditRequest("Who wrote {}?", "Hamlet", "Marlowe", locality=(("nq question: capital of France?", "Paris"),))
        >>> out = evaluate_zsre(model, tok, [r])
        >>> out["metrics"]["n_cases"], out["metrics"]["locality_pre"]
        (1, None)
    """
    requests = _check_requests(requests, "evaluate_zsre")
    pairs = list(dict.fromkeys(pair for r in requests for pair in _pairs_of(r)))
    scored = dict(zip(pairs, _score(model, tokenizer, pairs, batch_size=batch_size, caller="evaluate_zsre")))

    def acc(group) -> float | None:
        return _mean(scored[pair].accuracy for pair in group)

    cases = []
    for r in requests:
        by_key = {key: acc(group) for key, group in r.portability.items() if group}
        case: dict[str, Any] = {
            "id": r.id,
            "efficacy": acc([(r.text, r.target_new)]),
            "generalization": acc([(p, r.target_new) for p in r.rephrases]),
            "specificity": acc(r.locality),
            "portability": _mean(by_key.values()),
            "portability_by_key": by_key,
            "locality_pre": None,
        }
        if pre is not None:
            agreement = []
            for prompt, answer in r.locality:
                before, after = pre.locality_argmax(prompt, answer), scored[(prompt, answer)].argmax
                if len(before) != len(after):
                    raise ValueError(
                        f"evaluate_zsre: the PreEditCache entry for {(prompt, answer)!r} has {len(before)} tokens but "
                        f"the tokenizer gives {len(after)}; build the cache with the same tokenizer."
                    )
                agreement.append(sum(a == b for a, b in zip(before, after)) / len(after))
            case["locality_pre"] = _mean(agreement)
        cases.append(case)
    keys = list(dict.fromkeys(k for c in cases for k in c["portability_by_key"]))
    metrics: dict[str, Any] = {
        name: _mean(c[name] for c in cases)
        for name in ("efficacy", "generalization", "specificity", "portability", "locality_pre")
    }
    metrics["portability_by_key"] = {k: _mean(c["portability_by_key"].get(k) for c in cases) for k in keys}
    metrics["n_cases"] = len(cases)
    return {"metrics": metrics, "cases": cases}
