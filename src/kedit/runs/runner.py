"""The benchmark runner: edit a stream of batches, score them, and write a reproducible run directory.

Protocols (spec/metrics.md):

* ``independent``: every batch starts from the original weights (fresh method state, edit, score that
  batch's requests, revert) — the numbers of batch-editing tables;
* ``sequential``: batches accumulate on the same weights and every request is scored **once, after the
  last batch**, on the final model (AlphaEdit/LyapLock).

Pre-edit metrics are measured once on the unedited model before the first edit; for zsRE a
:class:`~kedit.eval.PreEditCache` keeps locality compared against the ORIGINAL model even in
sequential runs (EasyEdit issue #643).

The run directory holds ``summary.json``, ``config.yaml`` (the fully resolved method config),
``manifest.json`` (versions, seed, data sha256, weights fingerprint, arguments), ``journal.jsonl`` (one
line per batch), ``metrics.json`` (full metric dicts and per-case results) and, for sequential runs,
``edits/`` (the accumulated edit set, readable by :func:`~kedit.ledger.load_edit_set`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from kedit.data.requests import EditRequest, check_requests
from kedit.errors import ConfigError, param_message
from kedit.runs import memory, protocols, run_dir
from kedit.runs.protocols import DATASETS

__all__ = ["run_bench", "MODES", "DATASETS", "headline_metrics"]

log = logging.getLogger(__name__)

MODES = ("independent", "sequential")


# -- small helpers ---------------------------------------------------------------------------
def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def headline_metrics(dataset: str, metrics: dict[str, Any], protocol: str | None = None) -> dict[str, Any]:
    """The headline numbers of an evaluator's metric dict for ``dataset`` (see ``runs.protocols``)."""
    return protocols.headline(protocols.protocol_for(dataset, protocol), metrics)


def _mean_fluency(cases: list[dict[str, Any]]) -> float | None:
    return _mean(c.get("fluency") for c in cases)


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _git_hash() -> str | None:
    """The commit of the kedit source checkout (dev builds only), else None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    import kedit

    out: dict[str, str | None] = {"kedit": kedit.__version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "safetensors", "numpy", "tokenizers", "accelerate"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonable(value: Any) -> Any:
    """``value`` with tensors turned into lists, so journal lines always serialise."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _check_args(requests, dataset: str, batch_size: int, mode: str) -> list[EditRequest]:
    if mode not in MODES:
        raise ConfigError(param_message("mode", "run_bench", f"one of {list(MODES)}", mode))
    protocols.protocol_for(dataset)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(param_message("batch_size", "run_bench", "a positive int", batch_size))
    return check_requests(requests, "run_bench", hint=" (check --n/--start and the data file)")


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=not enabled, transient=False)


# -- the runner ------------------------------------------------------------------------------
def run_bench(
    model,
    tokenizer,
    *,
    method: str,
    requests: Sequence[EditRequest],
    dataset: str,
    batch_size: int,
    mode: str,
    out_dir: str | os.PathLike,
    config: Any = None,
    seed: int = 0,
    data_path: str | os.PathLike | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    save_edits: bool = True,
    run_args: dict[str, Any] | None = None,
    console=None,
    checkpoint_every: int = 0,
    resume: bool = False,
    value_cache=None,
    health_every_batch: bool = False,
    probe_every: int = 0,
    probe_n: int = 100,
    auto_stop: float | None = None,
    protocol: str | None = None,
    pre_edit_from: str | os.PathLike | None = None,
    score_every: int = 1,
    keep_pre_edit: bool = False,
) -> dict[str, Any]:
    """Edit ``requests`` in batches with ``method``, score them and write the run directory ``out_dir``.

    Args:
        model, tokenizer: the model to edit (its weights are restored bit for bit before returning).
        method: preset name (``kedit methods``); ``config``: None, an override dict or a config instance.
        requests: the edit requests, in order; batches are consecutive slices of ``batch_size``.
        dataset: one of ``runs.protocols.DATASETS``; it picks the scoring protocol (counterfact:
            probability comparison, zsre: token accuracy, knowedit: KnowEdit metrics, long-answer
            datasets: generated-answer BLEU / ROUGE-L / similarity).
        mode: ``"independent"`` (every batch from the original weights) or ``"sequential"`` (accumulate,
            score once after the last batch).
        out_dir: run directory (created; existing run files in it are overwritten).
        seed: ``torch.manual_seed`` at the start, recorded in the manifest.
        data_path: the data file, hashed (sha256) into the manifest.
        save_edits: in sequential mode, save the accumulated edit set to ``out_dir/edits``.
        run_args: extra arguments to record in the manifest (the CLI passes its options).
        console: rich console for the progress bar (default: rich's global console).
        checkpoint_every: sequential mode: write ``out_dir/checkpoint`` atomically every this many batches
            (0 = never).
        resume: continue a killed run — no edit is lost or repeated.  Sequential mode: from
            ``out_dir/checkpoint``; the final weights equal an uninterrupted run's bit for bit.
            Independent mode: the batches whose journal lines an earlier process finished are read
            back (their per-request scores travel in the line) and not edited again; the tables equal
            an uninterrupted run's.  No checkpoint is needed; a run directory of another run is refused.
        value_cache: a :class:`~kedit.methods.base.ValueCache` shared across runs on the same model
            (value targets already optimised on the same weights are reused).
        health_every_batch: sequential mode: after every batch record ``health`` in the journal line
            (weight-norm growth ‖W‖/‖W₀‖ of the edited weights, perplexity of a fixed WikiText probe and,
            for methods with ``layers`` and ``stats``, the preservation loss D(t) per layer;
            :class:`~kedit.eval.health.HealthMonitor`, :class:`~kedit.eval.health.PreservationLoss`).
        probe_every: sequential mode: run the general-capability probes (spec/metrics.md §5) before
            editing and whenever the edit count crosses a multiple of this (0 = never); the summary
            gets ``probes: {pre, final}`` and the run directory ``probes.png``.
        probe_n: items per probe task.
        auto_stop: sequential mode, with probes: stop editing once the mean probe F1 falls below
            this fraction of its pre-edit value; the final evaluation then covers the edits made so
            far and the summary records ``auto_stopped_at_batch``.
        protocol: override the dataset's scoring protocol (e.g. ``"knowedit"`` on zsRE records).
        pre_edit_from: the ``pre_edit.json`` (or run directory) of another run on the same requests and
            base weights, e.g. another method of one comparison: its pre-edit scores and probes are
            used instead of measuring them again (ignored, with a warning, if they do not match).
        keep_pre_edit: write ``pre_edit.json`` into the run directory for the next method of a
            comparison to start from (always done by checkpointing sequential runs, for their resume).
        score_every: sequential mode: score every this many-th request (``requests[::score_every]``),
            before and after editing; every request is still edited.  For very long streams, where
            scoring all 10,000 requests twice would take longer than editing them.

    Returns:
        The summary written to ``summary.json``: ``{method, dataset, n, batch_size, mode, metrics,
        pre_metrics, timing: {seconds_per_edit, edit_seconds_total, stats_seconds}, stats, memory}``;
        metric values are fractions in [0, 1] (or None where no request has the prompts for them).
        ``memory`` (:func:`~kedit.runs.memory.memory_summary`) is the peak RSS over every process of
        the run and the RSS growth per 1,000 edits, from the ``memory_mb`` of each journal line.

    Example:
        >>> summary = run_bench(model, tok, method="memit", requests=reqs, dataset="counterfact",
        ...                     batch_size=2, mode="sequential", out_dir="runs/demo")  # doctest: +SKIP
    """
    from kedit.editor import Editor
    from kedit.ledger import save_edit_set

    requests = _check_args(requests, dataset, batch_size, mode)
    scored = _scored(requests, mode, score_every)
    scoring = protocols.protocol_for(dataset, protocol)

    def _evaluate(requests_, pre_, bar: bool = False):
        return protocols.evaluate(scoring, model, tokenizer, requests_, pre_, progress=progress and bar)

    def _headline(metrics):
        return protocols.headline(scoring, metrics)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    editor = Editor(model, tokenizer, method, config, cache_dir=cache_dir, progress=progress, value_cache=value_cache)
    editor.ledger.keep_deltas = mode != "sequential"  # memory flat in the number of batches
    batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]
    manifest = _manifest(editor, model, seed, data_path, dataset, mode, batch_size, requests, run_args)
    finished: list[dict[str, Any]] = []
    if resume and mode == "independent":
        from kedit.runs.checkpoint import finished_batches

        finished = finished_batches(out, manifest, [[r.id for r in b] for b in batches])
    editor.config.to_yaml(out / "config.yaml")
    run_dir.write_json(out / "manifest.json", manifest)
    log.info("%s on %d %s request(s): batch size %d, %s mode -> %s", method, len(requests), dataset, batch_size,
             mode, out)

    start = time.perf_counter()
    editor.prepare()
    stats_seconds = time.perf_counter() - start
    log.info("statistics and projections ready in %.1f s", stats_seconds)

    keep_pre = keep_pre_edit or (mode == "sequential" and bool(checkpoint_every))
    sources = [out / run_dir.PRE_EDIT_FILE] if resume else []
    if pre_edit_from is not None:
        if not run_dir.pre_edit_file(pre_edit_from).is_file():
            raise ConfigError(f"run_bench: pre_edit_from={str(pre_edit_from)!r} is neither a {run_dir.PRE_EDIT_FILE} "
                              f"file nor a run directory holding one.")
        sources.append(Path(pre_edit_from))
    pre, pre_result, saved_probes = _pre_edit(out, scoring, editor, model, tokenizer, scored, _evaluate,
                                              sources=sources, keep=keep_pre, probe_n=probe_n)
    log.info("pre-edit: %s", _fmt(_headline(pre_result["metrics"])))

    monitor = _health_monitor(editor, model, tokenizer, mode, health_every_batch, probe_every, probe_n, auto_stop,
                              saved_probes)
    if keep_pre and saved_probes is None and monitor is not None and monitor.pre_probes is not None:
        run_dir.add_pre_probes(out, _jsonable(monitor.pre_probes), probe_n)
    journal_path = out / "journal.jsonl"
    edit_seconds = 0.0
    post_cases: list[dict[str, Any]] = []
    merged = None
    batch_metas: list[dict[str, Any]] = []
    first_batch = 0
    if resume and mode == "independent":
        first_batch = len(finished)
        edit_seconds = sum(float(r["seconds"]) for r in finished)
        post_cases = [case for r in finished for case in r["cases"]]
        journal_path.write_text("", encoding="utf-8")
        for record in finished:  # the finished lines, without whatever the kill cut off after them
            _append_journal(journal_path, record)
        log.info("resuming %s at batch %d/%d", out, first_batch + 1, len(batches))
    elif resume:
        from kedit.ledger import EditSet
        from kedit.runs.checkpoint import load_checkpoint

        record = load_checkpoint(out, editor)
        first_batch, edit_seconds = int(record["next_batch"]), float(record["edit_seconds"])
        lines = journal_path.read_text(encoding="utf-8").splitlines(keepends=True) if journal_path.exists() else []
        journal_path.write_text("".join(lines[: int(record["journal_lines"])]), encoding="utf-8")
        if editor.ledger.history:
            merged = EditSet(editor.ledger.current_delta(), editor.spec.name, editor.config.to_dict(),
                             tuple(requests[: first_batch * batch_size]), editor.ledger.base_fingerprint)
        log.info("resuming %s at batch %d/%d", out, first_batch + 1, len(batches))
        if monitor is not None:
            monitor.last_edits = min(first_batch * batch_size, len(requests))
    else:
        journal_path.write_text("", encoding="utf-8")
    done_requests = requests  # the requests edited (fewer when auto-stopped)
    stopped_at: int | None = None
    last_health: dict[str, Any] | None = None
    final_probes = None
    try:
        with _progress(console, progress) as bar:
            task = bar.add_task(f"{method} ({mode})", total=len(batches), completed=first_batch)
            for index, batch in enumerate(batches):
                if index < first_batch:
                    continue
                if mode == "independent":
                    editor.reset_state()
                t0 = time.perf_counter()
                edit_set = editor.edit(batch)
                seconds = time.perf_counter() - t0
                edit_seconds += seconds
                record: dict[str, Any] = {
                    "batch": index,
                    "request_ids": edit_set.request_ids(),
                    "n_requests": len(batch),
                    "seconds": round(seconds, 6),
                    "compute_seconds": edit_set.meta.get("seconds"),
                    "method": edit_set.method,
                    "tensors": list(edit_set.names()),
                    "info": _jsonable({k: v for k, v in edit_set.meta.items() if k != "seconds"}),
                    "memory_mb": memory.snapshot(),
                }
                if mode == "independent":
                    t1 = time.perf_counter()
                    with torch.no_grad():
                        result = _evaluate(batch, pre)
                    editor.revert()
                    post_cases.extend(result["cases"])
                    record["eval_seconds"] = round(time.perf_counter() - t1, 6)
                    record["metrics"] = _headline(result["metrics"])
                    record["cases"] = _jsonable(result["cases"])  # what a resume reads back
                else:
                    batch_metas.append({"batch": index, **edit_set.meta})
                    merged = edit_set if merged is None else merged.merge(edit_set)
                    if monitor is not None:
                        edits_so_far = min((index + 1) * batch_size, len(requests))
                        last_health = monitor.check(index, edits_so_far)
                        if monitor.per_batch or "probes" in last_health:
                            record["health"] = _jsonable(last_health)
                        if monitor.should_stop(last_health):
                            log.warning("auto-stop after batch %d (%d edits): mean probe F1 %.3f < %.2f x "
                                        "pre-edit %.3f",
                                        index + 1, edits_so_far, last_health["probe_mean_f1"], monitor.stop_below,
                                        monitor.pre_mean_f1())
                            record["auto_stopped"] = True
                            stopped_at, done_requests = index, requests[:edits_so_far]
                _append_journal(journal_path, record)
                log.info("batch %d/%d: %d edit(s) in %.2f s", index + 1, len(batches), len(batch), seconds)
                if stopped_at is not None:
                    break
                if mode == "sequential" and checkpoint_every and (index + 1) % checkpoint_every == 0:
                    from kedit.runs.checkpoint import save_checkpoint

                    save_checkpoint(out, editor, next_batch=index + 1, progress={
                        "edit_seconds": edit_seconds, "journal_lines": index + 1})
                bar.advance(task)

        if mode == "sequential":
            t0 = time.perf_counter()
            final = editor.finalize()
            if final is not None:
                finalize_seconds = time.perf_counter() - t0
                edit_seconds += finalize_seconds
                merged = merged.merge(final)
                batch_metas.append({"finalize": True})
                _journal_finalize(journal_path, final, finalize_seconds, monitor, len(batches),
                                  len(done_requests))
            t1 = time.perf_counter()
            scored_done = scored[: -(-len(done_requests) // score_every)]  # requests[::k] of the edited prefix
            with torch.no_grad():
                result = _evaluate(scored_done, pre, bar=True)
            post_cases = result["cases"]
            log.info("evaluated %d request(s) on the final model in %.1f s", len(scored_done),
                     time.perf_counter() - t1)
            if monitor is not None and monitor.probe_data is not None:
                if final is None and last_health is not None and "probes" in last_health:
                    final_probes = monitor.last_probes  # the last batch was a probe point on these weights
                else:
                    final_probes = monitor.run_probes()
            if save_edits and merged is not None:
                from kedit.ledger import EditSet

                flat = EditSet(merged.deltas, merged.method, merged.config, merged.requests, merged.base_fingerprint,
                               meta={"mode": "sequential", "batches": batch_metas})
                path = save_edit_set(flat, out / "edits", overwrite=True)
                log.info("saved the accumulated edit set to %s", path)
    finally:
        if editor.ledger.history:  # leave the caller's model as it came
            editor.revert()

    # Sequential: one evaluation of every request; independent: per-batch cases pooled.
    post_metrics = result["metrics"] if mode == "sequential" else protocols.aggregate(scoring, post_cases)
    stats_cfg = getattr(editor.config, "stats", None)
    stats_report = editor.ctx.stats(stats_cfg).report() if stats_cfg is not None else {}
    summary = {
        "method": method,
        "dataset": dataset,
        "n": len(requests),
        **({"score_every": score_every, "n_scored": len(post_cases)} if score_every != 1 else {}),
        "batch_size": batch_size,
        "mode": mode,
        "metrics": _headline(post_metrics),
        "pre_metrics": _headline(pre_result["metrics"]),
        "timing": {
            "seconds_per_edit": edit_seconds / len(done_requests),
            "edit_seconds_total": edit_seconds,
            "stats_seconds": stats_seconds,
        },
        "stats": _jsonable(stats_report),
        "fluency": {"pre": _mean_fluency(pre_result["cases"]), "post": _mean_fluency(post_cases),
                    "protocol": protocols.fluency_protocol(scoring)},
    }
    run_dir.write_json(out / "metrics.json", {
        "protocol": scoring, "pre": pre_result["metrics"], "post": post_metrics,
        "cases": {"pre": pre_result["cases"], "post": post_cases},
    })
    from kedit.runs.plots import budget_summary, memory_series, plot_budget

    memory_used = memory.memory_summary(memory_series(journal_path))
    if memory_used is not None:
        summary["memory"] = memory_used
    if mode == "sequential":
        _plot_retention(summary["method"], post_cases, out)
    budget = budget_summary(journal_path) if mode == "sequential" else None
    if budget is not None:
        summary["lyaplock"] = budget
        plot_budget(journal_path, out / "preservation_loss.png")
    if monitor is not None:
        _health_summary(summary, monitor, final_probes, journal_path, out, stopped_at, done_requests,
                        len(post_cases), scoring, pre_result)
    run_dir.write_json(out / run_dir.SUMMARY_FILE, summary)
    log.info("post-edit: %s", _fmt(summary["metrics"]))
    return summary


def _plot_retention(method: str, post_cases: list[dict], out: Path) -> None:
    """Sequential runs: ``retention.png``, the headline per-case score in ten groups of stream
    position — early edits overwritten by later ones show as a curve rising to the right
    (:func:`kedit.runs.retention.retention_series` gives the numbers)."""
    from kedit.runs.retention import plot_retention

    metric = next((m for m in ("efficacy", "edit_succ") if any(c.get(m) is not None for c in post_cases)), None)
    if metric is not None:
        plot_retention({method: out}, out / "retention.png", metric=metric)


def _scored(requests: list[EditRequest], mode: str, score_every: int) -> list[EditRequest]:
    """The requests scored before and after editing: every ``score_every``-th one (a prefix of them
    is exactly the scored part of any edited prefix, so an auto-stopped run stays comparable)."""
    if not isinstance(score_every, int) or isinstance(score_every, bool) or score_every < 1:
        raise ConfigError(param_message("score_every", "run_bench", "an int >= 1", score_every))
    if score_every != 1 and mode != "sequential":
        raise ConfigError(f"run_bench: score_every={score_every} applies to sequential runs only (independent "
                          "batches are scored as they are edited).")
    return requests[::score_every]


def _pre_edit(out: Path, scoring: str, editor, model, tokenizer, requests, evaluate, *, sources: list[Path],
              keep: bool, probe_n: int):
    """The pre-edit scores, the locality cache where the protocol needs one, and the pre-edit probe
    results when they were measured with ``probe_n`` items (else None).

    Read from the first of ``sources`` (``pre_edit.json`` files or run directories) that was measured
    on the same protocol, requests and base weights (:mod:`kedit.runs.run_dir`); measured otherwise.
    A checkpointing run (``keep``) keeps them in its own directory for a later resume.
    """
    from kedit.eval import PreEditCache

    key = run_dir.pre_edit_key(scoring, [r.id for r in requests], editor.ledger.base_fingerprint)
    for source in sources:
        saved = run_dir.read_pre_edit(source, key)
        if saved is not None:
            if keep and Path(source).resolve() != (out / run_dir.PRE_EDIT_FILE).resolve():
                run_dir.write_pre_edit(out, key, saved["cache"], saved["result"], saved.get("probes"))
            cache = PreEditCache.from_json(saved["cache"]) if saved["cache"] is not None else None
            return cache, saved["result"], run_dir.pre_probe_results(saved, probe_n)
    log.info("scoring %d request(s) on the unedited model", len(requests))
    with torch.no_grad():
        cache = PreEditCache.build(model, tokenizer, requests) if protocols.needs_pre_cache(scoring) else None
        result = evaluate(requests, cache, bar=True)  # locality against the cache is 1 by construction
    if keep:
        run_dir.write_pre_edit(out, key, cache.to_json() if cache is not None else None, result)
    return cache, result, None


def _journal_finalize(journal_path: Path, final, seconds: float, monitor, n_batches: int, edits: int) -> None:
    """One journal line for the end-of-stream correction (PRUNE's restraint), with the health after
    it, so D(t) and the weight norms have a point on the weights that are actually evaluated.  It
    edits no request (``n_requests`` 0), so the edit counts of the plots stay as they were."""
    record: dict[str, Any] = {"batch": n_batches, "finalize": True, "n_requests": 0, "request_ids": [],
                              "seconds": round(seconds, 6), "method": final.method, "tensors": list(final.names())}
    if monitor is not None and monitor.per_batch:
        record["health"] = _jsonable(monitor.check(n_batches, edits))
    _append_journal(journal_path, record)


def _append_journal(journal_path: Path, record: dict[str, Any]) -> None:
    with open(journal_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def _health_monitor(editor, model, tokenizer, mode: str, health_every_batch: bool, probe_every: int, probe_n: int,
                    auto_stop: float | None, pre_probes: dict[str, Any] | None = None):
    """The run's :class:`~kedit.eval.health.HealthMonitor` (None when health monitoring is off)."""
    if not isinstance(probe_every, int) or isinstance(probe_every, bool) or probe_every < 0:
        raise ConfigError(param_message("probe_every", "run_bench", "an int >= 0", probe_every))
    if not isinstance(probe_n, int) or isinstance(probe_n, bool) or probe_n < 1:
        raise ConfigError(param_message("probe_n", "run_bench", "a positive int", probe_n))
    if auto_stop is not None and probe_every == 0:
        raise ConfigError(f"run_bench: auto_stop={auto_stop!r} compares the probes with their pre-edit scores; "
                          "set probe_every > 0 as well.")
    if not (health_every_batch or probe_every or auto_stop is not None):
        return None
    if mode != "sequential":
        raise ConfigError("run_bench: health monitoring (health_every_batch, probe_every, auto_stop) applies to "
                          f"sequential runs only. Got mode={mode!r}.")
    from kedit.eval.health import HealthMonitor, PreservationLoss

    cfg = editor.config
    layers = list(cfg.layers) if hasattr(cfg, "layers") else [cfg.layer] if hasattr(cfg, "layer") else []
    names = [editor.adapter.weight_name(layer) for layer in layers]
    preservation = PreservationLoss.for_editor(editor) if health_every_batch else None
    return HealthMonitor(model, tokenizer, layers_weight_names=names, probe_every=probe_every, probe_n=probe_n,
                         stop_below=auto_stop, per_batch=health_every_batch, preservation=preservation,
                         pre_probes=pre_probes)


def _health_summary(summary, monitor, final_probes, journal_path: Path, out: Path, stopped_at, done_requests,
                    n_scored: int, scoring: str, pre_result) -> None:
    """Add the health monitor's results to ``summary`` (and ``probes.png`` to the run directory)."""
    from kedit.eval.probes import compact
    from kedit.runs.plots import plot_probes

    summary["health"] = _jsonable(monitor.summary())
    if monitor.pre_probes is not None:
        summary["probes"] = _jsonable({"pre": monitor.pre_probes, "final": final_probes})
        plot_probes(journal_path, out / "probes.png", pre=compact(monitor.pre_probes))
    if stopped_at is not None:
        summary["auto_stopped_at_batch"] = stopped_at
        summary["n_edited"] = len(done_requests)
        # pre-edit metrics over the same requests as the post-edit ones
        pre_cases = pre_result["cases"][:n_scored]
        summary["pre_metrics"] = protocols.headline(scoring, protocols.aggregate(scoring, pre_cases))


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _cpu() -> dict[str, str]:
    """The processor and the kernel set torch dispatches to on it: long-answer edits can sit on an edge
    where AVX2 and AVX-512 kernels' rounding flips the greedy answer, so a result names its CPU."""
    name = platform.processor()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")) or name
    except (OSError, StopIteration):
        pass
    return {"model": name, "torch_capability": torch.backends.cpu.get_cpu_capability()}


def _manifest(editor, model, seed, data_path, dataset, mode, batch_size, requests, run_args) -> dict[str, Any]:
    import kedit

    config = getattr(model, "config", None)
    data = None
    if data_path is not None:
        data = {"path": str(Path(data_path).resolve()), "sha256": _sha256(data_path)}
    return {
        "format": "kedit.run",
        "kedit_version": kedit.__version__,
        "git_hash": _git_hash(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "platform": platform.platform(),
        "cpu": _cpu(),
        "torch_threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
        "seed": seed,
        "data": data,
        "dataset": dataset,
        "n": len(requests),
        "request_ids": [r.id for r in requests],
        "mode": mode,
        "batch_size": batch_size,
        "method": editor.spec.name,
        "config_hash": editor.config.config_hash(),
        "model": {
            "name_or_path": str(getattr(config, "name_or_path", "") or getattr(model, "name_or_path", "")),
            "model_type": getattr(config, "model_type", None),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "weights_fingerprint": editor.ledger.base_fingerprint,
        },
        "argv": list(sys.argv),
        "args": _jsonable(dict(run_args or {})),
    }
