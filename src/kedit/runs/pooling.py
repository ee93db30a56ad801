"""One method's independent-edit runs over disjoint slices of a dataset, pooled into one table.

Independent edits start from the unedited model every time, so a long benchmark may be run as
slices (``--start``) in separate processes, or on separate days, and still give the table a single
run would have given. Pooling recomputes the evaluator's metrics over the union of the slices'
per-request cases (``metrics.json``), rather than averaging the slices' headline numbers: a mean of
means weighted by n is exact only when every request carries every key, and KnowEdit records may
lack a portability or locality block.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from kedit.errors import DataError
from kedit.runs import protocols
from kedit.runs.protocols import _mean

__all__ = ["pool_runs", "paired_scores", "paired_scores_by_metric", "paired_statistics", "paired_comparison",
           "case_metrics", "case_score", "mean_interval", "CASE_METRICS", "LONG_FORM_METRICS", "CASE_LABELS"]

# Per-request scalars of the KnowEdit cases that paired comparisons read (None where a request lacks one).
CASE_METRICS = ("edit_succ", "rephrase", "portability_mean", "locality_mean", "fluency")
# ... and of long-answer cases: "<score>.<question>", the score read from the case's block for that
# question (ROUGE-L: its recall, the reference's column; paraphrase: the mean over the rephrases).
LONG_FORM_METRICS = ("bleu.original", "bleu.paraphrase", "rouge_l.original", "rouge_l.paraphrase",
                     "similarity.original", "similarity.paraphrase")
# How tables and figures name them.
CASE_LABELS = {"edit_succ": "edit succ.", "rephrase": "rephrase", "portability_mean": "portability",
               "locality_mean": "locality", "fluency": "fluency (bits)",
               "bleu.original": "BLEU (orig.)", "bleu.paraphrase": "BLEU (para.)",
               "rouge_l.original": "ROUGE-L r (orig.)", "rouge_l.paraphrase": "ROUGE-L r (para.)",
               "similarity.original": "similarity (orig.)", "similarity.paraphrase": "similarity (para.)"}


def case_metrics(protocol: str | None) -> tuple[str, ...]:
    """The per-request metrics a paired comparison can read from cases of ``protocol``."""
    return LONG_FORM_METRICS if protocol == "unstructured" else CASE_METRICS


def case_score(case: dict[str, Any], metric: str) -> float | None:
    """One request's ``metric`` (a name of :func:`case_metrics`), None where the case lacks it (a
    record without rephrases has no paraphrase block)."""
    score, dotted, question = metric.partition(".")
    if not dotted:
        return case.get(metric)
    value = (case.get(question) or {}).get(score)
    return value.get("recall") if isinstance(value, dict) else value


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; pass the run directories of finished runs") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _slices(run_dirs: list[str | os.PathLike]) -> dict[str, Any]:
    """The slices' cases and timing, read once and checked: one method and protocol, independent
    mode, disjoint request ids."""
    if not run_dirs:
        raise DataError("pool_runs: no run directories given")
    post: list[dict[str, Any]] = []
    pre: list[dict[str, Any]] = []
    seen: dict[Any, Path] = {}
    protocol = method = None
    edit_seconds = 0.0
    for run_dir in map(Path, run_dirs):
        summary = _read(run_dir / "summary.json")
        metrics = _read(run_dir / "metrics.json")
        if summary.get("mode") != "independent":
            raise DataError(f"{run_dir}: mode {summary.get('mode')!r}; only independent edits pool "
                            "(a sequential run's cases depend on every edit before them)")
        if protocol is None:
            protocol, method = metrics.get("protocol"), summary.get("method")
        elif (metrics.get("protocol"), summary.get("method")) != (protocol, method):
            raise DataError(f"{run_dir}: {summary.get('method')} under protocol {metrics.get('protocol')!r} "
                            f"cannot pool with {method} under {protocol!r}")
        cases = metrics.get("cases") or {}
        for case in cases.get("post", []):
            if case["id"] in seen:
                raise DataError(f"{run_dir}: request {case['id']!r} is also in {seen[case['id']]}; "
                                "slices must be disjoint")
            seen[case["id"]] = run_dir
        post += cases.get("post", [])
        pre += cases.get("pre", [])
        edit_seconds += summary["timing"]["edit_seconds_total"]
    return {"method": method, "protocol": protocol, "post": post, "pre": pre, "edit_seconds": edit_seconds}


def pool_runs(run_dirs: list[str | os.PathLike]) -> dict[str, Any]:
    """Headline metrics (post and pre-edit), mean fluency and seconds per edit over every case of
    ``run_dirs``, each a finished independent run of the same method and protocol.

    Raises ``DataError`` when the directories mix methods, protocols or modes, or when a request id
    appears in two of them (overlapping slices would count it twice)."""
    pooled = _slices(run_dirs)
    protocol, post, pre = pooled["protocol"], pooled["post"], pooled["pre"]
    n = len(post)
    return {
        "method": pooled["method"], "protocol": protocol, "n": n, "slices": [str(d) for d in run_dirs],
        "metrics": protocols.headline(protocol, protocols.aggregate(protocol, post)),
        "pre_metrics": protocols.headline(protocol, protocols.aggregate(protocol, pre)) if pre else None,
        "fluency": {"pre": _mean(c.get("fluency") for c in pre), "post": _mean(c.get("fluency") for c in post)},
        "seconds_per_edit": pooled["edit_seconds"] / n if n else None,
    }


def paired_scores(run_dirs_a: list[str | os.PathLike], run_dirs_b: list[str | os.PathLike],
                  metric: str) -> dict[str, Any]:
    """``{"pairs": [(request id, A's score, B's score), ...], "n_missing": k}`` over the requests both
    sides score (in A's order); ``n_missing`` counts those where either side has no score.

    Raises ``DataError`` when the two sides do not hold the same request ids or were scored under
    different protocols, and ``ValueError`` for a metric outside the protocol's :func:`case_metrics`."""
    return paired_scores_by_metric(run_dirs_a, run_dirs_b, [metric])[metric]


def paired_scores_by_metric(run_dirs_a: list[str | os.PathLike], run_dirs_b: list[str | os.PathLike],
                            metrics: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`paired_scores` of each of ``metrics`` (default: all of the protocol's), both sides read once."""
    side_a, side_b = _slices(run_dirs_a), _slices(run_dirs_b)
    if side_a["protocol"] != side_b["protocol"]:
        raise DataError(f"paired_comparison: {side_a['method']} was scored under {side_a['protocol']!r}, "
                        f"{side_b['method']} under {side_b['protocol']!r}; compare runs of one benchmark")
    allowed = case_metrics(side_a["protocol"])
    unknown = [m for m in metrics or () if m not in allowed]
    if unknown:
        raise ValueError(f"paired_comparison: metric must be one of {list(allowed)} for "
                         f"{side_a['protocol']!r} runs, got {unknown[0]!r}")
    a, b = ({case["id"]: case for case in side["post"]} for side in (side_a, side_b))
    if set(a) != set(b):
        only = sorted(map(str, set(a) ^ set(b)))[:5]
        raise DataError(f"paired_comparison: the two sides edit different requests (e.g. {only}); "
                        "pass the same slices of both methods")
    out = {}
    for metric in metrics or allowed:
        scored = ((i, case_score(a[i], metric), case_score(b[i], metric)) for i in a)
        pairs = [(i, x, y) for i, x, y in scored if x is not None and y is not None]
        out[metric] = {"pairs": pairs, "n_missing": len(a) - len(pairs)}
    return out


def paired_comparison(run_dirs_a: list[str | os.PathLike], run_dirs_b: list[str | os.PathLike], metric: str, *,
                      resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Method B against method A on the same requests: the mean paired difference B − A of a
    per-request score, its 95 % bootstrap interval over requests, and how many requests B scores
    higher, lower or the same.

    Both methods edit the same requests, so the per-request difference removes the spread between
    requests that two independent means would carry; the interval resamples requests (scipy's
    percentile bootstrap of the mean difference).  Requests where either score is None (no
    portability block, say) are left out and counted in ``n_missing``.

    Raises what :func:`paired_scores` raises.
    """
    return paired_statistics(paired_scores(run_dirs_a, run_dirs_b, metric), metric, resamples=resamples, seed=seed)


def mean_interval(values: Sequence[float], *, resamples: int = 10_000, seed: int = 0) -> list[float]:
    """95 % percentile-bootstrap interval of the mean of ``values`` over resampled requests (scipy);
    ``[v, v]`` when every value is ``v`` (no spread to resample)."""
    if not values:
        raise ValueError("mean_interval: no values")
    if len(set(values)) == 1:
        return [values[0], values[0]]
    from scipy.stats import bootstrap

    res = bootstrap((list(values),), lambda d, axis=-1: d.mean(axis=axis), n_resamples=resamples,
                    confidence_level=0.95, method="percentile", random_state=seed)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def paired_statistics(scores: dict[str, Any], metric: str, *, resamples: int = 10_000,
                      seed: int = 0) -> dict[str, Any]:
    """:func:`paired_comparison` from :func:`paired_scores` already read (one read serves the
    statistics and the request-by-request figure)."""
    pairs = [(x, y) for _, x, y in scores["pairs"]]
    out: dict[str, Any] = {"metric": metric, "n": len(pairs), "n_missing": scores["n_missing"]}
    if not pairs:
        return {**out, "mean_a": None, "mean_b": None, "mean_diff": None, "ci95": None,
                "b_higher": 0, "b_lower": 0, "equal": 0}
    diffs = [y - x for x, y in pairs]
    ci = mean_interval(diffs, resamples=resamples, seed=seed)
    tol = 1e-12
    return {**out, "mean_a": sum(x for x, _ in pairs) / len(pairs), "mean_b": sum(y for _, y in pairs) / len(pairs),
            "mean_diff": math.fsum(diffs) / len(diffs), "ci95": ci,
            "b_higher": sum(d > tol for d in diffs), "b_lower": sum(d < -tol for d in diffs),
            "equal": sum(abs(d) <= tol for d in diffs)}
