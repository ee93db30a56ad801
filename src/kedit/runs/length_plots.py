"""Score against answer length (μKE Figure 5): does an editor hold up as its targets grow?

μKE's claim is not only a higher mean but a flatter curve: window-by-window editing (AnyEdit)
loses the dependency between windows, so its efficacy should fall with the number of windows, and
the Matryoshka objective should keep it up.  Two designs feed the same figure:

* the lengths the benchmark's answers happen to have, in bins (``bin_width``) — cheap, but length
  is confounded with content (long answers are other topics);
* a sweep that cuts the *same* answers at several lengths (``bin_width=None``: x is the cut) —
  what separates length from content (``bench/length_sweep.py``).

Each point is the mean over the requests at that length with a 95 % bootstrap interval, so two
curves that differ by less than their intervals are not told apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from kedit.runs.plots import _pyplot, _save
from kedit.runs.pooling import mean_interval

__all__ = ["length_series", "plot_score_by_length", "UNEDITED"]

UNEDITED = "unedited"  # the series drawn as the reference line (grey, dashed)


def length_series(points: Sequence[tuple[int, float]], *, bin_width: int | None = None,
                  resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """``[{"length", "n", "mean", "ci95"}]`` in increasing length, from (answer tokens, score) points.

    ``bin_width``: group lengths into ``[k·w, (k+1)·w)`` and report the bin's start; None: one point
    per distinct length (a sweep's cuts)."""
    if bin_width is not None and bin_width < 1:
        raise ValueError(f"length_series: bin_width must be None or >= 1 (got {bin_width})")
    groups: dict[int, list[float]] = {}
    for length, score in points:
        key = length if bin_width is None else length // bin_width * bin_width
        groups.setdefault(int(key), []).append(float(score))
    return [{"length": key, "n": len(values), "mean": sum(values) / len(values),
             "ci95": mean_interval(values, resamples=resamples, seed=seed)}
            for key, values in sorted(groups.items())]


def _placement(xs: list[int], log2_x: bool):
    """Where the k-th method's point at length x goes (nudged by k sixths of a step: by a factor on
    a log axis), and the axis limits half a step beyond the ends."""
    if log2_x:  # doubling cuts (32, 64, 128, …) equally spaced

        def place(x, k):
            return x * 2 ** (0.06 * k)

        return place, (xs[0] / 2 ** 0.5, xs[-1] * 2 ** 0.5)
    step = min((b - a for a, b in zip(xs, xs[1:])), default=max(abs(xs[0]), 1) / 2)

    def place(x, k):
        return x + 0.06 * k * step

    return place, (xs[0] - step / 2, xs[-1] + step / 2)


def plot_score_by_length(series: dict[str, list[dict[str, Any]]], out_png: str | Path, *,
                         ylabel: str = "character BLEU, original question",
                         xlabel: str = "answer length (tokens)", title: str = "Edit efficacy against answer length",
                         log2_x: bool = False) -> Path | None:
    """One line per method through its :func:`length_series` means, the 95 % intervals as bars
    (methods nudged sideways so bars at one length do not hide each other; a series named
    :data:`UNEDITED` dashed grey; ``log2_x`` spaces doubling lengths equally).  None when no
    method has a point."""
    lines = [(name, rows) for name, rows in series.items() if rows]
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = sorted({row["length"] for _, rows in lines for row in rows})
    if log2_x:
        ax.set_xscale("log", base=2)
    place, limits = _placement(xs, log2_x)
    for k, (name, rows) in enumerate(lines):
        x = [place(row["length"], k - (len(lines) - 1) / 2) for row in rows]
        y = [row["mean"] for row in rows]
        err = [[row["mean"] - row["ci95"][0] for row in rows], [row["ci95"][1] - row["mean"] for row in rows]]
        style = {"color": "grey", "ls": "--"} if name == UNEDITED else {}
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.2, label=name, **style)
    ax.set_xlim(*limits)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, plt, out_png)
