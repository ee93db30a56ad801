"""Terminal reports of run summaries (rich tables)."""
from __future__ import annotations

from typing import Any

__all__ = ["print_summary_table", "format_fraction", "flatten_metrics"]


def format_fraction(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal ("-" for None)."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{100 * value:.1f}"
    return str(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts (long-answer protocols) as ``{"bleu.original": v, ...}``.

    Example:
        >>> flatten_metrics({"bleu": {"original": 0.5}, "efficacy": 1.0})
        {'bleu.original': 0.5, 'efficacy': 1.0}
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def print_summary_table(summary: dict[str, Any], console=None) -> None:
    """Print the metrics of a run summary (pre vs post, ×100) and its timing as rich tables.

    Args:
        summary: the dict :func:`~kedit.runs.run_bench` returns (or ``summary.json`` loaded).
        console: a ``rich.console.Console`` (default: a new one on stdout).

    Example:
        >>> print_summary_table({"method": "memit", "dataset": "counterfact", "n": 1, "batch_size": 1,
        ...     "mode": "independent", "metrics": {"efficacy": 1.0}, "pre_metrics": {"efficacy": 0.0},
        ...     "timing": {"seconds_per_edit": 0.5}})  # doctest: +SKIP
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    post = flatten_metrics(summary.get("metrics") or {})
    pre = flatten_metrics(summary.get("pre_metrics") or {})
    title = (f"{summary.get('method', '?')} on {summary.get('dataset', '?')}: n={summary.get('n', '?')}, "
             f"batch size {summary.get('batch_size', '?')}, {summary.get('mode', '?')}")
    table = Table(title=title, title_justify="left")
    table.add_column("metric (%)")
    table.add_column("pre", justify="right")
    table.add_column("post", justify="right")
    table.add_column("change", justify="right")
    for key in dict.fromkeys([*post, *pre]):
        a, b = pre.get(key), post.get(key)
        change = "-"
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            change = f"{100 * (b - a):+.1f}"
        table.add_row(key, format_fraction(a), format_fraction(b), change)
    console.print(table)

    timing = summary.get("timing") or {}
    times = Table(title="timing", title_justify="left")
    times.add_column("quantity")
    times.add_column("value", justify="right")
    labels = {"seconds_per_edit": "seconds per edit", "edit_seconds_total": "edit time (total)",
              "stats_seconds": "statistics and projections"}
    for key, value in timing.items():
        times.add_row(labels.get(key, key), _seconds(value))
    tokens = (summary.get("stats") or {}).get("tokens_used")
    if tokens:
        times.add_row("statistics tokens per layer", ", ".join(f"{k}: {v}" for k, v in tokens.items()))
    console.print(times)
