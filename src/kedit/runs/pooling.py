"""One method's independent-edit runs over disjoint slices of a dataset, pooled into one table.

Independent edits start from the unedited model every time, so a long benchmark may be run as
slices (``--start``) in separate processes, or on separate days, and still give the table a single
run would have given. Pooling recomputes the evaluator's metrics over the union of the slices'
per-request cases (``metrics.json``), rather than averaging the slices' headline numbers: a mean of
means weighted by n is exact only when every request carries every key, and KnowEdit records may
lack a portability or locality block.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kedit.errors import DataError
from kedit.runs import protocols
from kedit.runs.protocols import _mean

__all__ = ["pool_runs"]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; pass the run directories of finished runs") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def pool_runs(run_dirs: list[str | os.PathLike]) -> dict[str, Any]:
    """Headline metrics (post and pre-edit), mean fluency and seconds per edit over every case of
    ``run_dirs``, each a finished independent run of the same method and protocol.

    Raises ``DataError`` when the directories mix methods, protocols or modes, or when a request id
    appears in two of them (overlapping slices would count it twice)."""
    if not run_dirs:
        raise DataError("pool_runs: no run directories given")
    post: list[dict[str, Any]] = []
    pre: list[dict[str, Any]] = []
    seen: dict[Any, Path] = {}
    protocol = method = None
    edit_seconds = 0.0
    for run_dir in map(Path, run_dirs):
        summary = _read(run_dir / "summary.json")
        metrics = _read(run_dir / "metrics.json")
        if summary.get("mode") != "independent":
            raise DataError(f"{run_dir}: mode {summary.get('mode')!r}; only independent edits pool "
                            "(a sequential run's cases depend on every edit before them)")
        if protocol is None:
            protocol, method = metrics.get("protocol"), summary.get("method")
        elif (metrics.get("protocol"), summary.get("method")) != (protocol, method):
            raise DataError(f"{run_dir}: {summary.get('method')} under protocol {metrics.get('protocol')!r} "
                            f"cannot pool with {method} under {protocol!r}")
        cases = metrics.get("cases") or {}
        for case in cases.get("post", []):
            if case["id"] in seen:
                raise DataError(f"{run_dir}: request {case['id']!r} is also in {seen[case['id']]}; "
                                "slices must be disjoint")
            seen[case["id"]] = run_dir
        post += cases.get("post", [])
        pre += cases.get("pre", [])
        edit_seconds += summary["timing"]["edit_seconds_total"]
    n = len(post)
    return {
        "method": method, "protocol": protocol, "n": n, "slices": [str(d) for d in run_dirs],
        "metrics": protocols.headline(protocol, protocols.aggregate(protocol, post)),
        "pre_metrics": protocols.headline(protocol, protocols.aggregate(protocol, pre)) if pre else None,
        "fluency": {"pre": _mean(c.get("fluency") for c in pre), "post": _mean(c.get("fluency") for c in post)},
        "seconds_per_edit": edit_seconds / n if n else None,
    }
