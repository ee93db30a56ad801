"""Node-importance plot of critical-path editing (PAC, Zhai et al. 2025, Fig. 4; spec/methods.md §11).

Top row: per layer, the impact scores of the ``top`` highest-scoring key (left) and value (right)
nodes, sorted by rank (heat map, layer × rank) — how concentrated the impact is in each layer.
Bottom row: every node's score per layer (grey), the critical path T⁺ in red and the negative path
T⁻ in blue — where the selected paths sit in each layer's distribution.

Example:
    >>> import tempfile, torch
    >>> from kedit.stages.critical_path import NodeScores, select_paths
    >>> s = NodeScores({0: torch.rand(64), 1: torch.rand(64)}, {0: torch.rand(64), 1: torch.rand(64)})
    >>> p = plot_node_importance(s, tempfile.mkdtemp() + "/nodes.png", selection=select_paths(s, topk=4, bottomk=1))
    >>> p.suffix
    '.png'
"""
from __future__ import annotations

from pathlib import Path

import torch

from kedit.stages.critical_path import NodeScores, PathSelection

__all__ = ["plot_node_importance"]


def plot_node_importance(scores: NodeScores, out_png: str | Path, *, selection: PathSelection | None = None,
                         top: int = 50, title: str | None = None) -> Path:
    """Write the node-importance figure for one assessment to ``out_png`` (PNG) and return its path.

    Args:
        scores: node scores (``train_paths``/``train_consecutive`` keep one per assessment).
        out_png: output file; parent folders are created.
        selection: the T⁺/T⁻ chosen from ``scores``, marked in the bottom row (optional).
        top: how many top-ranked nodes per layer the heat maps show.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    layers = sorted(scores.key)
    fig, axes = plt.subplots(2, 2, figsize=(12, 3 + 0.25 * len(layers) * 2), squeeze=False)
    for col, (kind, per_layer) in enumerate((("key", scores.key), ("value", scores.value))):
        ranked = torch.stack([per_layer[layer].double().sort(descending=True).values[:top] for layer in layers])
        floor = _floor(torch.cat([per_layer[layer].double() for layer in layers]))  # log scales; 0 drawn at floor
        ax = axes[0][col]
        image = ax.imshow(ranked.clamp_min(floor).numpy(), aspect="auto", cmap="viridis", interpolation="nearest",
                          norm=LogNorm(vmin=floor, vmax=max(float(ranked.max()), floor * 10)))
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6)
        ax.set_xlabel(f"rank of {kind} node within its layer")
        ax.set_ylabel("layer")
        ax.set_title(f"{kind} nodes: top-{ranked.shape[1]} impact scores")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax = axes[1][col]
        ax.set_xscale("log")
        for y, layer in enumerate(layers):
            s = per_layer[layer].double().clamp_min(floor)
            ax.scatter(s.numpy(), [y] * s.numel(), s=3, color="0.7", linewidths=0)
            if selection is not None:
                pos = getattr(selection, f"pos_{kind}")[layer]
                neg = getattr(selection, f"neg_{kind}")[layer]
                ax.scatter(s[pos].numpy(), [y] * pos.numel(), s=8, color="tab:red", linewidths=0,
                           label="T⁺ (critical path)" if y == 0 else None)
                ax.scatter(s[neg].numpy(), [y] * neg.numel(), s=12, color="tab:blue", marker="x",
                           label="T⁻ (negative path)" if y == 0 else None)
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6)
        ax.set_xlabel(f"{kind} node impact score")
        ax.set_ylabel("layer")
        if selection is not None:
            ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(title or "Critical transmission paths: node importance per layer")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _floor(scores: torch.Tensor) -> float:
    """The smallest positive score (1e-12 when every score is 0)."""
    positive = scores[scores > 0]
    return float(positive.min()) if positive.numel() else 1e-12
