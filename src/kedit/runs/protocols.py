"""Evaluation protocols of the bench runner: how a dataset's requests are scored, pooled over
independent batches, and reduced to the headline numbers of ``summary.json``.

* ``counterfact`` — probability comparisons (metrics.md §1);
* ``zsre`` — teacher-forced token accuracy with portability (§2);
* ``knowedit`` — EasyEdit's KnowEdit metrics (§3): edit success, portability and locality groups;
  also usable on zsRE/CounterFact records (``--protocol knowedit``);
* ``unstructured`` — long answers generated and scored with BLEU / ROUGE-L / similarity (§4).

Every protocol adds ``fluency`` (n-gram entropy in bits) to each case.
"""
from __future__ import annotations

from typing import Any, Sequence

from kedit.data.requests import EditRequest
from kedit.errors import ConfigError, param_message

__all__ = ["PROTOCOLS", "DATASET_PROTOCOL", "DATASETS", "protocol_for", "evaluate", "aggregate", "headline",
           "needs_pre_cache", "FLUENCY_TOKENS", "fluency_protocol"]

PROTOCOLS = ("counterfact", "zsre", "knowedit", "unstructured")
DATASET_PROTOCOL = {"counterfact": "counterfact", "zsre": "zsre", "knowedit": "knowedit",
                    "unkebench": "unstructured", "akew-mquake": "unstructured", "editeverything": "unstructured"}
DATASETS = tuple(DATASET_PROTOCOL)

#: New tokens of the greedy generation scored for fluency (n-gram entropy), structured protocols.
FLUENCY_TOKENS = 40

# Keys of the structured evaluators' metric dicts that are fractions in [0, 1].
_FRACTION_KEYS = {
    "counterfact": ("efficacy", "generalization", "specificity", "score"),
    "zsre": ("efficacy", "generalization", "specificity", "portability", "locality_pre"),
}


def protocol_for(dataset: str, protocol: str | None = None) -> str:
    """The protocol that scores ``dataset`` (``protocol`` overrides; checked)."""
    if dataset not in DATASET_PROTOCOL:
        raise ConfigError(param_message("dataset", "run_bench", f"one of {list(DATASETS)}", dataset))
    name = protocol or DATASET_PROTOCOL[dataset]
    if name not in PROTOCOLS:
        raise ConfigError(param_message("protocol", "run_bench", f"one of {list(PROTOCOLS)}", name))
    if name == "unstructured" and DATASET_PROTOCOL[dataset] != "unstructured" or \
            DATASET_PROTOCOL[dataset] == "unstructured" and name != "unstructured":
        raise ConfigError(f"run_bench: protocol {name!r} does not apply to dataset {dataset!r} (long-answer datasets "
                          "use 'unstructured', fact datasets use counterfact/zsre/knowedit).")
    return name


def needs_pre_cache(protocol: str) -> bool:
    """Locality against the *original* model's argmax needs a cache built before editing."""
    return protocol in ("zsre", "knowedit")


def fluency_protocol(protocol: str) -> str:
    if protocol == "unstructured":
        return "n-gram entropy (2/3·H2 + 4/3·H3)/2 in bits of the greedy answer to each question"
    if protocol == "knowedit":
        return "n-gram entropy (2/3·H2 + 4/3·H3)/2 in bits of 100 greedy tokens after each edit prompt (EasyEdit)"
    return (f"n-gram entropy (2/3·H2 + 4/3·H3)/2 in bits of {FLUENCY_TOKENS} greedy tokens after each edit prompt "
            "(the papers report ×100)")


def evaluate(protocol: str, model, tokenizer, requests: Sequence[EditRequest], pre, *,
             progress: bool = False) -> dict[str, Any]:
    """``{"metrics", "cases"}`` of ``requests`` on the current weights; each case has ``fluency``.
    ``progress`` shows a bar over the fluency generations, the slow part of scoring many requests."""
    from kedit.eval import greedy_generate, ngram_entropy

    if protocol == "unstructured":
        from kedit.eval.unstructured import evaluate_unstructured

        result = evaluate_unstructured(model, tokenizer, requests)
        for case in result["cases"]:
            case["fluency"] = ngram_entropy(case["original"]["predictions"][0])
        return result
    if protocol == "knowedit":
        from kedit.eval.knowedit import evaluate_knowedit

        return evaluate_knowedit(model, tokenizer, requests, pre)
    from kedit.eval import evaluate_counterfact, evaluate_zsre

    if protocol == "counterfact":
        result = evaluate_counterfact(model, tokenizer, requests)
    else:
        result = evaluate_zsre(model, tokenizer, requests, pre=pre)
    texts = greedy_generate(model, tokenizer, [r.text for r in requests], max_new_tokens=FLUENCY_TOKENS,
                            progress=progress)
    for case, text in zip(result["cases"], texts):
        case["fluency"] = ngram_entropy(text)
    return result


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def aggregate(protocol: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluator's metric dict recomputed over ``cases`` gathered from several evaluation calls."""
    if protocol == "unstructured":
        from kedit.eval.unstructured import unstructured_metrics

        return unstructured_metrics(cases)
    metrics: dict[str, Any] = {}
    if not cases:
        return metrics
    scalar_keys = [k for k, v in cases[0].items()
                   if k not in ("id", "skipped") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in scalar_keys:
        metrics[key] = _mean(c.get(key) for c in cases)
    if protocol == "counterfact":
        from kedit.eval.counterfact import _harmonic_mean

        metrics["score"] = _harmonic_mean([metrics.get(k) for k in ("efficacy", "generalization", "specificity")])
        metrics["skipped"] = sum(bool(c.get("skipped")) for c in cases)
    elif protocol == "zsre":
        keys = list(dict.fromkeys(k for c in cases for k in c.get("portability_by_key", {})))
        metrics["portability_by_key"] = {k: _mean(c["portability_by_key"].get(k) for c in cases) for k in keys}
    else:  # knowedit: per-group means
        for group in ("portability", "locality"):
            keys = list(dict.fromkeys(k for c in cases for k in (c.get(group) or {})))
            metrics[group] = {k: _mean((c.get(group) or {}).get(k) for c in cases) for k in keys}
    metrics["n_cases"] = len(cases)
    return metrics


def headline(protocol: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``summary.json`` reports: fractions in [0, 1] (magnitudes and counts stay in
    ``metrics.json``); long-answer protocols report ``bleu``/``rouge_l``/``similarity``/``sacrebleu``
    each for ``original`` and ``paraphrase``."""
    if protocol == "unstructured":
        out: dict[str, Any] = {}
        for score in ("bleu", "rouge_l", "similarity", "sacrebleu"):
            out[score] = {part: (metrics.get(part) or {}).get(score) for part in ("original", "paraphrase")}
        sub = (metrics.get("portability") or {}).get("sub_question")
        if sub:
            out["sub_question_rouge_l"] = sub["rouge_l"]
        if metrics.get("by_domain"):
            out["by_domain"] = {d: {s: v["original"].get(s) for s in ("bleu", "rouge_l", "similarity")}
                                for d, v in metrics["by_domain"].items()}
        return out
    if protocol == "knowedit":
        out = {"edit_succ": metrics.get("edit_succ"), "rephrase": metrics.get("rephrase")}
        for group in ("portability", "locality"):
            for key, value in (metrics.get(group) or {}).items():
                out[f"{group}.{key}"] = value
            out[group] = metrics.get(f"{group}_mean", _mean((metrics.get(group) or {}).values()))
        return out
    out = {k: metrics.get(k) for k in _FRACTION_KEYS[protocol]}
    for key, value in (metrics.get("portability_by_key") or {}).items():
        out[f"portability.{key}"] = value
    return out
