"""Critical-path contrastive editing (PAC; spec/methods.md §11, results.md §3) on the embedded model.

Two consecutive-editing protocols:

* ``stream`` (ours): one pass over the requests in batches of ``--batch``; every batch is edited and
  applied before the next, and every request is scored once on the final model
  (``kedit.runs.runner.run_bench`` in ``sequential`` mode).  The same protocol runs sequential ROME,
  MEMIT and AlphaEdit for comparison.
* ``epochs`` (the PAC reference code): all requests trained together for ``--epochs`` epochs
  (mini-batches of 2, reshuffled, paths re-assessed every η = 2 epochs), scored after every epoch
  (``kedit.methods.critical_path.train_consecutive``).

``--sweep`` adds critical_path stream runs over |T⁺| = N ∈ {5, 15, 30} × λ ∈ {0, 0.1, 0.5}.  Metrics are
fractions (papers report ×100): zsRE efficacy / generalization / specificity (token accuracy against
the answers) and locality_pre (argmax agreement with the unedited model, PAC's Locality); CounterFact
efficacy / generalization / specificity (probability comparisons).  Stream runs of critical_path also
report ``path_reuse``: per batch, the share of its critical nodes an earlier batch had already trained.
Writes one JSON table
(``--out``), one run directory per stream run next to it, the node-importance plot of the
``epochs`` run, and per metric (efficacy, generalization) a plot of the stream runs' final score by
the edit's position in the stream (``*_retention_<metric>.png``: old edits overwritten by later ones).  Stream runs checkpoint every ``--checkpoint-every`` batches; ``--resume`` continues
them (no edit lost or repeated) and reuses finished ones, so a 300-request comparison can be built
over several processes (one ``--baselines`` selection each, same ``--out`` and ``--tag``; ``--skip-method``
leaves the critical_path run to another process).

    python bench/critical_path.py --dataset zsre --n 4 --batch 2 --epochs 2 --tag smoke   # smoke test
    python bench/critical_path.py --dataset zsre --n 200 --batch 2 --epochs 12 --sweep    # full run
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import kedit
from kedit.data.loaders import load_requests
from kedit.paths import data_dir
from kedit.runs.retention import plot_retention
from kedit.runs.run_dir import finished_summary, has_checkpoint, shared_pre_edit
from kedit.runs.runner import headline_metrics, run_bench

DATA = {"zsre": ("zsre", "zsre_mend_edit.json"), "counterfact": ("counterfact", "counterfact-edit.json")}
BASELINES = ("rome", "memit", "alphaedit")
SWEEP_N = (5, 15, 30)
SWEEP_LAM = (0.0, 0.1, 0.5)


def _evaluate(dataset, model, tok, requests, pre):
    from kedit.eval import evaluate_counterfact, evaluate_zsre

    with torch.no_grad():
        if dataset == "zsre":
            return evaluate_zsre(model, tok, requests, pre=pre)
        return evaluate_counterfact(model, tok, requests)


def path_reuse(journal: Path) -> list[float]:
    """Per batch of a critical_path stream run: the share of its final T⁺ nodes (keys and values, all
    layers) that an earlier batch had already selected.  High reuse means later edits train the same
    neurons as earlier ones, the interference that consecutive editing suffers from."""
    seen: dict[tuple[str, str], set[int]] = {}
    out = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        paths = json.loads(line)["info"]["critical_path"]["paths"]
        total = hits = 0
        for kind in ("pos_key", "pos_value"):
            for layer, index in paths[kind].items():
                earlier = seen.setdefault((kind, layer), set())
                total += len(index)
                hits += sum(i in earlier for i in index)
                earlier.update(index)
        out.append(hits / total if total else 0.0)
    return out


def _stream(model, tok, method, config, requests, args, data, out: Path) -> dict:
    start = time.perf_counter()
    summary, wall = (finished_summary(out) if args.resume else None), None  # finished by an earlier process
    if summary is None:
        summary = run_bench(model, tok, method=method, requests=requests, dataset=args.dataset,
                            batch_size=args.batch, mode="sequential", out_dir=out, config=config, data_path=data,
                            progress=False, save_edits=False, run_args={"bench": "critical_path", "config": config},
                            checkpoint_every=args.checkpoint_every, resume=args.resume and has_checkpoint(out),
                            pre_edit_from=shared_pre_edit(out.parent, sorted(p.name for p in out.parent.iterdir())))
        wall = time.perf_counter() - start
    row = {"protocol": "stream", "method": method, "config": config, "metrics": summary["metrics"],
           "pre_metrics": summary["pre_metrics"], "timing": summary["timing"], "fluency": summary["fluency"],
           "wall_seconds": wall}
    if method == "critical_path":
        reuse = path_reuse(out / "journal.jsonl")
        row["path_reuse"] = {"per_batch": reuse, "mean_after_first": sum(reuse[1:]) / max(len(reuse) - 1, 1)}
    return row


def _epochs(model, tok, requests, args, config, out: Path) -> dict:
    from kedit.eval import PreEditCache
    from kedit.ledger import Ledger
    from kedit.methods.critical_path import train_consecutive
    from kedit.runs.path_plots import plot_node_importance

    pre = PreEditCache.build(model, tok, requests) if args.dataset == "zsre" else None
    pre_metrics = headline_metrics(args.dataset, _evaluate(args.dataset, model, tok, requests, pre)["metrics"])

    def per_epoch(epoch, m):
        metrics = headline_metrics(args.dataset, _evaluate(args.dataset, m, tok, requests, pre)["metrics"])
        logging.info("epochs protocol, epoch %d: %s", epoch, metrics)
        return metrics

    start = time.perf_counter()
    result = train_consecutive(model, tok, requests, config, epochs=args.epochs, progress=False,
                               on_epoch_end=per_epoch if args.eval_every_epoch else None)
    seconds = time.perf_counter() - start
    ledger = Ledger(model)
    ledger.apply(result.edit_set)
    try:
        final = headline_metrics(args.dataset, _evaluate(args.dataset, model, tok, requests, pre)["metrics"])
    finally:
        ledger.revert()
    plot = plot_node_importance(result.scores[-1], out / "node_importance.png", selection=result.selections[-1],
                                title=f"critical paths, last assessment ({args.dataset}, n={len(requests)})")
    return {"protocol": "epochs", "method": "critical_path", "config": config, "epochs": args.epochs,
            "metrics": final, "pre_metrics": pre_metrics, "per_epoch": result.epochs,
            "timing": {"train_seconds": seconds, "seconds_per_edit": seconds / len(requests)},
            "edited_nodes": {k: int(v.index.numel()) for k, v in result.edit_set.deltas.items()},
            "plot": str(plot)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATA), default="zsre")
    ap.add_argument("--n", type=int, default=200, help="number of requests (from the start of the file)")
    ap.add_argument("--batch", type=int, default=2, help="stream protocol: requests per edit batch")
    ap.add_argument("--epochs", type=int, default=12, help="epochs protocol: epochs (reference: 11-15)")
    ap.add_argument("--protocols", nargs="*", default=["stream", "epochs"], choices=["stream", "epochs"])
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES), help="sequential baselines (stream protocol)")
    ap.add_argument("--skip-method", action="store_true",
                    help="stream protocol: leave out the critical_path run itself (a process that runs baselines only)")
    ap.add_argument("--sweep", action="store_true", help="stream runs over N in {5,15,30} x lambda in {0,0.1,0.5}")
    ap.add_argument("--eval-every-epoch", action="store_true", help="epochs protocol: score after every epoch")
    ap.add_argument("--config", default="{}", help="JSON overrides of the critical_path config")
    ap.add_argument("--tag", default="", help="suffix of the output names")
    ap.add_argument("--out", default="bench/results", help="output folder")
    ap.add_argument("--checkpoint-every", type=int, default=10,
                    help="stream protocol: checkpoint every this many batches (0 = never)")
    ap.add_argument("--resume", action="store_true",
                    help="stream protocol: continue each run from its checkpoint, reuse finished runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)

    folder, name = DATA[args.dataset]
    data = data_dir() / folder / name
    requests = load_requests(args.dataset, data, n=args.n)
    model, tok = kedit.load_model()
    stem = f"critical_path_{args.dataset}_n{args.n}" + (f"_{args.tag}" if args.tag else "")
    out = Path(args.out)
    runs_dir = out / stem
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = json.loads(args.config)
    table = {"dataset": args.dataset, "n": len(requests), "batch": args.batch, "model": "SmolLM2-135M-Instruct",
             "torch_threads": torch.get_num_threads(), "runs": {}}

    def save() -> None:
        (out / f"{stem}.json").write_text(json.dumps(table, indent=1, default=str))

    plan = []
    if "stream" in args.protocols:
        if not args.skip_method:
            plan.append(("critical_path", "critical_path", base))
        plan += [(m, m, None) for m in args.baselines]
        if args.sweep:
            plan += [(f"critical_path_N{n}_lam{lam}", "critical_path", {**base, "topk": n, "lam": lam})
                     for n in SWEEP_N for lam in SWEEP_LAM if not (n == 15 and lam == 0.1 and not base)]
    for key, method, config in plan:
        table["runs"][f"stream:{key}"] = _stream(model, tok, method, config, requests, args, data, runs_dir / key)
        print(f"stream:{key:32s} {table['runs'][f'stream:{key}']['metrics']}", flush=True)
        save()
    stream_runs = {key: runs_dir / key for key, _, _ in plan if (runs_dir / key / "metrics.json").is_file()}
    for metric in ("efficacy", "generalization"):
        plot_retention(stream_runs, out / f"{stem}_retention_{metric}.png", metric=metric)
    if "epochs" in args.protocols:
        table["runs"]["epochs:critical_path"] = _epochs(model, tok, requests, args, base, runs_dir)
        print(f"epochs:critical_path {table['runs']['epochs:critical_path']['metrics']}", flush=True)
        save()
    save()
    print(f"wrote {out / f'{stem}.json'}")


if __name__ == "__main__":
    main()
