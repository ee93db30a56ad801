"""Plots and summaries from a run's journal: the preservation-loss budget (LyapLock Fig. 4) and the
general-capability probes against the number of edits (LyapLock Fig. 3)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["budget_series", "budget_summary", "plot_budget", "probe_series", "plot_probes"]


def budget_series(journal: str | Path) -> list[dict[str, Any]]:
    """Per batch: edits so far and, per layer, D(t), the budget αD₀, the queue Z and the weight a·Z·λ."""
    rows, edits = [], 0
    for line in Path(journal).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        edits += int(record.get("n_requests", 0))
        info = (record.get("info") or {}).get("lyaplock")
        if info:
            rows.append({"edits": edits, **{k: {int(layer): v for layer, v in info[k].items()} for k in info}})
    return rows


def budget_summary(journal: str | Path) -> dict[str, float] | None:
    """``{"max_budget_ratio": max over t, layers of D(t)/(αD₀), "final_budget_ratio": ...}`` or None."""
    rows = budget_series(journal)
    if not rows:
        return None
    ratios = [[row["D"][layer] / row["budget"][layer] for layer in row["D"]] for row in rows]
    return {"max_budget_ratio": max(max(r) for r in ratios), "final_budget_ratio": max(ratios[-1])}


def plot_budget(journal: str | Path, out_png: str | Path) -> Path | None:
    """D(t) per layer with its budget line, and the queue weight a·Z(t), against the number of edits."""
    rows = budget_series(journal)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def probe_series(journal: str | Path) -> list[dict[str, Any]]:
    """The journal's probe measurements: ``[{"edits": n, "probes": {task: {accuracy, f1, ...}}}]``."""
    rows, edits = [], 0
    for line in Path(journal).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        edits += int(record.get("n_requests", 0))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
