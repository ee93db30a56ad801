"""Plots and summaries from a run's journal: the preservation-loss budget (LyapLock Fig. 4) and the
general-capability probes against the number of edits (LyapLock Fig. 3), for one run or compared
across methods (one journal per method)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["budget_series", "budget_summary", "plot_budget", "probe_series", "plot_probes", "preservation_series",
           "plot_preservation_comparison", "plot_probe_comparison", "memory_series"]


def _records(journal: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(edits so far, record) for every line of ``journal``."""
    edits = 0
    for line in Path(journal).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        edits += int(record.get("n_requests", 0))
        yield edits, record


def _by_layer(values: Mapping[str, Any]) -> dict[int, Any]:
    return {int(layer): v for layer, v in values.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def memory_series(journal: str | Path) -> list[dict[str, Any]]:
    """Per batch: edits so far and the process memory after it (``rss`` and ``peak``, MiB)."""
    return [{"edits": edits, **record["memory_mb"]} for edits, record in _records(journal) if record.get("memory_mb")]


def budget_series(journal: str | Path) -> list[dict[str, Any]]:
    """Per batch: edits so far and, per layer, D(t), the budget αD₀, the queue Z and the weight a·Z·λ."""
    rows = []
    for edits, record in _records(journal):
        info = (record.get("info") or {}).get("lyaplock")
        if info:
            rows.append({"edits": edits, **{k: _by_layer(info[k]) for k in info}})
    return rows


def budget_summary(journal: str | Path) -> dict[str, float] | None:
    """``{"max_budget_ratio": max over t, layers of D(t)/(αD₀), "final_budget_ratio": ...}`` or None."""
    rows = budget_series(journal)
    if not rows:
        return None
    ratios = [[row["D"][layer] / row["budget"][layer] for layer in row["D"]] for row in rows]
    summary = {"max_budget_ratio": max(max(r) for r in ratios), "final_budget_ratio": max(ratios[-1])}
    *_, (_, last) = _records(journal)
    after = (last.get("health") or {}).get("preservation_loss") if last.get("finalize") else None
    if after:  # an end-of-stream correction (PRUNE) changed the weights after the last queue step
        budget = rows[-1]["budget"]
        summary["final_budget_ratio"] = max(D / budget[layer] for layer, D in _by_layer(after).items())
        summary["before_finalize_budget_ratio"] = max(ratios[-1])
    return summary


def plot_budget(journal: str | Path, out_png: str | Path) -> Path | None:
    """D(t) per layer with its budget line, and the queue weight a·Z(t), against the number of edits."""
    rows = budget_series(journal)
    if not rows:
        return None
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = [r["edits"] for r in rows]
    for layer in sorted(rows[0]["D"]):
        line, = ax.plot(x, [r["D"][layer] for r in rows], marker=".", label=f"layer {layer}")
        ax.plot(x, [r["budget"][layer] for r in rows], linestyle="--", color=line.get_color(), alpha=0.6)
        base = rows[0]["weight"][layer]
        bx.plot(x, [r["weight"][layer] / base for r in rows], marker=".", label=f"layer {layer}")
    ax.set_xlabel("edits")
    ax.set_ylabel("preservation loss D(t) (dashed: αD₀)")
    ax.set_yscale("log")
    bx.set_xlabel("edits")
    bx.set_ylabel("preservation weight a·Z(t) (relative)")
    ax.legend(fontsize=7)
    return _save(fig, plt, out_png)


def probe_series(journal: str | Path) -> list[dict[str, Any]]:
    """The journal's probe measurements: ``[{"edits": n, "probes": {task: {accuracy, f1, ...}}}]``."""
    rows = []
    for edits, record in _records(journal):
        health = record.get("health") or {}
        if health.get("probes"):
            rows.append({"edits": int(health.get("edits", edits)), "probes": health["probes"]})
    return rows


def plot_probes(journal: str | Path, out_png: str | Path, *, pre: dict[str, Any] | None = None) -> Path | None:
    """Accuracy and F1 of each probe task against the number of edits (LyapLock Fig. 3); the F1
    panel also shows ``f1_new`` (candidate-probability predictions) dashed.

    Args:
        journal: the run's ``journal.jsonl`` (probe results under ``record["health"]["probes"]``).
        out_png: the image to write.
        pre: pre-edit probe results ``{task: {accuracy, f1, ...}}``, drawn at 0 edits.

    Returns:
        ``out_png``, or None when the journal holds no probe measurement.
    """
    rows = probe_series(journal)
    if pre:
        rows = [{"edits": 0, "probes": pre}, *rows]
    if not rows or not any(r["edits"] > 0 for r in rows):
        return None
    plt = _pyplot()
    tasks = list(dict.fromkeys(t for r in rows for t in r["probes"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    def series(task: str, key: str) -> tuple[list[int], list[float]]:
        points = [(r["edits"], r["probes"][task].get(key)) for r in rows if task in r["probes"]]
        points = [(x, y) for x, y in points if y is not None]
        return [x for x, _ in points], [y for _, y in points]

    for ax, key, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "f1", "weighted F1 (dashed: f1_new)")):
        for task in tasks:
            line, = ax.plot(*series(task, key), marker=".", label=task)
            if key == "f1":
                ax.plot(*series(task, "f1_new"), linestyle="--", color=line.get_color(), alpha=0.6)
        ax.set_xlabel("edits")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    return _save(fig, plt, out_png)


def preservation_series(journal: str | Path) -> list[dict[str, Any]]:
    """Per batch: ``{"edits", "D": {layer: D(t)}, "budget": {layer: αD₀} | None}``.

    D(t) is the health monitor's (``record["health"]["preservation_loss"]``, any method with key
    statistics), else the LyapLock queue's own (``record["info"]["lyaplock"]["D"]``); the budget is
    present for the LyapLock presets only.  Batches with neither are left out.
    """
    rows = []
    for edits, record in _records(journal):
        queue = (record.get("info") or {}).get("lyaplock") or {}
        D = (record.get("health") or {}).get("preservation_loss") or queue.get("D")
        if D:
            rows.append({"edits": edits, "D": _by_layer(D),
                         "budget": _by_layer(queue["budget"]) if "budget" in queue else None})
    return rows


def plot_preservation_comparison(journals: Mapping[str, str | Path], out_png: str | Path) -> Path | None:
    """Max over edited layers of D(t) against the number of edits, one line per method, log scale
    (the comparison of LyapLock 2025 Fig. 4).  A method with a LyapLock queue also gets its budget
    as a dashed line of the same colour: max over layers of αD₀ (constant after the first batch).

    Args:
        journals: ``{method label: journal.jsonl}`` of sequential runs.
        out_png: the image to write.

    Returns:
        ``out_png``, or None when no journal holds a preservation loss.
    """
    series = {label: preservation_series(path) for label, path in journals.items()}
    series = {label: rows for label, rows in series.items() if rows}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in series.items():
        x = [r["edits"] for r in rows]
        line, = ax.plot(x, [max(r["D"].values()) for r in rows], marker=".", markersize=3, label=label)
        budgets = [max(r["budget"].values()) for r in rows if r["budget"]]
        if budgets:
            ax.axhline(budgets[-1], linestyle="--", color=line.get_color(), alpha=0.7, linewidth=1)
    ax.set_xlabel("edits")
    ax.set_ylabel("max over layers of D(t) (dashed: αD₀)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(fig, plt, out_png)


def plot_probe_comparison(journals: Mapping[str, str | Path], out_png: str | Path, *,
                          pre: Mapping[str, float | None] | None = None) -> Path | None:
    """Mean probe F1 (over tasks) against the number of edits, one line per method (LyapLock Fig. 3
    condensed to one number per probe point).

    Args:
        journals: ``{method label: journal.jsonl}`` with probe results in ``record["health"]``.
        out_png: the image to write.
        pre: ``{method label: pre-edit mean F1}``, drawn at 0 edits.

    Returns:
        ``out_png``, or None when no journal holds a probe measurement.
    """
    from kedit.eval.probes import mean_f1

    curves = {}
    for label, path in journals.items():
        points = [(r["edits"], mean_f1(r["probes"])) for r in probe_series(path)]
        if (pre or {}).get(label) is not None:
            points.insert(0, (0, pre[label]))
        points = [(x, y) for x, y in points if y is not None]
        if any(x > 0 for x, _ in points):
            curves[label] = points
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=label)
    ax.set_xlabel("edits")
    ax.set_ylabel("mean probe F1")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return _save(fig, plt, out_png)
