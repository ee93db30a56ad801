"""Figures of the Nash-bargaining diagnostics (NaKE Figures 2–4; spec/methods.md §10).

Diagnostics record format
-------------------------
One record per optimisation step, as :func:`kedit.stages.bargaining.bargain`, ``fixed_weights`` and
``plain_sum`` return them (the layer fit adds ``step`` and ``layer``)::

    {"step": 0, "layer": 7, "method": "nake" | "unke" | "fixed",
     "cos_pe": cos(g_p, g_e), "cos_gp": cos(g, g_p), "cos_ge": cos(g, g_e),
     "lambda_p": λ_p, "lambda_e": λ_e, "norm_ratio": ‖λ_p g_p‖ / ‖λ_e g_e‖,
     "norm_p": ‖g_p‖, "norm_e": ‖g_e‖, "norm_g": ‖g‖, "lambdas": [λ_p, λ_e], "fallback": null | "opposed" | ...}

``g`` is the combined direction; an undefined cosine or ratio is ``null``. ``method`` names the
combination rule (``"nake"`` = Nash bargaining, ``"unke"`` = plain sum, ``"fixed"`` = the Figure 4 ablation).

Journal (JSONL) format read by :func:`load_diagnostics`
-------------------------------------------------------
One JSON object per line; its diagnostics list sits under ``"diagnostics"`` or under
``record["info"]["diagnostics"]`` (where the bench runner's ``journal.jsonl`` stores a method's metadata)::

    {"batch": 0, "method": "nake", "request_ids": [17], "diagnostics": [{"step": 0, ...}, {"step": 1, ...}]}

Lines without diagnostics are skipped. Every entry is returned with ``batch`` (the record's
``batch``, else the line number) and ``method`` (its own, else the record's) filled in.
:func:`write_diagnostics` appends such a line.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from kedit.errors import DataError
from kedit.runs.plots import _pyplot, _save

__all__ = [
    "load_diagnostics",
    "conflict_rate",
    "update_conflict_rate",
    "write_diagnostics",
    "merge_diagnostics",
    "plot_cosine_histograms",
    "plot_weight_trajectories",
    "plot_fixed_weight_sweep",
    "plot_nash_figures",
]

_COSINES = (("cos_pe", "cos(g_p, g_e)"), ("cos_gp", "cos(g, g_p)"), ("cos_ge", "cos(g, g_e)"))
_ORDER = ("nake", "unke", "fixed")


def load_diagnostics(journal_path: str | Path) -> list[dict[str, Any]]:
    """All per-step diagnostics of a JSONL journal (format in the module docstring), in file order.

    Raises:
        FileNotFoundError: no such file.
        DataError: a line is not a JSON object, or its diagnostics are not a list of objects (line named).
    """
    path = Path(journal_path)
    out: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number}: must be a JSON object (got {type(record).__name__})")
        entries = record.get("diagnostics")
        if entries is None and isinstance(record.get("info"), dict):
            entries = record["info"].get("diagnostics")
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise DataError(f"{path}: line {number}: field 'diagnostics' must be a list of objects")
        batch = record.get("batch", number - 1)
        for entry in entries:
            out.append({"batch": batch, **entry, "method": entry.get("method") or record.get("method")})
    return out


def conflict_rate(diagnostics: Sequence[dict[str, Any]]) -> float | None:
    """Share of steps whose raw gradients conflict, cos(g_p, g_e) < 0: a property of the loss landscape
    a method walks through, not of the direction it applies."""
    cos = [d["cos_pe"] for d in diagnostics if d.get("cos_pe") is not None]
    return sum(c < 0 for c in cos) / len(cos) if cos else None


def update_conflict_rate(diagnostics: Sequence[dict[str, Any]]) -> float | None:
    """Share of steps whose applied direction g works against a player, cos(g, g_p) < 0 or cos(g, g_e) < 0:
    the conflict NaKE's Figure 2 shows the bargaining removes (its Λ > 0 keeps both cosines positive)."""
    rows = [d for d in diagnostics if d.get("cos_gp") is not None and d.get("cos_ge") is not None]
    return sum(d["cos_gp"] < 0 or d["cos_ge"] < 0 for d in rows) / len(rows) if rows else None


def write_diagnostics(journal_path: str | Path, diagnostics: Sequence[dict[str, Any]], **fields: Any) -> Path:
    """Append one journal line ``{**fields, "diagnostics": diagnostics}`` (e.g. ``batch=3, method="nake"``)."""
    path = Path(journal_path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({**fields, "diagnostics": list(diagnostics)}, default=float) + "\n")
    return path


def merge_diagnostics(journals: dict[str, Sequence[str | Path]], out_path: str | Path) -> Path:
    """One journal at ``out_path`` holding every step of ``journals`` (label → journal files), each
    entry's ``method`` set to its label.

    The entries' own ``method`` names the combination rule, which two runs can share (AnyEdit* with
    and without bargaining are both ``anyedit_unke`` runs; every fixed-weight run is ``"fixed"``), so
    the figures would pool them; the run's label keeps them apart.  Missing files are skipped; the
    result is empty when no journal holds diagnostics.
    """
    path = Path(out_path)
    path.write_text("", encoding="utf-8")
    for label, files in journals.items():
        for journal in files:
            if Path(journal).is_file():
                entries = load_diagnostics(journal)
                if entries:
                    write_diagnostics(path, [{**e, "method": label} for e in entries], method=label)
    return path


def _values(entries: Iterable[dict[str, Any]], key: str) -> list[float]:
    out = []
    for e in entries:
        v = e.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def _methods(diagnostics: Sequence[dict[str, Any]], methods: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(str(d.get("method")) for d in diagnostics))
    if methods is None:
        return sorted(present, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))
    return [m for m in methods if m in present]


def plot_cosine_histograms(
    diagnostics: Sequence[dict[str, Any]], out_png: str | Path, *, methods: Sequence[str] | None = None, bins: int = 30
) -> Path:
    """Histograms of cos(g_p, g_e), cos(g, g_p) and cos(g, g_e), one colour per method overlaid
    (NaKE Figure 2: NaKE vs UnKE). Densities, so runs of different lengths compare.

    Raises:
        ValueError: no entry of the requested methods has any cosine.
    """
    chosen = _methods(diagnostics, methods)
    if not any(_values([d for d in diagnostics if d.get("method") == m], k) for m in chosen for k, _ in _COSINES):
        raise ValueError(f"plot_cosine_histograms: no cosines to plot for methods {chosen or list(methods or [])}.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    edges = [-1.0 + 2.0 * i / bins for i in range(bins + 1)]
    for ax, (key, label) in zip(axes, _COSINES):
        for method in chosen:
            values = _values([d for d in diagnostics if d.get("method") == method], key)
            if values:
                ax.hist(values, bins=edges, alpha=0.55, density=True, label=f"{method} (n={len(values)})")
        ax.set_xlabel(label)
        ax.set_xlim(-1, 1)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    return _save(fig, plt, out_png)


def _by_step(entries: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per step: (steps, median, 25th, 75th percentile) of ``key`` over batches/layers."""
    groups: dict[float, list[float]] = {}
    for e in entries:
        v, step = e.get(key), e.get("step")
        if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(step, (int, float)):
            groups.setdefault(float(step), []).append(float(v))
    steps = sorted(groups)

    def q(values: list[float], f: float) -> float:
        values = sorted(values)
        pos = f * (len(values) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    return steps, [q(groups[s], 0.5) for s in steps], [q(groups[s], 0.25) for s in steps], [q(groups[s], 0.75) for s in steps]


def plot_weight_trajectories(
    diagnostics: Sequence[dict[str, Any]], out_png: str | Path, *, methods: Sequence[str] | None = None
) -> Path:
    """λ_p, λ_e and the contribution ratio ‖λ_p g_p‖/‖λ_e g_e‖ against the iteration (NaKE Figure 3).

    Over several edits (batches, layers) each curve is the median per step with the 25–75 % band.
    """
    chosen = _methods(diagnostics, methods)
    if not chosen:
        raise ValueError("plot_weight_trajectories: no diagnostics to plot.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ("lambda_p", "lambda_e", "norm_ratio"),
                              ("λ_p", "λ_e", "‖λ_p g_p‖ / ‖λ_e g_e‖")):
        for method in chosen:
            steps, mid, lo, hi = _by_step([d for d in diagnostics if d.get("method") == method], key)
            if steps:
                line, = ax.plot(steps, mid, marker=".", label=method)
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        if key != "norm_ratio" and all(v > 0 for m in chosen for v in _values(
                [d for d in diagnostics if d.get("method") == m], key)):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(fig, plt, out_png)


def plot_fixed_weight_sweep(
    summaries: Sequence[dict[str, Any]], out_png: str | Path, *, metrics: Sequence[str] | None = None
) -> Path:
    """Metrics against a fixed λ_p (λ_e = 1), NaKE's bargained weights as dashed lines (NaKE Figure 4).

    Args:
        summaries: one dict per run: ``{"lambda_p": 5.0, "lambda_e": 1.0, "method": "fixed", "RSA": 61.2, ...}``;
            entries with ``method == "nake"`` (no ``lambda_p`` needed) are drawn as horizontal references.
        metrics: the metric keys to plot (default: every numeric key of the fixed-weight entries except
            ``lambda_p``/``lambda_e``).

    Raises:
        ValueError: no fixed-weight entries with a numeric ``lambda_p``.
    """
    fixed = sorted((s for s in summaries if s.get("method", "fixed") != "nake" and isinstance(s.get("lambda_p"), (int, float))),
                   key=lambda s: s["lambda_p"])
    if not fixed:
        raise ValueError("plot_fixed_weight_sweep: 'summaries' holds no fixed-weight entry with a numeric 'lambda_p'.")
    references = [s for s in summaries if s.get("method") == "nake"]
    if metrics is None:
        metrics = [k for k, v in fixed[0].items()
                   if k not in ("lambda_p", "lambda_e") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [float(s["lambda_p"]) for s in fixed]
    for metric in metrics:
        line, = ax.plot(xs, [s.get(metric, float("nan")) for s in fixed], marker="o", label=metric)
        for ref in references:
            if isinstance(ref.get(metric), (int, float)):
                ax.axhline(ref[metric], color=line.get_color(), linestyle="--", alpha=0.7)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_xlabel("fixed λ_p (λ_e = 1); dashed: NaKE" if references else "fixed λ_p (λ_e = 1)")
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    return _save(fig, plt, out_png)


def plot_nash_figures(
    journal_path: str | Path, out_dir: str | Path, *, sweep: Sequence[dict[str, Any]] | None = None
) -> dict[str, Path]:
    """Figures 2 and 3 from a journal (and Figure 4 from ``sweep`` summaries when given).

    Returns:
        ``{"cosines": …/nash_cosines.png, "weights": …/nash_weights.png[, "sweep": …/nash_fixed_sweep.png]}``;
        empty when the journal holds no diagnostics.
    """
    diagnostics = load_diagnostics(journal_path)
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    if diagnostics:
        paths["cosines"] = plot_cosine_histograms(diagnostics, out / "nash_cosines.png")
        paths["weights"] = plot_weight_trajectories(diagnostics, out / "nash_weights.png")
    if sweep:
        paths["sweep"] = plot_fixed_weight_sweep(sweep, out / "nash_fixed_sweep.png")
    return paths
