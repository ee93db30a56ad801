"""Plots and summaries of the preservation-loss budget recorded in a run's journal (LyapLock Fig. 4)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["budget_series", "budget_summary", "plot_budget"]


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
