"""Process memory in the journal: the snapshot sees allocations, the summary reads flatness right."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kedit.runs.memory import memory_summary


def test_snapshot_sees_a_large_allocation():
    # in a fresh process: inside the suite the allocator may hand back pages an earlier test freed
    # but kept resident, and then RSS does not move
    probe = (
        "import json, torch\n"
        "from kedit.runs.memory import snapshot\n"
        "before = snapshot()\n"
        "block = torch.ones(64 * 2**20)\n"  # 64 Mi float32 = 256 MiB, written so it is resident
        "print(json.dumps([before, snapshot()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after["rss"] - before["rss"] > 200
    assert after["peak"] >= after["rss"]


def test_summary_peak_spans_processes_and_slope_skips_the_first_batch():
    # the first batch allocates (1,000 MiB); then 2 MiB per 1,000 edits; the last line is a resumed process (peak 700)
    rows = [{"edits": 10, "rss": 1000.0, "peak": 1000.0}]
    rows += [{"edits": e, "rss": 500.0 + 0.002 * e, "peak": 1200.0} for e in (20, 30, 40)]
    rows += [{"edits": 50, "rss": 500.1, "peak": 700.0}]
    summary = memory_summary(rows)
    assert summary["peak_rss_mb"] == 1200.0
    assert summary["rss_mb_first"] == 1000.0 and summary["rss_mb_last"] == 500.1
    assert summary["rss_growth_mb_per_1000_edits"] == pytest.approx(2.0, abs=1e-6)


def test_summary_without_enough_batches_has_no_slope():
    assert memory_summary([]) is None
    rows = [{"edits": 10 * i, "rss": 100.0 * i, "peak": 100.0 * i} for i in range(1, 4)]
    assert "rss_growth_mb_per_1000_edits" not in memory_summary(rows)
    assert memory_summary(rows)["peak_rss_mb"] == 300.0
