"""Request-by-request scatter of two methods' scores on the same records.

A mean difference says how much B gains on average; the scatter says where: whether the gain comes
from many requests a little or a few requests a lot, and whether B ever loses.  Scores are coarse
(token accuracies over a few tokens), so many requests fall on the same point; the marker area
counts them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from kedit.runs.plots import _pyplot, _save
from kedit.runs.pooling import CASE_LABELS

__all__ = ["plot_paired_scores"]

_MAX_COLUMNS = 3  # long-answer comparisons have six metrics: two rows of three


def plot_paired_scores(scores: dict[str, Sequence[tuple[float, float]]], out_png: str | Path, *,
                       names: tuple[str, str] = ("A", "B")) -> Path | None:
    """One panel per metric (rows of three): A's score (x) against B's (y) for every request, the
    diagonal where they agree, and the counts of requests above / below it.  Metrics with no pairs are left out; returns
    None when none has any."""
    panels = [(metric, pairs) for metric, pairs in scores.items() if pairs]
    if not panels:
        return None
    plt = _pyplot()
    cols = min(len(panels), _MAX_COLUMNS)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (metric, pairs) in zip(axes.flat, panels):
        counts = Counter((round(x, 4), round(y, 4)) for x, y in pairs)
        xs, ys, ns = zip(*((x, y, n) for (x, y), n in counts.items()))
        ax.scatter(xs, ys, s=[12 * n for n in ns], alpha=0.5, edgecolors="none")
        low, high = min(xs + ys), max(xs + ys)
        pad = 0.05 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", lw=0.8, ls="--")
        above = sum(y > x for x, y in pairs)
        below = sum(y < x for x, y in pairs)
        ax.set_title(f"{CASE_LABELS.get(metric, metric)}\n{names[1]} higher {above}, lower {below}, n {len(pairs)}",
                     fontsize=9)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    return _save(fig, plt, out_png)
