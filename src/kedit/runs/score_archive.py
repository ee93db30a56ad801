"""Score-only copies of finished benchmark runs, small enough to keep beside the code.

A long-answer benchmark on a CPU runs for days, in slices, on whatever machine is free; a slice's
run directory is the only record of its hours, and it is easily lost.  Pooling and paired
comparisons need from each slice only its per-request scores and its timing (``summary.json``,
``metrics.json``), not the texts: the questions and reference answers are dataset text and belong
with the dataset, and the generated answers are a few kilobytes per request.  An archive keeps the
first and drops the rest; ``kedit pool`` reads it as it reads the run itself, except for the
corpus-level sacreBLEU, which needs the texts and is left empty.

Slices of one method accumulate: archiving a run into a folder that already holds an archive of the
same method, dataset and config adds its requests, so the kept copy of a benchmark is one folder per
block of records however the runs were cut (a run of 10 records today, 10 more on another machine).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from kedit.errors import DataError
from kedit.runs.run_dir import PRE_EDIT_FILE, write_json

__all__ = ["TEXT_KEYS", "strip_texts", "archive_run", "archive_runs", "is_run_dir"]

#: Keys whose values are question, reference or generated text (the long-answer cases; the fact
#: protocols' cases hold scores only).
TEXT_KEYS = frozenset({"question", "questions", "answers", "predictions"})
_REQUIRED = ("summary.json", "metrics.json")
SOURCES = "sources.json"  # the archived runs' manifests: versions, CPU, data hash, request ids, argv


def strip_texts(value: Any) -> Any:
    """``value`` with every :data:`TEXT_KEYS` entry of every nested dict removed (lists walked too)."""
    if isinstance(value, dict):
        return {k: strip_texts(v) for k, v in value.items() if k not in TEXT_KEYS}
    if isinstance(value, list):
        return [strip_texts(v) for v in value]
    return value


def is_run_dir(path: str | os.PathLike) -> bool:
    """A finished run: its summary and metrics are written (an interrupted run has neither)."""
    return all((Path(path) / name).is_file() for name in _REQUIRED)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); archive finished runs only") from None


def _sources(src: Path) -> list[dict[str, Any]]:
    """The provenance of what an archive holds: one run manifest per archived slice."""
    if (src / SOURCES).is_file():
        return _read(src / SOURCES)
    return [_read(src / "manifest.json")] if (src / "manifest.json").is_file() else []


def _tables(protocol: str, post: list[dict[str, Any]], pre: list[dict[str, Any]],
            seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``summary.json`` fields, ``metrics.json``) of the cases ``post``/``pre`` that took
    ``seconds`` of editing, recomputed as the runner computes them."""
    from kedit.runs import protocols
    from kedit.runs.protocols import _mean

    agg_post, agg_pre = protocols.aggregate(protocol, post), protocols.aggregate(protocol, pre) if pre else None
    summary = {"n": len(post), "metrics": protocols.headline(protocol, agg_post),
               "pre_metrics": protocols.headline(protocol, agg_pre) if agg_pre else None,
               "timing": {"seconds_per_edit": seconds / len(post), "edit_seconds_total": seconds},
               "fluency": {"pre": _mean(c.get("fluency") for c in pre), "post": _mean(c.get("fluency") for c in post),
                           "protocol": protocols.fluency_protocol(protocol)}}
    return summary, {"protocol": protocol, "post": agg_post, "pre": agg_pre, "cases": {"post": post, "pre": pre}}


def _merged(dst: Path, summary: dict[str, Any], metrics: dict[str, Any],
            sources: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The archive already in ``dst`` with ``summary``/``metrics`` added: the cases joined, the
    headline scores recomputed over them, the edit time summed (independent edits only)."""
    old_summary, old_metrics = _read(dst / "summary.json"), _read(dst / "metrics.json")
    old_sources = _sources(dst)
    mine = (summary.get("method"), metrics.get("protocol"), summary.get("mode"), summary.get("dataset"))
    theirs = (old_summary.get("method"), old_metrics.get("protocol"), old_summary.get("mode"), old_summary.get("dataset"))
    if mine != theirs or summary.get("mode") != "independent":
        raise DataError(f"{dst}: holds {theirs[0]} ({theirs[2]}, {theirs[3]}); cannot add {mine[0]} ({mine[2]}, "
                        f"{mine[3]}): only independent runs of one method and dataset accumulate")
    hashes = {m.get("config_hash") for m in old_sources + sources} - {None}
    if len(hashes) > 1:
        raise DataError(f"{dst}: its runs were made with config {sorted(hashes)[0]}, this one with another "
                        f"({sorted(hashes)}); archive runs of one config together")
    overlap = {c["id"] for c in old_metrics["cases"].get("post", [])} & {c["id"] for c in metrics["cases"].get("post", [])}
    if overlap:
        raise DataError(f"{dst}: already holds requests {sorted(map(str, overlap))[:5]}; archive disjoint slices")
    post, pre = (old_metrics["cases"].get(k, []) + metrics["cases"].get(k, []) for k in ("post", "pre"))
    both = (old_summary, summary)
    fields, tables = _tables(metrics["protocol"], post, pre,
                             sum(x["timing"]["edit_seconds_total"] for x in both))
    fields["timing"]["stats_seconds"] = sum(x["timing"].get("stats_seconds") or 0 for x in both)
    fields["memory"] = {"peak_rss_mb": max((x.get("memory") or {}).get("peak_rss_mb") or 0 for x in both)}
    merged = {k: v for k, v in old_summary.items() if k != "unfinished"}  # one run's count; sources.json lists each
    return {**merged, **fields}, {**old_metrics, **tables}, old_sources + sources


def _unfinished(src: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``summary.json`` / ``metrics.json`` of the requests an interrupted independent run finished,
    from its journal (each line carries its requests' scores) and its saved pre-edit scores."""
    from kedit.runs.checkpoint import journal_batches
    from kedit.runs.protocols import protocol_for

    if not (src / "manifest.json").is_file():
        raise DataError(f"{src}: not a run directory (no manifest.json)")
    manifest = _read(src / "manifest.json")
    if manifest.get("mode") != "independent":
        raise DataError(f"{src}: a {manifest.get('mode')} run; only independent runs keep per-request scores that "
                        "stand without the rest of the run")
    records = journal_batches(src / "journal.jsonl")
    post = [case for record in records for case in record["cases"]]
    if not post:
        raise DataError(f"{src}: no finished request in journal.jsonl yet; nothing to archive")
    ids = {case["id"] for case in post}
    saved = _read(src / PRE_EDIT_FILE) if (src / PRE_EDIT_FILE).is_file() else {}
    pre = [c for c in (saved.get("result") or {}).get("cases", []) if c["id"] in ids]
    # the pre-edit record names the protocol the run scored with (a run may override the dataset's)
    protocol = saved.get("protocol") or protocol_for(manifest["dataset"])
    fields, tables = _tables(protocol, post, pre, sum(record["seconds"] for record in records))
    summary = {"method": manifest.get("method"), "dataset": manifest["dataset"], "batch_size": manifest.get("batch_size"),
               "mode": "independent", **fields,
               "unfinished": f"{len(post)} of {len(manifest.get('request_ids') or [])} requests"}
    return summary, tables


def archive_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, unfinished: bool = False) -> Path:
    """Write ``run_dir``'s scores, timing and provenance to ``out_dir`` with every text removed.

    An ``out_dir`` that already holds an archive of the same method, dataset and config gains this
    run's requests (slices of one benchmark accumulate in one folder, however they were cut); its
    headline scores are recomputed over all requests.  ``sources.json`` lists every archived run's
    manifest (versions, CPU, data hash, request ids, command line).

    With ``unfinished``, a run that was stopped part-way is archived too: the requests its journal
    shows finished, with their pre-edit scores (``summary.json`` says how many of how many).  The
    rest can be edited later as a slice of their own (``--start``) and archived into the same folder.

    Raises ``DataError`` when ``run_dir`` is not a finished run (no ``summary.json`` or
    ``metrics.json``; with ``unfinished``: no finished request), when ``out_dir`` is ``run_dir``
    itself (the texts would be lost), and when the archive there holds another method, dataset or
    config or any of the same requests."""
    src, dst = Path(run_dir), Path(out_dir)
    if dst.resolve() == src.resolve():
        raise DataError(f"{dst}: the archive would overwrite the run it copies; choose another --out")
    if is_run_dir(src):
        summary, metrics = _read(src / "summary.json"), _read(src / "metrics.json")
    elif unfinished:
        summary, metrics = _unfinished(src)
    else:
        missing = [name for name in _REQUIRED if not (src / name).is_file()]
        raise DataError(f"{src}: not a finished run ({', '.join(missing)} missing); resume it before archiving, "
                        "or pass --unfinished to keep the requests it finished")
    summary, metrics = strip_texts(summary), strip_texts(metrics)
    sources = _sources(src)
    if is_run_dir(dst):
        summary, metrics, sources = _merged(dst, summary, metrics, sources)
    dst.mkdir(parents=True, exist_ok=True)
    metrics["texts"] = "removed (score archive); corpus sacreBLEU cannot be recomputed from it"
    # atomic: a kill mid-write must not cost an archive the slices it already holds
    for name, data in (("metrics.json", metrics), ("summary.json", summary), (SOURCES, sources)):
        write_json(dst / name, data, compact=True)
    if (src / "config.yaml").is_file():
        shutil.copyfile(src / "config.yaml", dst / "config.yaml")
    return dst


def _finished_any(path: Path) -> bool:
    """An interrupted run with at least one finished request."""
    from kedit.runs.checkpoint import journal_batches

    return (path / "manifest.json").is_file() and bool(journal_batches(path / "journal.jsonl"))


def archive_runs(source: str | os.PathLike, out_dir: str | os.PathLike, *, unfinished: bool = False) -> list[Path]:
    """Archive ``source``: one run directory (into ``out_dir``), or a benchmark folder holding run
    directories (each into ``out_dir/<name>``, the layout ``kedit pool --runs`` expects).

    Unfinished run directories of a folder are skipped, or with ``unfinished`` archived with the
    requests they finished (see :func:`archive_run`); raises ``DataError`` when nothing under
    ``source`` can be archived."""
    src, dst = Path(source), Path(out_dir)
    if is_run_dir(src) or (unfinished and _finished_any(src)):
        return [archive_run(src, dst, unfinished=unfinished)]
    children = sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    runs = [p for p in children if is_run_dir(p) or (unfinished and _finished_any(p))]
    if not runs:
        raise DataError(f"{src}: holds no finished run (a folder with summary.json and metrics.json, or a folder "
                        "of such folders)" + ("" if unfinished else "; --unfinished also takes interrupted runs"))
    return [archive_run(run, dst / run.name, unfinished=unfinished) for run in runs]
