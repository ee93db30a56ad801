"""KnowEdit metrics as EasyEdit computes them and NaKE reports them (spec/metrics.md §3).

Per request, with ``acc(p, a)`` the teacher-forced token accuracy of answer ``a`` after prompt ``p``
(:func:`~kedit.eval.scoring.token_accuracy`):

* **Edit Succ.** = acc(edit prompt, target_new); ``rephrase`` = mean acc over the rephrases (recent/ZsRE);
* **Portability** per group = mean acc over the group's (prompt, ground truth) pairs — SAA
  (``Subject_Aliasing``), LGA (``Logical_Generalization``), RA (``reasoning``/``Reasoning``; also the
  zsRE loader's ``reasoning`` group); any other group is reported under its own name;
* **Locality** per group = mean over the group's pairs of the fraction of answer positions where the
  post-edit argmax on ``prompt + " " + ground truth`` equals the *original* model's argmax, read from
  a :class:`~kedit.eval.cache.PreEditCache` built before any edit (EasyEdit issue #643) — RSA
  (``Relation_Specificity``), FA (``Forgetfulness``). Groups are the ``portability`` keys prefixed
  ``"locality:"`` (:data:`kedit.data.knowedit.LOCALITY_PREFIX`, how ``load_knowedit`` keeps the
  names); locality pairs of a request that belong to no such group (zsRE/CounterFact loaders) form
  the group ``"locality"``;
* **Fluency** = weighted bi/tri-gram entropy (:func:`~kedit.eval.fluency.ngram_entropy`) of the edit
  prompt followed by its generated continuation, 100 tokens in all including the prompt (EasyEdit's
  ``max_out_len=100``). Greedy by default; EasyEdit's ``generate_fast`` samples from the top 5 —
  pass ``fluency_top_k=5`` (seeded) to match.

Aggregation (EasyEdit ``summary_metrics`` and the KnowEdit tables): a group's value is the mean of
its list; per group, the mean over the cases that have it; ``Portability``/``Locality`` overall =
per case the mean over its groups, then the mean over cases. ``summary`` reports everything ×100.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from kedit.data.knowedit import LOCALITY_PREFIX
from kedit.data.requests import EditRequest
from kedit.eval.fluency import ngram_entropy
from kedit.eval.scoring import _check_requests, _encode_prompt, _mean, _score, _special_affixes, greedy_generate

if TYPE_CHECKING:
    from kedit.eval.cache import PreEditCache

__all__ = ["evaluate_knowedit", "SHORT_NAMES"]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

#: group name → the column label of the NaKE/KnowEdit tables
SHORT_NAMES = {
    "Subject_Aliasing": "SAA", "Logical_Generalization": "LGA", "reasoning": "RA", "Reasoning": "RA",
    "Relation_Specificity": "RSA", "Forgetfulness": "FA",
}
_UNNAMED_LOCALITY = "locality"

PROTOCOL = {
    "edit_succ": "token accuracy of target_new after the edit prompt (teacher forcing; EasyEdit rewrite_acc)",
    "rephrase": "token accuracy of target_new after each rephrase, mean over rephrases (EasyEdit rephrase_acc)",
    "portability": "per group: mean token accuracy of the group's ground truths after its prompts "
                   "(SAA=Subject_Aliasing, LGA=Logical_Generalization, RA=reasoning)",
    "locality": "per group: mean over pairs of the fraction of answer positions whose post-edit argmax on "
                "prompt+' '+ground truth equals the ORIGINAL model's argmax (PreEditCache) (RSA=Relation_Specificity, "
                "FA=Forgetfulness); groups = portability keys prefixed 'locality:', other locality pairs -> 'locality'",
    "fluency": "weighted bi/tri-gram entropy (2/3*H2 + 4/3*H3)/2 of edit prompt + generated continuation, "
               "max_out_len tokens in all including the prompt",
    "aggregation": "group value = mean of its list; per group mean over the cases that have it; overall "
                   "Portability/Locality = mean over cases of the per-case mean over groups; summary = x100",
}


def _groups(r: EditRequest) -> tuple[dict[str, tuple[Pair, ...]], dict[str, tuple[Pair, ...]]]:
    """(portability groups, locality groups) of one request."""
    portability = {k: v for k, v in r.portability.items() if not k.startswith(LOCALITY_PREFIX) and v}
    locality = {k[len(LOCALITY_PREFIX):]: v for k, v in r.portability.items() if k.startswith(LOCALITY_PREFIX) and v}
    named = {pair for pairs in locality.values() for pair in pairs}
    rest = tuple(pair for pair in r.locality if pair not in named)
    if rest:
        locality[_UNNAMED_LOCALITY] = rest
    return portability, locality


def _fluency_texts(model, tokenizer, prompts: Sequence[str], *, max_len: int, top_k: int | None, seed: int,
                   batch_size: int) -> list[str]:
    """Continuations of ``prompts`` so that prompt + continuation is ``max_len`` tokens (≥ 1 new token)."""
    suffix = _special_affixes(tokenizer)[1]
    by_budget: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_budget.setdefault(max(1, max_len - len(_encode_prompt(tokenizer, p, suffix))), []).append(i)
    texts = [""] * len(prompts)
    for budget, indices in sorted(by_budget.items()):
        outs = greedy_generate(model, tokenizer, [prompts[i] for i in indices], max_new_tokens=budget,
                               batch_size=batch_size, top_k=top_k, seed=seed + budget)
        for i, text in zip(indices, outs):
            texts[i] = text
    return texts


def evaluate_knowedit(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    pre_cache: "PreEditCache | None" = None,
    *,
    batch_size: int = 32,
    fluency: bool = True,
    fluency_max_len: int = 100,
    fluency_top_k: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Score requests with the KnowEdit metrics (module docstring; spec/metrics.md §3).

    Args:
        requests: e.g. from :func:`kedit.data.knowedit.load_knowedit` (named locality groups) or the
            zsRE loader (portability group ``reasoning``, one unnamed locality group).
        pre_cache: built on the ORIGINAL model from the same requests (``PreEditCache.build``); without
            it locality is None.
        batch_size: sequences per forward pass / generation batch; does not change the results.
        fluency: generate and score fluency (one generation per request; the slow part).
        fluency_max_len: tokens of prompt + continuation (EasyEdit 100).
        fluency_top_k: None = greedy; 5 = EasyEdit's top-5 sampling (seeded with ``seed``).

    Returns:
        ``{"metrics": {edit_succ, rephrase, portability: {group: v}, portability_mean, locality:
        {group: v}, locality_mean, fluency, n_cases}, "summary": {"Edit Succ.", "SAA", "LGA", "RA",
        "Portability", "RSA", "FA", "Locality", "Fluency", ...} (×100; groups present only),
        "cases": [{id, edit_succ, rephrase, portability, portability_mean, locality, locality_mean,
        fluency, generation}], "protocol": {metric: definition}}``. Fractions in [0, 1] except fluency
        (bits); a metric with no prompts is None.

    Raises:
        KeyError: ``pre_cache`` has no entry for a locality pair (built from other requests).
        ValueError: a cached entry has a different token count (another tokenizer).

    Example:
        >>> from kedit.eval.cache import PreEditCache
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> r = EditRequest("{} was born in", "Ada", "Paris", portability={"locality:Forgetfulness": (("Bob is", "tall"),)},
        ...                 locality=(("Bob is", "tall"),))
        >>> out = evaluate_knowedit(model, tok, [r], PreEditCache.build(model, tok, [r]), fluency=False)
        >>> out["metrics"]["locality"], out["summary"]["FA"]
        ({'Forgetfulness': 1.0}, 100.0)
    """
    requests = _check_requests(requests, "evaluate_knowedit")
    if not isinstance(fluency_max_len, int) or fluency_max_len < 1:
        raise ValueError(f"The 'fluency_max_len' parameter of evaluate_knowedit must be a positive int. Got {fluency_max_len!r} instead.")
    split = [_groups(r) for r in requests]
    pairs: list[Pair] = []
    for r, (port, loc) in zip(requests, split):
        pairs += [(r.text, r.target_new), *((p, r.target_new) for p in r.rephrases)]
        for group in (*port.values(), *loc.values()):
            pairs += group
    pairs = list(dict.fromkeys(pairs))
    scored = dict(zip(pairs, _score(model, tokenizer, pairs, batch_size=batch_size, caller="evaluate_knowedit")))
    if pre_cache is None:
        logger.info("evaluate_knowedit: no PreEditCache given, so locality is not computed (None)")

    def acc(group) -> float | None:
        return _mean(scored[pair].accuracy for pair in group)

    def agreement(group) -> float:
        values = []
        for prompt, answer in group:
            before, after = pre_cache.locality_argmax(prompt, answer), scored[(prompt, answer)].argmax
            if len(before) != len(after):
                raise ValueError(
                    f"evaluate_knowedit: the PreEditCache entry for {(prompt, answer)!r} has {len(before)} tokens but "
                    f"the tokenizer gives {len(after)}; build the cache with the same tokenizer."
                )
            values.append(sum(a == b for a, b in zip(before, after)) / len(after))
        return sum(values) / len(values)

    generations: list[str | None] = [None] * len(requests)
    if fluency:
        generations = _fluency_texts(model, tokenizer, [r.text for r in requests], max_len=fluency_max_len,
                                     top_k=fluency_top_k, seed=seed, batch_size=batch_size)
    cases = []
    for r, (port, loc), gen in zip(requests, split, generations):
        portability = {k: acc(v) for k, v in port.items()}
        locality = {k: agreement(v) for k, v in loc.items()} if pre_cache is not None else {}
        cases.append({
            "id": r.id,
            "edit_succ": acc([(r.text, r.target_new)]),
            "rephrase": acc([(p, r.target_new) for p in r.rephrases]),
            "portability": portability,
            "portability_mean": _mean(portability.values()),
            "locality": locality,
            "locality_mean": _mean(locality.values()),
            "fluency": None if gen is None else ngram_entropy(r.text + gen),
            "generation": gen,
        })
    metrics: dict[str, Any] = {k: _mean(c[k] for c in cases) for k in ("edit_succ", "rephrase")}
    for block in ("portability", "locality"):
        keys = list(dict.fromkeys(k for c in cases for k in c[block]))
        metrics[block] = {k: _mean(c[block].get(k) for c in cases) for k in keys}
        metrics[f"{block}_mean"] = _mean(c[f"{block}_mean"] for c in cases)
    metrics["fluency"] = _mean(c["fluency"] for c in cases)
    metrics["n_cases"] = len(cases)
    how = "greedy" if fluency_top_k is None else f"top-{fluency_top_k} sampling, seed {seed}"
    protocol = dict(
        PROTOCOL,
        fluency_generation=f"{how}, max_out_len {fluency_max_len}" if fluency else "not computed",
        locality_reference="PreEditCache of the original model" if pre_cache is not None else "none: not computed",
    )
    return {"metrics": metrics, "summary": _summary(metrics), "cases": cases, "protocol": protocol}


def _summary(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The table row: ×100, group columns under their short names (SAA, LGA, RA, RSA, FA)."""

    def pct(v):
        return None if v is None else 100.0 * v

    row: dict[str, float | None] = {"Edit Succ.": pct(metrics["edit_succ"])}
    if metrics["rephrase"] is not None:
        row["Rephrase"] = pct(metrics["rephrase"])
    for block, label in (("portability", "Portability"), ("locality", "Locality")):
        for group, value in metrics[block].items():
            row[SHORT_NAMES.get(group, group)] = pct(value)
        row[label] = pct(metrics[f"{block}_mean"])
    row["Fluency"] = pct(metrics["fluency"])
    return row
