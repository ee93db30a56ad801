"""Memory of the editing process, written into each journal line of a run.

The long sequential streams must keep memory flat in the number of edits (the past-edit sums are
d_k×d_k matrices, never per-edit lists).  Each journal line carries the resident set size after its
batch and the process's peak so far; :func:`memory_summary` reduces them to the peak over every
process of a resumed run and the growth per 1,000 edits, which is the number that shows flatness.
"""
from __future__ import annotations

import resource
import sys
from typing import Any, Mapping, Sequence

import numpy as np
import psutil

__all__ = ["snapshot", "memory_summary"]

_MIB = 2**20


def snapshot() -> dict[str, float]:
    """``{"rss": resident MiB now, "peak": the process's peak resident MiB so far}``."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mib = peak / _MIB if sys.platform == "darwin" else peak / 1024
    rss_mib = psutil.Process().memory_info().rss / _MIB
    # Linux updates the high-water mark lazily, so it can trail the resident size of this moment
    return {"rss": round(rss_mib, 1), "peak": round(max(peak_mib, rss_mib), 1)}


def memory_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Peak, first and last resident MiB, and the least-squares growth of RSS in MiB per 1,000 edits.

    Args:
        rows: ``[{"edits": edits so far, "rss": MiB, "peak": MiB}, ...]`` in journal order, possibly
            from several processes (a resumed run starts a new process, so RSS may step down).

    The slope leaves out the first batch, where the optimiser state, the statistics and the
    allocator's pools are first allocated, and needs three batches after it (None before).
    """
    if not rows:
        return None
    # max with rss: journal lines written before snapshot() took it into the peak may have a lagging one
    summary: dict[str, float] = {"peak_rss_mb": max(max(float(r["peak"]), float(r["rss"])) for r in rows),
                                 "rss_mb_first": float(rows[0]["rss"]), "rss_mb_last": float(rows[-1]["rss"])}
    later = rows[1:]
    if len(later) >= 3 and len({r["edits"] for r in later}) > 1:
        slope = np.polyfit([float(r["edits"]) for r in later], [float(r["rss"]) for r in later], 1)[0]
        summary["rss_growth_mb_per_1000_edits"] = float(slope) * 1000
    return summary
