"""Pool the tables of independent-edit benchmarks run as disjoint slices (``--start``).

    python bench/pool_slices.py bench/results/nake_zsre bench/results/nake_zsre_10 --runs unke nake \
        --out bench/results/nake_zsre_pooled

Each folder is a benchmark's ``--out`` (``bench/nake.py``, ``bench/long_form.py``): one run directory per
method. The metrics are recomputed over every slice's cases (``kedit.runs.pooling``). Where the runs
journal Nash-bargaining diagnostics, the conflict rates and NaKE's Figures 2–3 are redone over all
slices' steps.  ``--pair A B`` adds request-by-request comparisons of two methods on the same records
(``kedit.runs.pooling.paired_comparison``).  ``tables.md`` holds the same numbers as the markdown tables
of ``docs/results.md`` (``kedit.runs.pooled_tables``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kedit.runs.nash_plots import load_diagnostics, merge_diagnostics, plot_nash_figures
from kedit.runs.pooled_tables import paired_table, runs_table
from kedit.runs.pooling import CASE_METRICS, paired_comparison, pool_runs
from nake import _conflict_rate, _update_conflict_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="The slices' --out folders.")
    ap.add_argument("--runs", nargs="+", required=True, help="Run directory names to pool (e.g. unke nake).")
    ap.add_argument("--title", default="pooled", help="First header cell of the markdown tables (e.g. zsRE).")
    ap.add_argument("--out", required=True, help="Folder for pooled.json (and the diagnostics figures).")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="Also compare run B against run A request by request: mean paired difference, 95 %% "
                         "bootstrap interval, requests better / worse / equal (repeatable; e.g. --pair unke nake).")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table, journals = {}, {}
    for name in args.runs:
        dirs = [Path(f) / name for f in args.folders]
        table[name] = pool_runs(dirs)
        diagnostics = [d for run_dir in dirs if (run_dir / "journal.jsonl").exists()
                       for d in load_diagnostics(run_dir / "journal.jsonl")]
        if diagnostics:
            table[name]["conflict_rate"] = _conflict_rate(diagnostics)
            table[name]["update_conflict_rate"] = _update_conflict_rate(diagnostics)
            journals[name] = [run_dir / "journal.jsonl" for run_dir in dirs]
        row = table[name]
        print(f"{name:20s} n {row['n']:4d} " + " ".join(
            f"{k} {v:.3f}" for k, v in row["metrics"].items() if isinstance(v, float))
              + f" s/edit {row['seconds_per_edit']:.1f}", flush=True)
    paired = {}
    for a, b in args.pair:
        sides = [[Path(f) / name for f in args.folders] for name in (a, b)]
        paired[f"{b} vs {a}"] = rows = [paired_comparison(*sides, metric) for metric in CASE_METRICS]
        for r in rows:
            if r["n"]:
                print(f"{b} - {a} {r['metric']:17s} n {r['n']:4d} diff {r['mean_diff']:+.3f} "
                      f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] higher {r['b_higher']} lower {r['b_lower']} "
                      f"equal {r['equal']}", flush=True)
    (out / "pooled.json").write_text(json.dumps({"folders": args.folders, "runs": table, "paired": paired}, indent=1))
    tables = [runs_table(args.title, table)] + [paired_table(f"{args.title}: {label}", rows)
                                                for label, rows in paired.items()]
    (out / "tables.md").write_text("\n".join(tables))
    if journals:
        merged = merge_diagnostics(journals, out / "diagnostics.jsonl")
        print("plots:", {k: str(v) for k, v in plot_nash_figures(merged, out).items()})


if __name__ == "__main__":
    main()
