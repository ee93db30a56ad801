"""Long-answer editing on the embedded model: UnKE, AnyEdit, AnyEdit*, μKE, μKE*, Matryoshka-vanilla
(independent edits, batch 1) on UnKEBench and EditEverything — BLEU / ROUGE-L / similarity for
original and paraphrased questions, seconds per edit, and score against answer length (μKE
Figure 5).

    python bench/long_form.py --n 100 --per-domain 5 --out bench/results/long_form

Edits are independent: tables over disjoint slices (``--start``, ``--domain-start``) pool exactly.
Answers longer than --max-answer-tokens are cut (CPU budget; the reference edits them whole).
The unedited model is scored once per dataset: later methods read the first one's ``pre_edit.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml

import kedit
from kedit.data.unstructured import load_editeverything, load_unkebench
from kedit.paths import data_dir
from kedit.runs.length_plots import length_series, plot_score_by_length
from kedit.runs.run_dir import shared_pre_edit
from kedit.runs.runner import run_bench

METHODS = ("unke", "anyedit", "anyedit_unke", "muke", "muke_unke", "muke_vanilla")


def _truncate(requests, tok, max_tokens: int):
    out = []
    for r in requests:
        ids = tok(r.target_new, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            r = dataclasses.replace(r, target_new=tok.decode(ids[:max_tokens]).strip())
        out.append(r)
    return out


def _per_domain(requests, k: int, skip: int = 0):
    """Records ``skip .. skip+k`` of each domain, in file order."""
    seen: dict[str, int] = {}
    out = []
    for r in requests:
        index = seen[r.domain] = seen.get(r.domain, 0) + 1
        if skip < index <= skip + k:
            out.append(r)
    return out


def load_overrides(configs: str, methods) -> dict[str, dict]:
    """``<configs>/<method>.yaml`` for each method that has one ('' = class defaults for all)."""
    overrides = {}
    for method in methods if configs else ():
        path = Path(configs) / f"{method}.yaml"
        if path.exists():
            overrides[method] = yaml.safe_load(path.read_text())
    return overrides


def plot_length(cases_by_method: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    """BLEU of the original question against answer length (bins of 20 tokens), one line per method."""
    series = {m: length_series(points, bin_width=20) for m, points in cases_by_method.items()}
    return plot_score_by_length(series, path, xlabel="answer length (tokens, bins of 20)")


def siblings(out: Path, dataset: str, methods) -> list[str]:
    """Run folders of ``dataset`` in ``out``: this call's methods first, then any earlier call's, so a
    method added later reads the unedited scores back instead of generating them again."""
    mine = [f"{dataset}-{m}" for m in methods]
    return mine + sorted(p.name for p in out.glob(f"{dataset}-*") if p.is_dir() and p.name not in mine)


def earlier_runs(path: Path, slice_: dict) -> dict[str, dict]:
    """The runs of an earlier ``table.json`` of the same slice, so a later (or concurrent) call with
    other ``--methods`` adds rows instead of replacing the table (another slice starts a new table)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if any(earlier.get(k) != v for k, v in slice_.items()):
        return {}
    return dict(earlier.get("runs", {}))


def answer_lengths(requests, tok) -> dict:
    """Answer tokens of each request, by id (the x axis of the length figure)."""
    return {r.id: len(tok(r.target_new, add_special_tokens=False)["input_ids"]) for r in requests}


def _length_points(metrics: Path, lengths: dict) -> list[tuple[int, float]]:
    cases = json.loads(metrics.read_text())["cases"]["post"]
    return [(lengths[c["id"]], c["original"]["bleu"]) for c in cases if c["id"] in lengths]


def bleu_by_length(out: Path, datasets: dict, table: dict, tok) -> dict[str, list[tuple[int, float]]]:
    """(answer tokens, original-question BLEU) per edited request, per method in ``table``."""
    points: dict[str, list[tuple[int, float]]] = {}
    lengths = {name: answer_lengths(requests, tok) for name, (_, requests) in datasets.items()}
    for key in table:
        name, method = key.split(":", 1)
        metrics = out / f"{name}-{method}" / "metrics.json"
        if name in datasets and metrics.is_file():
            points.setdefault(method, []).extend(_length_points(metrics, lengths[name]))
    return points


DATASETS = {"unkebench": (("unke", "final_data_v2.json"), load_unkebench),
            "editeverything": (("editeverything", "editevery.json"), load_editeverything)}


def slice_bleu_by_length(slices, tok, max_answer_tokens: int) -> dict[str, list[tuple[int, float]]]:
    """:func:`bleu_by_length` over every ``<dataset>-<method>`` run of ``slices`` (slice folders of
    this script, or their ``kedit archive`` copies), the answers cut as the runs cut them."""
    points: dict[str, list[tuple[int, float]]] = {}
    lengths: dict[str, dict] = {}
    folders = sorted({p.name for s in map(Path, slices) for p in s.iterdir() if p.is_dir()})
    for folder in folders:
        name, _, method = folder.partition("-")
        if name not in DATASETS:
            continue
        if name not in lengths:
            parts, load = DATASETS[name]
            lengths[name] = answer_lengths(_truncate(load(data_dir().joinpath(*parts)), tok, max_answer_tokens), tok)
        for s in map(Path, slices):
            if (s / folder / "metrics.json").is_file():
                points.setdefault(method, []).extend(_length_points(s / folder / "metrics.json", lengths[name]))
    return points


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="UnKEBench records (from --start; 0 = skip).")
    ap.add_argument("--start", type=int, default=0, help="First UnKEBench record.")
    ap.add_argument("--per-domain", type=int, default=5, help="EditEverything records per domain (0 = skip).")
    ap.add_argument("--domain-start", type=int, default=0,
                    help="Skip this many EditEverything records of each domain first.")
    ap.add_argument("--max-answer-tokens", type=int, default=128)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--configs", default=str(Path(__file__).parent / "configs" / "smollm2"),
                    help="Folder of <method>.yaml overrides ('' = class defaults).")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default).")
    ap.add_argument("--out", default="bench/results/long_form")
    ap.add_argument("--resume", action="store_true",
                    help="Continue killed runs in --out: finished requests are read back, not edited again.")
    ap.add_argument("--plot-from", nargs="+", metavar="SLICE",
                    help="Edit nothing: draw --out/bleu_vs_length.png from these slice folders (or their archives).")
    args = ap.parse_args()
    if args.plot_from:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        points = slice_bleu_by_length(args.plot_from, kedit.load_model()[1], args.max_answer_tokens)
        if not points:
            ap.error(f"--plot-from: no <dataset>-<method> runs in {args.plot_from}")
        print(plot_length(points, Path(args.out) / "bleu_vs_length.png"), {m: len(p) for m, p in points.items()})
        return
    if not args.n and not args.per_domain:
        ap.error("nothing to edit: --n and --per-domain are both 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = load_overrides(args.configs, args.methods)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = kedit.load_model()
    datasets = {}
    if args.n:
        path = data_dir() / "unke" / "final_data_v2.json"
        datasets["unkebench"] = (path, _truncate(load_unkebench(path, n=args.n, start=args.start), tok,
                                                 args.max_answer_tokens))
    if args.per_domain:
        path = data_dir() / "editeverything" / "editevery.json"
        chosen = _per_domain(load_editeverything(path), args.per_domain, skip=args.domain_start)
        datasets["editeverything"] = (path, _truncate(chosen, tok, args.max_answer_tokens))
    slice_ = {"max_answer_tokens": args.max_answer_tokens, "n": args.n, "start": args.start,
              "per_domain": args.per_domain, "domain_start": args.domain_start}
    mine: dict[str, dict] = {}
    table = earlier_runs(out / "table.json", slice_)
    for name, (path, requests) in datasets.items():
        for method in args.methods:
            start = time.perf_counter()
            run_dir = out / f"{name}-{method}"
            summary = run_bench(model, tok, method=method, requests=requests, dataset=name, batch_size=1,
                                mode="independent", out_dir=run_dir, config=overrides.get(method), data_path=path,
                                progress=True, save_edits=False, keep_pre_edit=True, resume=args.resume,
                                pre_edit_from=shared_pre_edit(out, siblings(out, name, args.methods)))
            mine[f"{name}:{method}"] = {"metrics": summary["metrics"], "pre_metrics": summary["pre_metrics"],
                                         "timing": summary["timing"], "wall_seconds": time.perf_counter() - start,
                                         "n": len(requests)}
            table = {**earlier_runs(out / "table.json", slice_), **mine}  # read again: another process may add rows
            (out / "table.json").write_text(json.dumps({**slice_, "runs": table}, indent=1))
            m = summary["metrics"]
            print(f"{name:15s} {method:13s} BLEU {m['bleu']['original']:.3f}/{m['bleu']['paraphrase'] or 0:.3f} "
                  f"ROUGE-L r {m['rouge_l']['original']['recall']:.3f} sim {m['similarity']['original']:.3f} "
                  f"s/edit {summary['timing']['seconds_per_edit']:.1f}", flush=True)
    plot_length(bleu_by_length(out, datasets, table, tok), out / "bleu_vs_length.png")


if __name__ == "__main__":
    main()
