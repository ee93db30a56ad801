"""LyapLock against the sequential baselines on CounterFact (benchmark; LyapLock 2025 Table 1, Fig. 3/4).

Every method edits the same ``--n`` CounterFact facts sequentially, in batches of ``--batch-size``,
on the embedded model, and is scored once on the final weights.  Health is recorded after every
batch (weight-norm growth, WikiText perplexity and the preservation loss D(t) per edited layer, the
quantity LyapLock keeps under its budget αD₀), the general-capability probes every
``--probe-every`` edits.  One process, one model, one ValueCache: value targets optimised on the
unedited weights (every method's first batch) are computed once.

Batch size 10 (not the paper's 100): the paper edits Llama3-8B, whose down_proj keys have
d_k = 14336 dimensions, in batches of 100; SmolLM2-135M's have d_k = 1536.  A batch of 10 keeps
each batch's update rank as small a share of the key space (10/1536 ≈ 0.65 %, 100/14336 ≈ 0.70 %),
so the sequential regime, many low-rank updates accumulating, is the same one; batches of 100
would write a rank-100 update into a 1536-dim space and make every batch a large, early shock.

Writes under ``--out``: one run directory per method (``summary.json``, ``journal.jsonl``, ...),
``table.json`` (rewritten after each method: metrics, pre-edit metrics, fluency, timing, LyapLock
budget ratios, final D(t) and probes), ``preservation_loss.png`` (max over layers of D(t) per
method, log scale, LyapLock budgets dashed), ``probes.png`` (mean probe F1 against edits) and
``retention.png`` (final efficacy by the edit's position in the stream: forgetting of early edits).

    python bench/lyaplock.py --n 1000 --batch-size 10 --out bench/results/lyaplock

The 10,000-edit run: bfloat16 value optimisation (``compute_dtype``, 1.4–1.65× on this CPU) and every
10th request scored (scoring 10,000 requests before and after would take about 6 hours):

    python bench/lyaplock.py --n 10000 --methods lyaplock --probe-every 1000 --probe-n 50 \
        --config '{"target": {"compute_dtype": "bfloat16"}}' --score-every 10 --out bench/results/ll10000

Long runs checkpoint every ``--checkpoint-every`` batches; ``--resume`` continues each method from
its checkpoint (no edit lost or repeated) and takes methods that already have a ``summary.json``
as they are, so one comparison can be run as several processes (one ``--methods`` each, same
``--out``) and tabulated by a last ``--resume`` call naming them all.  A method that starts after
another one measured the unedited model reads those pre-edit scores and probes
(``pre_edit.json``) instead of measuring them again.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from kedit.eval.probes import compact, mean_f1
from kedit.runs.plots import (plot_preservation_comparison, plot_probe_comparison, preservation_series,
                              probe_series)
from kedit.runs.retention import plot_retention
from kedit.runs.run_dir import finished_summary, has_checkpoint, pre_probe_results, shared_pre_edit
from kedit.runs.runner import run_bench

from _counterfact_run import counterfact_run

METHODS = ("memit", "alphaedit", "rect", "prune", "lyaplock", "lyaplock+memit", "lyaplock+rect", "lyaplock+prune",
           "lyaplock+alphaedit")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="CounterFact records edited (the first n).")
    ap.add_argument("--batch-size", type=int, default=10, help="Edits per batch (see the module docstring).")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="Presets to compare, in this order.")
    ap.add_argument("--probe-every", type=int, default=100, help="Run the probes every this many edits (0 = never).")
    ap.add_argument("--probe-n", type=int, default=100, help="Items per probe task.")
    ap.add_argument("--out", default="bench/results/lyaplock", help="Output folder.")
    ap.add_argument("--checkpoint-every", type=int, default=10, help="Checkpoint every this many batches (0 = never).")
    ap.add_argument("--resume", action="store_true",
                    help="Continue each method from its checkpoint; reuse methods already finished.")
    ap.add_argument("--config", default="{}",
                    help="JSON overrides applied to every method, e.g. '{\"target\": {\"compute_dtype\": \"bfloat16\"}}'.")
    ap.add_argument("--score-every", type=int, default=1,
                    help="Score every this many-th request before and after editing (all are edited).")
    ap.add_argument("--progress-only", action="store_true",
                    help="Edit nothing: plot and print the D(t) and probe curves of the journals so far "
                         "(runs still going, or killed).")
    return ap.parse_args()


def _time_breakdown(journal: Path) -> dict[str, float]:
    """Where a run's time went, from its journal: editing (value optimisation, the rest of the edit:
    keys, solves, queue) and per-batch health (perplexity, D(t), probes)."""
    edit = value = health = 0.0
    for line in journal.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        edit += record["seconds"]
        value += (record.get("info") or {}).get("value_seconds") or 0.0
        health += (record.get("health") or {}).get("seconds") or 0.0
    return {"edit_seconds": edit, "value_seconds": value, "value_share": value / edit if edit else None,
            "health_seconds": health}


def _row(summary: dict[str, Any], journal: Path, wall_seconds: float | None) -> dict[str, Any]:
    """The table entry of one method's run."""
    probes = summary.get("probes") or {}
    final = probes.get("final")
    D = preservation_series(journal)
    last_health = next((h for h in reversed([json.loads(line).get("health") or {} for line in
                                             journal.read_text(encoding="utf-8").splitlines()]) if "perplexity" in h), {})
    return {
        "metrics": summary["metrics"], "pre_metrics": summary["pre_metrics"], "fluency": summary["fluency"],
        "timing": {**summary["timing"], "wall_seconds": wall_seconds, **_time_breakdown(journal)},
        "memory": summary.get("memory"),  # peak RSS and its growth per 1,000 edits (absent in older runs)
        "lyaplock": summary.get("lyaplock"),
        "preservation_loss_final": D[-1]["D"] if D else None,
        "preservation_loss_growth": max(D[-1]["D"].values()) / max(D[0]["D"].values()) if D else None,
        "perplexity": {"pre": (summary.get("health") or {}).get("perplexity_pre"),
                       "final": last_health.get("perplexity")},
        "weight_norm_growth_final": last_health.get("weight_norm_growth"),
        "probes": {"pre_mean_f1": mean_f1(probes["pre"]) if probes.get("pre") else None,
                   "final_mean_f1": mean_f1(final) if final else None,
                   "final": compact(final) if final else None},
    }


def _write_outputs(out: Path, args: argparse.Namespace, table: dict[str, Any]) -> None:
    """table.json and the two comparison plots, from every method finished so far."""
    settings = {k: getattr(args, k) for k in ("n", "batch_size", "probe_every", "probe_n", "config", "score_every")}
    (out / "table.json").write_text(json.dumps({**settings, "runs": table}, indent=1) + "\n", encoding="utf-8")
    journals = {method: out / method / "journal.jsonl" for method in table}
    plot_preservation_comparison(journals, out / "preservation_loss.png")
    plot_probe_comparison(journals, out / "probes.png",
                          pre={m: row["probes"]["pre_mean_f1"] for m, row in table.items()})
    plot_retention({method: out / method for method in table}, out / "retention.png")


def _progress(out: Path, methods: list[str]) -> None:
    """Plots and a per-method line from whatever the journals hold so far: edits done, max-over-layers
    D(t) at the last batch, its ratio to the budget αD₀ (LyapLock presets) or to the method's own
    D after the first batch (D(t)/D₀ for the others), and the latest mean probe F1."""
    journals = {m: out / m / "journal.jsonl" for m in methods if (out / m / "journal.jsonl").is_file()}
    pre = {}
    for method in journals:
        probes = pre_probe_results(out / method)
        pre[method] = mean_f1(probes) if probes else None
    plot_preservation_comparison(journals, out / "preservation_loss.png")
    plot_probe_comparison(journals, out / "probes.png", pre=pre)
    for method, journal in journals.items():
        D = preservation_series(journal)
        if not D:
            print(f"{method:20s} no batch journaled yet")
            continue
        last, first = max(D[-1]["D"].values()), max(D[0]["D"].values())
        ratio = (f"D/αD0 {last / max(D[-1]['budget'].values()):.3f}" if D[-1]["budget"]
                 else f"D/D0 {last / first:.1f}")
        probe = probe_series(journal)
        probe_txt = f"probe F1 {mean_f1(probe[-1]['probes']):.3f} at {probe[-1]['edits']}" if probe else ""
        print(f"{method:20s} {D[-1]['edits']:5d} edits  max D {last:.4g}  {ratio}  "
              f"pre F1 {pre[method] if pre[method] is None else round(pre[method], 3)}  {probe_txt}", flush=True)


def main() -> None:
    args = _args()
    if args.progress_only:
        _progress(Path(args.out), args.methods)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # a line per batch in the log
    out, model, tok, data, requests, cache = counterfact_run(args.out, args.n)
    table: dict[str, Any] = {}
    for method in args.methods:
        start = time.perf_counter()
        run_dir = out / method
        summary = finished_summary(run_dir) if args.resume else None
        if summary is not None:
            table[method] = _row(summary, run_dir / "journal.jsonl", None)
            _write_outputs(out, args, table)
            continue
        summary = run_bench(model, tok, method=method, requests=requests, dataset="counterfact",
                            batch_size=args.batch_size, mode="sequential", out_dir=run_dir, data_path=data,
                            progress=False, save_edits=False, value_cache=cache, health_every_batch=True,
                            probe_every=args.probe_every, probe_n=args.probe_n,
                            config=json.loads(args.config) or None, score_every=args.score_every,
                            checkpoint_every=args.checkpoint_every, resume=args.resume and has_checkpoint(run_dir),
                            pre_edit_from=shared_pre_edit(out, list(METHODS)))
        table[method] = _row(summary, run_dir / "journal.jsonl", time.perf_counter() - start)
        _write_outputs(out, args, table)
        m = summary["metrics"]
        print(f"{method:20s} eff {m['efficacy']:.3f} gen {m['generalization']:.3f} spe {m['specificity']:.3f} "
              f"s/edit {summary['timing']['seconds_per_edit']:.2f} budget {summary.get('lyaplock')}", flush=True)


if __name__ == "__main__":
    main()
