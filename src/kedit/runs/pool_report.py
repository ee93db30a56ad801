"""Pool slices of independent-edit benchmarks into one report: ``pooled.json``, ``tables.md``, a
request-by-request scatter for each compared pair and, where the runs journal Nash-bargaining
diagnostics, the conflict rates and NaKE's Figures 2–3 over every slice's steps.

A slice is either one run directory (``kedit bench --start S --out DIR``) or a benchmark's ``--out``
folder holding one run directory per method (``bench/nake.py``, ``bench/long_form.py``); ``runs`` names
the methods to take from the latter.  ``kedit pool`` and ``bench/pool_slices.py`` both call
:func:`pool_report`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from kedit.errors import DataError
from kedit.runs.nash_plots import (conflict_rate, load_diagnostics, merge_diagnostics, plot_nash_figures,
                                   update_conflict_rate)
from kedit.runs.paired_plots import plot_paired_scores
from kedit.runs.pooled_tables import paired_table, runs_table
from kedit.runs.pooling import paired_scores_by_metric, paired_statistics, pool_runs

__all__ = ["pool_report"]


def _run_dirs(slices: Sequence[Path], runs: Sequence[str] | None) -> dict[str | None, list[Path]]:
    if runs:
        return {name: [s / name for s in slices] for name in runs}
    return {None: list(slices)}


def pool_report(slices: Sequence[str | os.PathLike], out: str | os.PathLike, *, runs: Sequence[str] | None = None,
                pairs: Sequence[tuple[str, str]] = (), title: str = "pooled") -> dict[str, Any]:
    """Pool each run over ``slices`` and write the report to ``out``.

    Args:
        slices: run directories of one method, or (with ``runs``) benchmark folders of run directories.
        runs: run directory names to take from each slice folder (e.g. ``["unke", "nake"]``).
        pairs: ``(A, B)`` run names to compare request by request (B − A), both in ``runs``.
        title: first header cell of the markdown tables (e.g. ``"zsRE"``).

    Returns:
        ``{"folders", "runs": {name: pooled table}, "paired": {"B vs A": rows}, "files": {...}}``.

    Raises ``DataError`` for a pair naming a run not pooled, and everything ``pool_runs`` and
    ``paired_scores`` raise (mixed methods, overlapping slices, different requests).
    """
    slices = [Path(s) for s in slices]
    if not slices:
        raise DataError("pool: no slices given")
    dirs = _run_dirs(slices, runs)
    for a, b in pairs:
        missing = [name for name in (a, b) if not runs or name not in runs]
        if missing:
            raise DataError(f"pool: pair ({a}, {b}) names {missing}, which --runs does not pool")
    table: dict[str, Any] = {}
    journals: dict[str, list[Path]] = {}
    for name, run_dirs in dirs.items():
        row = pool_runs(run_dirs)
        name = name or row["method"]
        diagnostics = [d for run_dir in run_dirs if (run_dir / "journal.jsonl").exists()
                       for d in load_diagnostics(run_dir / "journal.jsonl")]
        if diagnostics:
            row["conflict_rate"] = conflict_rate(diagnostics)
            row["update_conflict_rate"] = update_conflict_rate(diagnostics)
            journals[name] = [run_dir / "journal.jsonl" for run_dir in run_dirs]
        table[name] = row
    scores = {(a, b): paired_scores_by_metric(dirs[a], dirs[b]) for a, b in pairs}
    paired = {f"{b} vs {a}": [paired_statistics(s, m) for m, s in by_metric.items()]
              for (a, b), by_metric in scores.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"pooled": out / "pooled.json", "tables": out / "tables.md"}
    folders = [str(s) for s in slices]
    files["pooled"].write_text(json.dumps({"folders": folders, "runs": table, "paired": paired}, indent=1))
    files["tables"].write_text("\n".join([runs_table(title, table)]
                                         + [paired_table(f"{title}: {label}", rows) for label, rows in paired.items()]))
    for (a, b), by_metric in scores.items():
        points = {m: [(x, y) for _, x, y in s["pairs"]] for m, s in by_metric.items()}
        figure = plot_paired_scores(points, out / f"paired_{a}_{b}.png", names=(a, b))
        if figure is not None:
            files[f"paired_{a}_{b}"] = figure
    if journals:
        files.update(plot_nash_figures(merge_diagnostics(journals, out / "diagnostics.jsonl"), out))
    return {"folders": folders, "runs": table, "paired": paired, "files": files}
