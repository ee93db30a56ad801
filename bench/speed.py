"""Seconds per edit and peak RSS of each method on the embedded model (benchmark, not a test).

Each (method, mode) runs in its own subprocess through ``kedit bench`` so peak RSS is per run;
statistics are precomputed once first so ``seconds_per_edit`` measures editing only.  The
reference in the same run is each method's own independent (batch 1) mode: the JSON reports the
batched/independent speed-up ratio, never absolute-second asserts.

    python bench/speed.py --n 20 --out bench/results/speed.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from kedit.paths import data_dir

METHODS = ("rome", "memit", "alphaedit", "ft")


def run(method: str, n: int, batch: int, mode: str, data: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kedit.cli", "--quiet", "bench", "--method", method, "--data", str(data),
           "--n", str(n), "--batch-size", str(batch), "--mode", mode, "--out", str(out), "--no-progress",
           "--no-save-edits"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads((out / "summary.json").read_text())
    return {"method": method, "batch_size": batch, "mode": mode, "n": n,
            "seconds_per_edit": summary["timing"]["seconds_per_edit"],
            "peak_rss_mb_upper_bound": max(peak_kb, before) / 1024,
            "metrics": summary["metrics"], "pre_metrics": summary.get("pre_metrics")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", default="bench/results/speed.json")
    args = ap.parse_args()
    data = data_dir() / "counterfact" / "counterfact-edit.json"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for batch in (1, args.n):
                rows.append(run(method, args.n, batch, "independent", data, Path(tmp) / f"{method}-{batch}"))
                print(json.dumps(rows[-1]), flush=True)
    ratios = {}
    for method in args.methods:
        one = next(r for r in rows if r["method"] == method and r["batch_size"] == 1)
        many = next(r for r in rows if r["method"] == method and r["batch_size"] == args.n)
        ratios[method] = one["seconds_per_edit"] / max(many["seconds_per_edit"], 1e-9)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows, "batched_speedup_vs_independent": ratios}, indent=1))
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
