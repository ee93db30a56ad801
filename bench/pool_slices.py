"""Pool the tables of independent-edit benchmarks run as disjoint slices (``--start``).

    python bench/pool_slices.py bench/results/nake_zsre bench/results/nake_zsre_10 --runs unke nake \
        --pair unke nake --title zsRE --out bench/results/nake_zsre_pooled

Each folder is a benchmark's ``--out`` (``bench/nake.py``, ``bench/long_form.py``): one run directory per
method. The metrics are recomputed over every slice's cases (``kedit.runs.pooling``). Where the runs
journal Nash-bargaining diagnostics, the conflict rates and NaKE's Figures 2–3 are redone over all
slices' steps.  ``--pair A B`` adds request-by-request comparisons of two methods on the same records
(``kedit.runs.pooling.paired_comparison``).  ``tables.md`` holds the same numbers as the markdown tables
of ``docs/results.md``.  The same as ``kedit pool FOLDER... --runs …`` (``kedit.runs.pool_report``).
"""
from __future__ import annotations

import argparse

from kedit.runs.pool_report import pool_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="The slices' --out folders.")
    ap.add_argument("--runs", nargs="+", required=True, help="Run directory names to pool (e.g. unke nake).")
    ap.add_argument("--title", default="pooled", help="First header cell of the markdown tables (e.g. zsRE).")
    ap.add_argument("--out", required=True, help="Folder for pooled.json, tables.md (and the diagnostics figures).")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="Also compare run B against run A request by request: mean paired difference, 95 %% "
                         "bootstrap interval, requests better / worse / equal (repeatable; e.g. --pair unke nake).")
    args = ap.parse_args()
    report = pool_report(args.folders, args.out, runs=args.runs, pairs=[tuple(p) for p in args.pair], title=args.title)
    print(report["files"]["tables"].read_text())
    print("wrote:", {k: str(v) for k, v in report["files"].items()})


if __name__ == "__main__":
    main()
