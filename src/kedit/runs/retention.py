"""Which edits a sequential run still holds at its end, by when they were made.

A sequential run scores every request once, on the final model, so a single efficacy number mixes
two failures: edits that never took, and edits that took but were overwritten by later ones.  Laid
out by the request's position in the stream, the second shows as a curve that rises towards the
most recent edits (the last batch has had nothing written over it); the first as a curve that is
low everywhere.  Positions come from the journal's ``request_ids`` (the order the edits were
applied), so runs scored on a stride (``score_every``) place their cases correctly too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from kedit.runs.plots import _pyplot, _records, _save

__all__ = ["stream_positions", "retention_series", "plot_retention"]


def stream_positions(journal: str | Path) -> dict[Any, int]:
    """Request id → 1-based position in the stream (the first time it was applied)."""
    positions: dict[Any, int] = {}
    for _, record in _records(journal):
        for rid in record.get("request_ids") or ():
            positions.setdefault(rid, len(positions) + 1)
    return positions


def retention_series(run_dir: str | Path, metric: str = "efficacy", bins: int = 10) -> list[dict[str, Any]]:
    """Post-edit ``metric`` of a sequential run's cases in ``bins`` consecutive groups of stream positions.

    Args:
        run_dir: a finished sequential run (``journal.jsonl`` and ``metrics.json``).
        metric: a per-case key of ``metrics.json`` (``efficacy``, ``generalization``…).
        bins: number of groups; cases split as evenly as they go, earliest first.

    Returns:
        Per group: ``first`` and ``last`` stream position, ``n`` cases, and the mean ``post`` and
        ``pre`` value of ``metric`` (``None`` where no case of the group has it).  Skipped cases
        and cases whose id the journal never applied are left out.

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
    positions = stream_positions(journal)
    cases = json.loads(metrics.read_text(encoding="utf-8"))["cases"]
    pre_by_id = {c.get("id"): c for c in cases.get("pre") or []}
    placed = sorted((positions[c["id"]], c, pre_by_id.get(c["id"], {})) for c in cases["post"]
                    if not c.get("skipped") and c.get("id") in positions)
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
