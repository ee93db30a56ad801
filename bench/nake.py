"""UnKE vs NaKE (and AnyEdit* vs AnyEdit* with bargaining) on the embedded model, KnowEdit metrics:
edit success, portability, locality, fluency, seconds per edit, plus the gradient-conflict
diagnostics (NaKE Figures 2–3) and an optional fixed-weight sweep (Figure 4).

    python bench/nake.py --dataset zsre --n 200 --out bench/results/nake_zsre
    python bench/nake.py --dataset counterfact --n 200 --sweep --out bench/results/nake_cf

Edits are independent, so a table over records 0-99 and one over 100-199 (``--start 100``) pool into
the 200-record table exactly (means weighted by n).  The unedited model is scored once: later runs
read the first one's ``pre_edit.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

import kedit
from kedit.data.loaders import load_requests
from kedit.paths import data_dir
from kedit.runs.nash_plots import (conflict_rate, load_diagnostics, merge_diagnostics, plot_nash_figures,
                                   update_conflict_rate)
from kedit.runs.run_dir import shared_pre_edit
from kedit.runs.runner import run_bench

FILES = {"zsre": "zsre/zsre_mend_edit.json", "counterfact": "counterfact/counterfact-edit.json"}
RUNS = {
    "unke": ("unke", {"fit": {"diagnostics": True}}),
    "nake": ("nake", {}),
    "anyedit_unke": ("anyedit_unke", {"fit": {"diagnostics": True}}),
    "anyedit_unke+nash": ("anyedit_unke", {"fit": {"combine": "nash", "diagnostics": True}}),
}
SWEEP = (1.0, 2.0, 5.0, 10.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(FILES), default="zsre")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--start", type=int, default=0,
                    help="First record. Independent edits: tables of slices pool exactly by their n.")
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--sweep", action="store_true", help="Also run fixed weights λ_e = 1, λ_p ∈ {1, 2, 5, 10}.")
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "smollm2" / "unke-facts.yaml"),
                    help="YAML overrides merged into every run's config ('' = class defaults). The default is "
                         "the short-answer setting: unke.yaml's long-answer budget overwrites the block.")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default).")
    ap.add_argument("--out", default="bench/results/nake")
    ap.add_argument("--resume", action="store_true",
                    help="Continue killed runs in --out: finished requests are read back, not edited again.")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = kedit.load_model()
    path = data_dir() / FILES[args.dataset]
    requests = load_requests(args.dataset, path, n=args.n, start=args.start)
    runs = {k: RUNS[k] for k in args.runs}
    if args.sweep:
        for lam in SWEEP:
            runs[f"fixed_p{lam:g}"] = ("unke", {"fit": {"combine": "fixed", "fixed_weights": [lam, 1.0],
                                                        "diagnostics": True}})
    table, sweep = {}, []
    for name, (method, cfg) in runs.items():
        merged = {**extra, **cfg, "fit": {**extra.get("fit", {}), **cfg.get("fit", {})}}
        start = time.perf_counter()
        summary = run_bench(model, tok, method=method, requests=requests, dataset=args.dataset, protocol="knowedit",
                            batch_size=1, mode="independent", out_dir=out / name, config=merged, data_path=path,
                            progress=True, save_edits=False, keep_pre_edit=True, resume=args.resume,
                            pre_edit_from=shared_pre_edit(out, list(runs)))
        diagnostics = load_diagnostics(out / name / "journal.jsonl")
        table[name] = {"metrics": summary["metrics"], "pre_metrics": summary["pre_metrics"],
                       "fluency": summary["fluency"], "timing": summary["timing"],
                       "conflict_rate": conflict_rate(diagnostics),
                       "update_conflict_rate": update_conflict_rate(diagnostics), "wall_seconds": time.perf_counter() - start}
        m = summary["metrics"]
        if name.startswith("fixed_p") or name == "nake":
            sweep.append({"method": "nake" if name == "nake" else "fixed",
                          "lambda_p": merged["fit"].get("fixed_weights", [None])[0], "lambda_e": 1.0,
                          "edit_succ": m["edit_succ"], "locality": m["locality"], "portability": m["portability"]})
        (out / "table.json").write_text(json.dumps({"dataset": args.dataset, "n": args.n, "start": args.start,
                                                      "runs": table}, indent=1))
        print(f"{name:20s} edit {m['edit_succ']:.3f} port {m['portability'] or 0:.3f} loc {m['locality'] or 0:.3f} "
              f"flu {summary['fluency']['post'] or 0:.3f} conflicts {table[name]['conflict_rate']} "
              f"update conflicts {table[name]['update_conflict_rate']} "
              f"s/edit {summary['timing']['seconds_per_edit']:.1f}", flush=True)
    # Figures 2-3 compare the runs' steps by run name; the fixed-weight runs only feed Figure 4.
    merged_journal = merge_diagnostics({n: [out / n / "journal.jsonl"] for n in runs if not n.startswith("fixed_p")},
                                       out / "diagnostics.jsonl")
    plots = plot_nash_figures(merged_journal, out, sweep=sweep if len(sweep) > 1 else None)
    if plots:
        print("plots:", {k: str(v) for k, v in plots.items()})


if __name__ == "__main__":
    main()
