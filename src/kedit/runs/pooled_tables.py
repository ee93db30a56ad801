"""Markdown tables of pooled independent-edit results, in the shape ``docs/results.md`` prints them.

A pooled comparison carries a few hundred numbers; copying them from ``pooled.json`` into the docs by
hand is where a published table goes wrong.  ``bench/pool_slices.py`` writes these tables beside its
JSON so that the docs take them verbatim.
"""
from __future__ import annotations

import math
from typing import Any

from kedit.runs.pooling import CASE_LABELS

__all__ = ["fmt_score", "fmt_diff", "runs_table", "paired_table"]

# (column header, headline metric key) of the KnowEdit scores, in the docs' order.
_SCORES = (("edit succ.", "edit_succ"), ("rephrase", "rephrase"), ("portability", "portability"),
           ("locality", "locality"))
# (column header, headline score) of long-answer runs, each printed as "original / paraphrase".
_LONG_FORM_SCORES = (("BLEU", "bleu"), ("ROUGE-L r", "rouge_l"), ("similarity", "similarity"),
                     ("sacreBLEU", "sacrebleu"))
_MINUS = "\u2212"
_NONE = "\u2013"


def fmt_score(x: float | None, digits: int = 3) -> str:
    """``.959`` for a score, ``1`` for an exact one, ``4.51`` for values of 1 and above, ``–`` for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return _NONE
    if float(x).is_integer():
        return f"{int(x)}" if x >= 0 else f"{_MINUS}{int(-x)}"
    text = f"{abs(x):.2f}" if abs(x) >= 1 else f"{abs(x):.{digits}f}"
    if float(text) == 0:  # rounds to zero: no sign, no digits
        return "0"
    text = text[1:] if text.startswith("0.") else text
    return f"{_MINUS}{text}" if x < 0 else text


def fmt_diff(x: float | None, digits: int = 3) -> str:
    """A signed difference: ``+.048``, ``−.013``, ``0``."""
    text = fmt_score(x, digits)
    return text if text in ("0", _NONE) or text.startswith(_MINUS) else f"+{text}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def runs_table(title: str, runs: dict[str, dict[str, Any]], *, unedited: bool = True) -> str:
    """One row per pooled run (``kedit.runs.pooling.pool_runs`` output, optionally with the
    ``conflict_rate`` / ``update_conflict_rate`` the pooling script adds), after an "unedited" row from
    the first run's pre-edit scores.  Columns that no run has (CounterFact has no portability, a run
    without diagnostics no conflict rates) are left out.  Runs of the long-answer protocol get the
    long-answer table instead: BLEU, ROUGE-L recall, similarity and sacreBLEU, each as original /
    paraphrased question."""
    if not runs:
        raise ValueError("runs_table: no runs to tabulate")
    first = next(iter(runs.values()))
    for name, run in runs.items():
        if run["n"] != first["n"]:
            raise ValueError(f"runs_table: {name} pools {run['n']} requests, {next(iter(runs))} {first['n']}; "
                             "compare runs over the same records")
    if first.get("protocol") == "unstructured":
        return _long_form_table(title, runs, unedited=unedited)
    scores = [(h, k) for h, k in _SCORES if any((r.get("metrics") or {}).get(k) is not None for r in runs.values())]
    extras = [("update conflicts", "update_conflict_rate"), ("raw conflicts", "conflict_rate")]
    extras = [(h, k) for h, k in extras if any(r.get(k) is not None for r in runs.values())]
    header = [f"{title}, {first['n']} records"] + [h for h, _ in scores] + ["fluency (bits)"] + [h for h, _ in extras] + ["s/edit"]
    lines = [_row(header), _row(["---"] * len(header))]
    if unedited and first.get("pre_metrics"):
        pre = first["pre_metrics"]
        lines.append(_row(["unedited"] + [fmt_score(pre.get(k)) for _, k in scores]
                          + [fmt_score((first.get("fluency") or {}).get("pre"))] + [_NONE] * (len(extras) + 1)))
    for name, run in runs.items():
        lines.append(_row([name] + [fmt_score((run.get("metrics") or {}).get(k)) for _, k in scores]
                          + [fmt_score((run.get("fluency") or {}).get("post"))]
                          + [fmt_score(run.get(k)) for _, k in extras] + [_seconds(run)]))
    return "\n".join(lines) + "\n"


def _seconds(run: dict[str, Any]) -> str:
    seconds = run.get("seconds_per_edit")
    return _NONE if seconds is None else f"{seconds:.1f}"


def _both(metrics: dict[str, Any] | None, score: str) -> str:
    """``orig / para`` of a long-answer headline score (ROUGE-L: its recall)."""
    parts = ((metrics or {}).get(score) or {})
    values = [parts.get(q) for q in ("original", "paraphrase")]
    values = [v.get("recall") if isinstance(v, dict) else v for v in values]
    return " / ".join(fmt_score(v) for v in values)


def _long_form_table(title: str, runs: dict[str, dict[str, Any]], *, unedited: bool) -> str:
    """Long answers: each score for the original / paraphrased question, sub-question ROUGE-L recall
    where the benchmark has sub-questions, seconds per edit."""
    first = next(iter(runs.values()))
    sub = any((r.get("metrics") or {}).get("sub_question_rouge_l") for r in runs.values())
    # a column no run has is left out (score archives carry no texts, so no corpus sacreBLEU)
    scores = [(h, k) for h, k in _LONG_FORM_SCORES
              if any(v is not None for r in runs.values() for v in ((r.get("metrics") or {}).get(k) or {}).values())]
    header = ([f"{title}, {first['n']} records"] + [f"{h} orig. / para." for h, _ in scores]
              + (["sub-question ROUGE-L r"] if sub else []) + ["s/edit"])

    def cells(metrics):
        out = [_both(metrics, k) for _, k in scores]
        if sub:
            out.append(fmt_score(((metrics or {}).get("sub_question_rouge_l") or {}).get("recall")))
        return out

    lines = [_row(header), _row(["---"] * len(header))]
    if unedited and first.get("pre_metrics"):
        lines.append(_row(["unedited"] + cells(first["pre_metrics"]) + [_NONE]))
    lines += [_row([name] + cells(run.get("metrics")) + [_seconds(run)]) for name, run in runs.items()]
    return "\n".join(lines) + "\n" + _by_domain_table(title, runs, unedited=unedited)


def _by_domain_table(title: str, runs: dict[str, dict[str, Any]], *, unedited: bool) -> str:
    """EditEverything: character BLEU of the original question per domain (empty without domains)."""
    domains = list(dict.fromkeys(d for r in runs.values() for d in ((r.get("metrics") or {}).get("by_domain") or {})))
    if not domains:
        return ""
    first = next(iter(runs.values()))
    rows = ([("unedited", first.get("pre_metrics"))] if unedited and first.get("pre_metrics") else []) + \
        [(name, run.get("metrics")) for name, run in runs.items()]
    header = [f"{title}: BLEU (orig.) by domain"] + domains
    lines = [_row(header), _row(["---"] * len(header))]
    for name, metrics in rows:
        by_domain = (metrics or {}).get("by_domain") or {}
        lines.append(_row([name] + [fmt_score((by_domain.get(d) or {}).get("bleu")) for d in domains]))
    return "\n" + "\n".join(lines) + "\n"


def paired_table(label: str, rows: list[dict[str, Any]]) -> str:
    """The request-by-request comparison (``kedit.runs.pooling.paired_comparison`` rows): mean paired
    difference with its 95 % interval, and requests higher / lower / equal.  Metrics no request has
    are left out."""
    lines = [_row([label, "difference [95 % interval]", "higher / lower / equal", "requests"]),
             _row(["---"] * 4)]
    for r in rows:
        if not r["n"]:
            continue
        low, high = r["ci95"]
        lines.append(_row([CASE_LABELS.get(r["metric"], r["metric"]),
                           f"{fmt_diff(r['mean_diff'])} [{fmt_score(low)}, {fmt_score(high)}]",
                           f"{r['b_higher']} / {r['b_lower']} / {r['equal']}", str(r["n"])]))
    return "\n".join(lines) + "\n"
