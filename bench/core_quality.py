"""Efficacy / Generalization / Specificity of the core presets on CounterFact (benchmark).

One process, one model, one ValueCache: value targets optimised on the unedited weights are
shared by every method and mode that needs them (MEMIT, AlphaEdit, LyapLock and the first batch
of each sequential run), exactly as a user sharing an Editor cache would.  Writes one run
directory per (method, mode) under --out and a combined JSON table.

    python bench/core_quality.py --n 100 --seq-batch 20 --out bench/results/core
"""
from __future__ import annotations

import argparse
import json
import resource
import time

from kedit.runs.runner import run_bench

from _counterfact_run import counterfact_run

RUNS = (("memit", "independent"), ("alphaedit", "independent"), ("rome", "independent"), ("ft", "independent"),
        ("memit", "sequential"), ("alphaedit", "sequential"), ("ft", "sequential"), ("lyaplock", "sequential"),
        ("rome", "sequential"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seq-batch", type=int, default=20)
    ap.add_argument("--out", default="bench/results/core")
    ap.add_argument("--runs", nargs="*", default=[f"{m}:{mode}" for m, mode in RUNS])
    args = ap.parse_args()
    out, model, tok, data, requests, cache = counterfact_run(args.out, args.n)
    table = {}
    for spec in args.runs:
        method, mode = spec.split(":")
        batch = 1 if mode == "independent" else args.seq_batch
        start = time.perf_counter()
        summary = run_bench(model, tok, method=method, requests=requests, dataset="counterfact", batch_size=batch,
                            mode=mode, out_dir=out / f"{method}-{mode}", data_path=data, progress=False,
                            save_edits=False, value_cache=cache)
        table[spec] = {"metrics": summary["metrics"], "pre_metrics": summary["pre_metrics"],
                       "timing": summary["timing"], "wall_seconds": time.perf_counter() - start,
                       "value_cache": {"hits": cache.hits, "misses": cache.misses},
                       "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        (out / "table.json").write_text(json.dumps({"n": args.n, "seq_batch": args.seq_batch, "runs": table}, indent=1))
        m = summary["metrics"]
        print(f"{spec:24s} eff {m['efficacy']:.3f} gen {m['generalization']:.3f} spe {m['specificity']:.3f} "
              f"s/edit {summary['timing']['seconds_per_edit']:.2f}", flush=True)


if __name__ == "__main__":
    main()
