"""Which edits a sequential run still holds at its end, by when they were made.

A sequential run scores every request once, on the final model, so a single efficacy number mixes
two failures: edits that never took, and edits that took but were overwritten by later ones.  Laid
out by the request's position in the stream, the second shows as a curve that rises towards the
most recent edits (the last batch has had nothing written over it); the first as a curve that is
low everywhere.  Positions come from the journal's ``request_ids`` (the order the edits were
applied); the scored cases are in that order too, so each is matched to the next stream position
with its id — right for runs scored on a stride (``score_every``) and for streams that repeat an id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from kedit.runs.plots import _pyplot, _records, _save

__all__ = ["stream_order", "place_cases", "retention_series", "plot_retention"]


def stream_order(journal: str | Path) -> list[Any]:
    """The request ids in the order they were applied (position p is index p − 1)."""
    return [rid for _, record in _records(journal) for rid in record.get("request_ids") or ()]


def place_cases(order: list[Any], cases: list[dict]) -> list[int | None]:
    """1-based stream position of each case (cases in stream order): the next position after the
    previous case's that carries its id; None when no later position does."""
    placed, at = [], 0
    for case in cases:
        try:
            at = order.index(case.get("id"), at) + 1
        except ValueError:
            placed.append(None)
            continue
        placed.append(at)
    return placed


def retention_series(run_dir: str | Path, metric: str = "efficacy", bins: int = 10) -> list[dict[str, Any]]:
    """Post-edit ``metric`` of a sequential run's cases in ``bins`` consecutive groups of stream positions.

    Args:
        run_dir: a finished sequential run (``journal.jsonl`` and ``metrics.json``).
        metric: a per-case key of ``metrics.json`` (``efficacy``, ``generalization``…).
        bins: number of groups; cases split as evenly as they go, earliest first.

    Returns:
        Per group: ``first`` and ``last`` stream position, ``n`` cases, and the mean ``post`` and
        ``pre`` value of ``metric`` (``None`` where no case of the group has it).  Skipped cases
        and cases the journal never applied (at or after the previous case's position) are left out.

    Raises:
        ValueError: ``bins`` below 1, or a run directory without both files.
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"retention_series: bins must be an int >= 1. Got {bins!r} instead.")
    run_dir = Path(run_dir)
    journal, metrics = run_dir / "journal.jsonl", run_dir / "metrics.json"
    missing = [p.name for p in (journal, metrics) if not p.is_file()]
    if missing:
        raise ValueError(f"retention_series: {run_dir} has no {' or '.join(missing)} (not a finished run directory).")
    order = stream_order(journal)
    cases = json.loads(metrics.read_text(encoding="utf-8"))["cases"]
    post, pre = cases["post"], cases.get("pre") or []
    pre_at = dict(zip(place_cases(order, pre), pre))
    placed = [(p, c, pre_at.get(p, {})) for p, c in zip(place_cases(order, post), post)
              if p is not None and not c.get("skipped")]
    if not placed:
        return []
    bins = min(bins, len(placed))
    size, extra = divmod(len(placed), bins)
    rows, start = [], 0
    for b in range(bins):
        group = placed[start:start + size + (b < extra)]
        start += len(group)
        rows.append({"first": group[0][0], "last": group[-1][0], "n": len(group),
                     "post": _mean([post.get(metric) for _, post, _ in group]),
                     "pre": _mean([pre.get(metric) for _, _, pre in group])})
    return rows


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plot_retention(runs: Mapping[str, str | Path], out_png: str | Path, *, metric: str = "efficacy",
                   bins: int = 10) -> Path | None:
    """Post-edit ``metric`` against stream position, one line per run; the unedited model's value of
    the same cases (from the first run that has it) dotted.

    Args:
        runs: ``{label: run directory}`` of finished sequential runs over the same stream.
        out_png: the image to write.

    Returns:
        ``out_png``, or None when no run has a scored case.
    """
    series = {label: retention_series(path, metric, bins) for label, path in runs.items()}
    series = {label: rows for label, rows in series.items() if any(r["post"] is not None for r in rows)}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    pre_drawn = False
    for label, rows in series.items():
        x = [(r["first"] + r["last"]) / 2 for r in rows]
        ax.plot(x, [r["post"] for r in rows], marker=".", label=label)
        if not pre_drawn and all(r["pre"] is not None for r in rows):
            ax.plot(x, [r["pre"] for r in rows], linestyle=":", color="grey", label="unedited")
            pre_drawn = True
    ax.set_xlabel("position of the edit in the stream (1 = first applied)")
    ax.set_ylabel(f"{metric} on the final model")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return _save(fig, plt, out_png)
