"""Edit efficacy against answer length with content held fixed (μKE's claim of stability across
target lengths): the same long answers cut at several lengths, each cut edited independently.

    python bench/length_sweep.py --lengths 32 64 128 256 --per-domain 2 --methods anyedit muke \\
        --pair anyedit,muke --threads 1 --out bench/results/length_sweep

Binning a benchmark's answers by their own length (``bench/long_form.py``'s figure) confounds length
with topic; here every length edits the same records, so a curve that falls is the editor, not the
records.  Records are EditEverything's (or UnKEBench's) with at least max(--lengths) answer tokens.
Each cut is a ``kedit bench``-style run directory ``<out>/len<L>/<dataset>-<method>``, resumable with
``--resume`` and poolable with ``kedit pool``.  Writes ``length_sweep.json`` (per method and length:
mean and 95 % interval of each score; per pair and length: the paired difference) and
``<score>_by_length.png`` for BLEU, ROUGE-L recall and similarity of the original question.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import kedit
from kedit.data.unstructured import load_editeverything, load_unkebench
from kedit.paths import data_dir
from kedit.runs.length_plots import UNEDITED, length_series, plot_score_by_length
from kedit.runs.pooling import case_score, paired_scores_by_metric, paired_statistics, pool_runs
from kedit.runs.run_dir import shared_pre_edit
from kedit.runs.runner import run_bench
from long_form import METHODS, _per_domain, _truncate, load_overrides

SCORES = {"bleu.original": "character BLEU, original question",
          "rouge_l.original": "ROUGE-L recall, original question",
          "similarity.original": "MiniLM similarity, original question"}


def long_enough(requests, tok, n_tokens: int):
    """The requests whose answer has at least ``n_tokens`` tokens (every cut then has its full length)."""
    return [r for r in requests if len(tok(r.target_new, add_special_tokens=False)["input_ids"]) >= n_tokens]


def select(dataset: str, tok, longest: int, *, per_domain: int, start: int, n: int, domain_start: int = 0):
    """Records ``start .. start+n`` of: ``per_domain`` long-enough records of each EditEverything
    domain after its first ``domain_start``, or the long-enough UnKEBench records (file order)."""
    if dataset == "editeverything":
        path = data_dir() / "editeverything" / "editevery.json"
        chosen = _per_domain(long_enough(load_editeverything(path), tok, longest), per_domain, skip=domain_start)
    else:
        path = data_dir() / "unke" / "final_data_v2.json"
        chosen = long_enough(load_unkebench(path), tok, longest)
    return path, chosen[start:start + n]


def _points(run_dirs: list[Path], metric: str, length: int, phase: str = "post") -> list[tuple[int, float]]:
    cases = [c for d in run_dirs for c in json.loads((d / "metrics.json").read_text())["cases"][phase]]
    return [(length, s) for s in (case_score(c, metric) for c in cases) if s is not None]


def summarise(folders: list[Path], dataset: str, lengths, methods, pairs) -> dict:
    """Per-length series of each score for every method (and the unedited model), paired differences,
    over the finished runs of every sweep folder (disjoint records: ``--start``); each point's ``n``
    says how many requests it holds."""
    def finished(method, length):
        dirs = [f / f"len{length}" / f"{dataset}-{method}" for f in folders]
        return [d for d in dirs if (d / "summary.json").exists()]

    runs = {m: {L: finished(m, L) for L in lengths} for m in methods}
    result: dict = {"dataset": dataset, "lengths": list(lengths), "folders": [str(f) for f in folders],
                    "series": {}, "paired": {}, "seconds_per_edit": {}}
    for metric in SCORES:
        unedited = [p for L in lengths for p in _points(_first_per_folder(runs, methods, L), metric, L, "pre")]
        series = {UNEDITED: length_series(unedited)} if unedited else {}
        for m in methods:
            series[m] = length_series([p for L in lengths for p in _points(runs[m][L], metric, L)])
        result["series"][metric] = series
    for m in methods:
        result["seconds_per_edit"][m] = {L: pool_runs(d)["seconds_per_edit"] for L, d in runs[m].items() if d}
    for a, b in pairs:
        both = {L: [(x, y) for x in runs[a][L] for y in runs[b][L] if x.parents[1] == y.parents[1]] for L in lengths}
        scores = {L: paired_scores_by_metric([x for x, _ in d], [y for _, y in d], list(SCORES))
                  for L, d in both.items() if d}  # each length's two sides read once for all scores
        result["paired"][f"{b} vs {a}"] = {
            metric: {L: paired_statistics(by_metric[metric], metric) for L, by_metric in scores.items()}
            for metric in SCORES}
    return result


def report(out: Path, folders: list[Path], dataset: str, lengths, methods, pairs) -> dict:
    """:func:`summarise` written to ``out/length_sweep.json``, and a figure per score."""
    result = summarise(folders, dataset, lengths, methods, pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "length_sweep.json").write_text(json.dumps(result, indent=1))
    for metric, label in SCORES.items():
        plot_score_by_length(result["series"][metric], out / f"{metric.split('.')[0]}_by_length.png",
                             ylabel=label, xlabel="answer cut (tokens; same records at every cut)", log2_x=True)
    text = "\n\n".join(sweep_table(result, metric) for metric in SCORES)
    (out / "length_sweep.md").write_text(text + "\n")
    print(text, flush=True)
    return result


def sweep_table(result: dict, metric: str) -> str:
    """One score as a Markdown table: a row per method (mean over the requests at each cut), a row per
    pair (paired mean difference, requests higher / lower), and seconds per edit."""
    lengths = result["lengths"]
    rows = [f"| {SCORES[metric]} | " + " | ".join(str(L) for L in lengths) + " |",
            "|---|" + "---|" * len(lengths)]
    for method, points in result["series"][metric].items():
        at = {p["length"]: p for p in points}
        rows.append(f"| {method} | " + " | ".join(
            f"{at[L]['mean']:.3f} (n={at[L]['n']})" if L in at else "–" for L in lengths) + " |")
    for pair, by_metric in result["paired"].items():
        at = {int(L): d for L, d in by_metric.get(metric, {}).items()}
        rows.append(f"| {pair.replace(' vs ', ' − ')} [95 % interval] (higher / lower) | " + " | ".join(
            f"{at[L]['mean_diff']:+.3f} [{at[L]['ci95'][0]:+.3f}, {at[L]['ci95'][1]:+.3f}] "
            f"({at[L]['b_higher']} / {at[L]['b_lower']})" if L in at else "–" for L in lengths) + " |")
    for method, by_length in result["seconds_per_edit"].items():
        at = {int(L): v for L, v in by_length.items()}
        rows.append(f"| s/edit {method} | " + " | ".join(
            f"{at[L]:.0f}" if at.get(L) is not None else "–" for L in lengths) + " |")
    return "\n".join(rows)


def _first_per_folder(runs, methods, length) -> list[Path]:
    """One finished run per folder at ``length`` (the first method's): its pre-edit cases are the folder's."""
    chosen: dict[Path, Path] = {}
    for m in methods:
        for d in runs[m][length]:
            chosen.setdefault(d.parents[1], d)
    return list(chosen.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256], help="Answer cuts (tokens).")
    ap.add_argument("--dataset", choices=("editeverything", "unkebench"), default="editeverything")
    ap.add_argument("--per-domain", type=int, default=2, help="EditEverything records per domain (long enough).")
    ap.add_argument("--domain-start", type=int, default=0,
                    help="Skip this many long-enough EditEverything records of each domain first (new records "
                         "for another --out when --per-domain has taken every domain's first ones).")
    ap.add_argument("--n", type=int, default=10, help="Records at most (UnKEBench: long enough, in file order).")
    ap.add_argument("--start", type=int, default=0,
                    help="Skip this many of the chosen records (another --out extends a sweep: slices pool).")
    ap.add_argument("--methods", nargs="+", default=["anyedit", "muke"], choices=METHODS)
    ap.add_argument("--pair", action="append", default=[], metavar="A,B",
                    help="Paired difference B − A at each length (repeatable).")
    ap.add_argument("--configs", default=str(Path(__file__).parent / "configs" / "smollm2"),
                    help="Folder of <method>.yaml overrides ('' = class defaults).")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default).")
    ap.add_argument("--out", default="bench/results/length_sweep")
    ap.add_argument("--resume", action="store_true", help="Continue killed runs: finished requests are read back.")
    ap.add_argument("--pool", nargs="*", default=[], metavar="DIR",
                    help="Other sweep folders (other --start) whose finished runs join the summary and figures.")
    ap.add_argument("--summary-only", action="store_true",
                    help="Edit nothing: write the summary and figures of the finished runs (with --pool) to --out.")
    args = ap.parse_args()
    pairs = [tuple(p.split(",")) for p in args.pair]
    bad = [p for p in pairs if len(p) != 2 or not set(p) <= set(args.methods)]
    if bad:
        ap.error(f"--pair takes A,B with both in --methods (got {bad})")
    lengths = sorted(set(args.lengths))
    if lengths[0] < 1:
        ap.error("--lengths must be positive")
    out = Path(args.out)
    if args.summary_only:
        report(out, [out, *map(Path, args.pool)], args.dataset, lengths, args.methods, pairs)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = load_overrides(args.configs, args.methods)
    model, tok = kedit.load_model()
    path, chosen = select(args.dataset, tok, lengths[-1], per_domain=args.per_domain, start=args.start, n=args.n,
                          domain_start=args.domain_start)
    if not chosen:
        raise SystemExit(f"no {args.dataset} record has {lengths[-1]} answer tokens")
    print(f"{len(chosen)} records with >= {lengths[-1]} answer tokens: {[r.id for r in chosen]}", flush=True)
    for length in lengths:
        requests = _truncate(chosen, tok, length)
        folder = out / f"len{length}"
        for method in args.methods:
            start = time.perf_counter()
            summary = run_bench(model, tok, method=method, requests=requests, dataset=args.dataset, batch_size=1,
                                mode="independent", out_dir=folder / f"{args.dataset}-{method}",
                                config=overrides.get(method), data_path=path, progress=True, save_edits=False,
                                keep_pre_edit=True, resume=args.resume,
                                pre_edit_from=shared_pre_edit(folder, [f"{args.dataset}-{m}" for m in args.methods]))
            m = summary["metrics"]
            print(f"len {length:4d} {method:13s} BLEU {m['bleu']['original']:.3f} "
                  f"ROUGE-L r {m['rouge_l']['original']['recall']:.3f} sim {m['similarity']['original']:.3f} "
                  f"s/edit {summary['timing']['seconds_per_edit']:.1f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            report(out, [out, *map(Path, args.pool)], args.dataset, lengths, args.methods, pairs)


if __name__ == "__main__":
    main()
