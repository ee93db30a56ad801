"""The ``kedit`` command: methods, bench, pool, edit, demo, export, stats.

This is the only module that configures logging (a rich handler on stderr, INFO by default,
``kedit --quiet ...`` for warnings only).  Errors raised by kedit (``kedit.errors.*``) and missing
files are printed as one red line ``error: <message>`` with exit code 2, without a traceback.

Example:
    $ kedit demo
    $ kedit bench --method memit --data counterfact.json --n 100 --batch-size 10 --mode sequential --out runs/cf
"""
from __future__ import annotations

import enum
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from kedit.errors import ConfigError, DataError, LedgerError, NonFiniteError, UnsupportedModelError, param_message

__all__ = ["app", "main"]

log = logging.getLogger("kedit.cli")

app = typer.Typer(
    name="kedit",
    help="Knowledge editing for Hugging Face causal LMs (ROME, MEMIT, AlphaEdit, FT) with a reversible ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_HANDLED = (ConfigError, DataError, LedgerError, NonFiniteError, UnsupportedModelError, FileNotFoundError)


class Mode(str, enum.Enum):
    independent = "independent"
    sequential = "sequential"


class Dataset(str, enum.Enum):
    counterfact = "counterfact"
    zsre = "zsre"
    knowedit = "knowedit"
    unkebench = "unkebench"
    akew_mquake = "akew-mquake"
    editeverything = "editeverything"


class Protocol(str, enum.Enum):
    counterfact = "counterfact"
    zsre = "zsre"
    knowedit = "knowedit"
    unstructured = "unstructured"


# -- plumbing --------------------------------------------------------------------------------
def _stdout():
    from rich.console import Console

    return Console()


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _configure_logging(level: int) -> None:
    """A rich handler on the ``kedit`` logger (replacing the one a previous invocation added)."""
    from rich.logging import RichHandler

    logger = logging.getLogger("kedit")
    for handler in list(logger.handlers):
        if getattr(handler, "_kedit_cli", False):
            logger.removeHandler(handler)
    handler = RichHandler(console=_stderr(), show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    handler._kedit_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _handle_errors(fn):
    """Turn kedit's own errors into ``error: <message>`` (red, one line) and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _HANDLED as exc:
            from rich.text import Text

            message = " ".join(str(exc).split()) or type(exc).__name__
            _stderr().print(Text(f"error: {message}", style="red"), soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _read_config(path: Optional[Path], method: str) -> Optional[dict[str, Any]]:
    """The override dict of a ``--config`` YAML file, checked against ``method``'s config class."""
    import yaml

    from kedit.methods.registry import build_config, get_method

    get_method(method)  # unknown method -> ConfigError listing the known ones
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of {method} config keys. Got {type(data).__name__} instead.")
    try:
        build_config(method, data)  # unknown keys and bad values fail here, before the model loads
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data


def _load_model(model: Optional[str], cache_dir: Optional[Path]):
    from kedit.models.loading import load_model

    log.info("loading %s", model or "the embedded default model")
    if model is not None and not Path(model).expanduser().exists() and (
        os.path.isabs(model) or model.startswith(("./", "../", "~")) or model.count("/") > 1
    ):  # clearly a local path, not a hub id "namespace/name"
        raise FileNotFoundError(f"model folder {model!r} not found; pass a local checkpoint folder or a hub id")
    if model is not None:
        model = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
    try:
        return load_model(model, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        if isinstance(exc, _HANDLED):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"cannot load model {model!r}: {first}") from None


def _data_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found; pass the path of a JSON file with --data")
    return path


# Options shared by several commands.
_MODEL = typer.Option(None, "--model", help="Local checkpoint folder or hub id (default: embedded SmolLM2-135M-Instruct).")
_CONFIG = typer.Option(None, "--config", help="YAML file of method config overrides (nested keys merge field by field).")
_CACHE = typer.Option(None, "--cache-dir", help="kedit cache root (default $KEDIT_CACHE_DIR or ~/.cache/kedit).")
_METHOD = typer.Option("memit", "--method", "-m", help="Method preset (see `kedit methods`).")


@app.callback()
def main(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages too."),
) -> None:
    """Knowledge editing for Hugging Face causal LMs."""
    _configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


# -- commands --------------------------------------------------------------------------------
@app.command()
@_handle_errors
def methods(name: Optional[str] = typer.Argument(None, help="Show this preset's config fields.")) -> None:
    """List the method presets (or one preset's config fields)."""
    from rich.markup import escape
    from rich.table import Table

    from kedit.methods.registry import get_method, list_methods

    console = _stdout()
    if name is None:
        table = Table(title="method presets")
        table.add_column("name", style="bold")
        table.add_column("summary")
        table.add_column("tags")
        for spec in list_methods():
            table.add_row(spec.name, escape(spec.summary), ", ".join(sorted(spec.tags)))
        console.print(table)
        return
    spec = get_method(name)
    table = Table(title=f"{spec.name}: {spec.config_cls.__name__} (defaults before family adjustment)")
    table.add_column("key")
    table.add_column("default")
    table.add_column("help")
    for key, default, help_ in _config_fields(spec.config_cls):
        table.add_row(key, escape(repr(default)), escape(help_))
    console.print(table)


def _config_fields(cls, prefix: str = ""):
    import dataclasses

    from kedit.config import Config

    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if isinstance(value, Config):
            yield from _config_fields(type(value), prefix + f.name + ".")
        else:
            yield prefix + f.name, value, f.metadata.get("help", "")


@app.command()
@_handle_errors
def bench(
    method: str = _METHOD,
    data: Path = typer.Option(..., "--data", help="Dataset JSON file (CounterFact or zsRE layout)."),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", help="Dataset layout (picks the scoring protocol); guessed from the file's keys when omitted."),
    protocol: Optional[Protocol] = typer.Option(None, "--protocol", help="Override the dataset's scoring protocol (e.g. knowedit on zsRE records)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Number of records (default: all from --start)."),
    start: int = typer.Option(0, "--start", min=0, help="Index of the first record."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Requests per edit batch."),
    mode: Mode = typer.Option(Mode.independent, "--mode", help="independent: every batch from the original weights; sequential: accumulate."),
    out: Path = typer.Option(..., "--out", help="Run directory (summary.json, config.yaml, manifest.json, journal.jsonl)."),
    seed: int = typer.Option(0, "--seed", help="torch seed, recorded in the manifest."),
    model: Optional[str] = _MODEL,
    config: Optional[Path] = _CONFIG,
    cache_dir: Optional[Path] = _CACHE,
    save_edits: bool = typer.Option(True, "--save-edits/--no-save-edits", help="Sequential mode: save the accumulated edit set to OUT/edits."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0, help="Sequential mode: checkpoint OUT/checkpoint every N batches (0 = never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in OUT without losing or repeating an edit (sequential: from OUT/checkpoint; independent: the batches its journal finished)."),
    health: bool = typer.Option(False, "--health", help="Sequential mode: journal weight-norm growth, WikiText perplexity and (MEMIT family) the preservation loss D(t) per layer after every batch."),
    probe_every: int = typer.Option(0, "--probe-every", min=0, help="Sequential mode: run the GLUE/MMLU probes before editing and every N edits (0 = never)."),
    probe_n: int = typer.Option(100, "--probe-n", min=1, help="Items per probe task."),
    auto_stop: Optional[float] = typer.Option(None, "--auto-stop", min=0.0, help="Stop once the mean probe F1 falls below F x its pre-edit value (needs --probe-every)."),
    score_every: int = typer.Option(1, "--score-every", min=1, help="Sequential mode: score every K-th request before and after editing (all are edited)."),
    pre_edit_from: Optional[Path] = typer.Option(None, "--pre-edit-from", help="pre_edit.json (or run directory) of another run on the same records and model: reuse its pre-edit scores."),
) -> None:
    """Run edits in batches, evaluate them and write a run directory."""
    from kedit.data.loaders import detect_dataset, load_requests
    from kedit.runs import print_summary_table, run_bench

    overrides = _read_config(config, method)
    data = _data_file(data)
    name = dataset.value if dataset is not None else detect_dataset(data)
    if dataset is None:
        log.info("%s: detected dataset %r", data, name)
    requests = load_requests(name, data, n=n, start=start)
    if not requests:
        raise DataError(f"{data}: no records selected (start={start}, n={n})")
    loaded, tokenizer = _load_model(model, cache_dir)
    run_args = {"method": method, "data": str(data), "dataset": name, "protocol": protocol.value if protocol else None,
                "n": n, "start": start,
                "batch_size": batch_size, "mode": mode.value, "out": str(out), "seed": seed, "model": model,
                "config": str(config) if config else None, "config_overrides": overrides,
                "cache_dir": str(cache_dir) if cache_dir else None}
    summary = run_bench(loaded, tokenizer, method=method, requests=requests, dataset=name, batch_size=batch_size,
                        mode=mode.value, out_dir=out, config=overrides, seed=seed, data_path=data, progress=progress,
                        cache_dir=cache_dir, save_edits=save_edits, run_args=run_args, console=_stderr(),
                        checkpoint_every=checkpoint_every, resume=resume, health_every_batch=health,
                        probe_every=probe_every, probe_n=probe_n, auto_stop=auto_stop,
                        protocol=protocol.value if protocol is not None else None, score_every=score_every,
                        pre_edit_from=pre_edit_from)
    console = _stdout()
    print_summary_table(summary, console)
    console.print(f"Wrote {out}/summary.json")


@app.command()
@_handle_errors
def pool(
    slices: list[Path] = typer.Argument(..., help="Run directories of independent `kedit bench --start` slices, "
                                        "or (with --runs) benchmark folders holding one run directory per method."),
    out: Path = typer.Option(..., "--out", help="Folder for pooled.json, tables.md and the diagnostics figures."),
    runs: Optional[list[str]] = typer.Option(None, "--runs", help="Run directory name inside each slice folder (repeat: --runs unke --runs nake)."),
    pair: Optional[list[str]] = typer.Option(None, "--pair", help="A,B: compare run B against run A request by request (repeatable)."),
    title: str = typer.Option("pooled", "--title", help="First header cell of the markdown tables."),
) -> None:
    """Pool disjoint slices of an independent-edit benchmark into one table (and compare methods)."""
    from kedit.runs.pool_report import pool_report

    pairs = []
    for text in pair or []:
        names = [x.strip() for x in text.split(",")]
        if len(names) != 2 or not all(names):
            raise typer.BadParameter(f"--pair {text!r}: expected two run names as A,B")
        pairs.append((names[0], names[1]))
    report = pool_report(slices, out, runs=runs or None, pairs=pairs, title=title)
    typer.echo(report["files"]["tables"].read_text())  # unwrapped: the lines are markdown table rows
    _stdout().print(f"Wrote {out}/pooled.json and {out}/tables.md")


@app.command()
@_handle_errors
def archive(
    source: Path = typer.Argument(..., help="A finished run directory, or a benchmark folder of run directories."),
    out: Path = typer.Option(..., "--out", help="Folder for the score-only copy (same layout as SOURCE); an "
                             "archive already there of the same method and config gains the new requests."),
    unfinished: bool = typer.Option(False, "--unfinished", help="Also keep the requests an interrupted "
                                    "independent run finished (its journal's); edit the rest later as a new slice."),
) -> None:
    """Keep a run's per-request scores, timing and provenance without its texts (`kedit pool` reads it)."""
    from kedit.runs.score_archive import archive_runs

    written = archive_runs(source, out, unfinished=unfinished)
    _stdout().print(f"Archived {len(written)} run(s) into {out}: " + ", ".join(p.name for p in written))


@app.command()
@_handle_errors
def edit(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Template with '{}' for the subject, e.g. '{} plays the sport of'."),
    subject: str = typer.Option(..., "--subject", "-s", help="The subject that fills '{}'."),
    target: str = typer.Option(..., "--target", "-t", help="The new object."),
    target_true: Optional[str] = typer.Option(None, "--target-true", help="The current object (adds a probability comparison)."),
    probe: list[str] = typer.Option([], "--probe", help="Extra prompt to generate from before and after (repeatable)."),
    method: str = _METHOD,
    model: Optional[str] = _MODEL,
    config: Optional[Path] = _CONFIG,
    cache_dir: Optional[Path] = _CACHE,
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", min=1, help="Length of the greedy generations."),
    save: Optional[Path] = typer.Option(None, "--save", help="Save the edit set to this folder (for `kedit export`)."),
) -> None:
    """Edit one fact and show greedy generations before and after."""
    from rich.markup import escape
    from rich.table import Table

    from kedit.data.requests import EditRequest
    from kedit.editor import Editor
    from kedit.eval import candidate_nll, greedy_generate
    from kedit.ledger import save_edit_set

    overrides = _read_config(config, method)
    if "{}" not in prompt and subject in prompt:
        request = EditRequest.from_text(prompt, subject, target, target_true=target_true, id="cli")
    else:
        request = EditRequest(prompt, subject, target, target_true=target_true, id="cli")
    loaded, tokenizer = _load_model(model, cache_dir)
    editor = Editor(loaded, tokenizer, method, overrides, cache_dir=cache_dir, progress=True)
    prompts = [request.text, *probe]
    candidates = [(request.text, target)] + ([(request.text, target_true)] if target_true else [])

    def probabilities() -> list[float]:
        import math

        return [math.exp(-v) for v in candidate_nll(loaded, tokenizer, candidates)]

    before = greedy_generate(loaded, tokenizer, prompts, max_new_tokens=max_new_tokens)
    p_before = probabilities()
    t0 = time.perf_counter()
    edit_set = editor.edit([request])
    seconds = time.perf_counter() - t0
    after = greedy_generate(loaded, tokenizer, prompts, max_new_tokens=max_new_tokens)
    p_after = probabilities()

    console = _stdout()
    table = Table(title=f"{method}: {escape(request.text)} -> {escape(target)}", show_lines=True)
    table.add_column("prompt")
    table.add_column("before")
    table.add_column("after")
    for p, b, a in zip(prompts, before, after):
        table.add_row(escape(p), escape(" ".join(b.split())), escape(" ".join(a.split())))
    console.print(table)
    for (text, cand), pb, pa in zip(candidates, p_before, p_after):
        console.print(f"P({escape(cand)!s} | prompt) per token: {pb:.4f} -> {pa:.4f}")
    console.print(f"Edited {len(edit_set.deltas)} tensor(s) in {seconds:.1f} s.")
    if save is not None:
        path = save_edit_set(edit_set, save)
        console.print(f"Saved the edit set to {path}")


@app.command()
@_handle_errors
def demo(
    method: str = _METHOD,
    model: Optional[str] = _MODEL,
    config: Optional[Path] = _CONFIG,
    cache_dir: Optional[Path] = _CACHE,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for demo.json (generations, metrics, timings)."),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", min=1, help="Length of the greedy generations."),
) -> None:
    """Four invented counterfactual edits on the embedded model: generations, metrics, revert."""
    from kedit.runs import run_demo

    overrides = _read_config(config, method)
    loaded, tokenizer = _load_model(model, cache_dir)
    result = run_demo(loaded, tokenizer, method=method, out=out, config=overrides, cache_dir=cache_dir,
                      max_new_tokens=max_new_tokens, console=_stdout())
    if not result["reverted_identical"]:
        raise LedgerError("the weights after revert differ from the original weights")


def _edit_set_dirs(path: Path) -> list[Path]:
    from kedit.ledger.io import DELTAS_FILE

    if not path.is_dir():
        raise FileNotFoundError(f"edit set folder {str(path)!r} not found")
    if (path / DELTAS_FILE).is_file():
        return [path]
    if (path / "edits" / DELTAS_FILE).is_file():  # a bench run directory
        return [path / "edits"]
    found = sorted(p for p in path.iterdir() if (p / DELTAS_FILE).is_file())
    if not found:
        raise FileNotFoundError(
            f"{path}: no edit set found (a folder with {DELTAS_FILE} and manifest.json, or folders of them)"
        )
    return found


@app.command()
@_handle_errors
def export(
    edits: Path = typer.Option(..., "--edits", help="Edit set folder (or a folder of them, applied in name order)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write (loadable by plain transformers)."),
    model: Optional[str] = _MODEL,
    cache_dir: Optional[Path] = _CACHE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Apply saved edit sets to the base model and write an edited checkpoint."""
    from kedit.ledger import Ledger, export_checkpoint, load_edit_set

    edit_sets = [load_edit_set(p) for p in _edit_set_dirs(edits)]
    if out.exists() and not overwrite:
        raise LedgerError(f"{out} already exists; pass --overwrite or choose another folder")
    loaded, tokenizer = _load_model(model, cache_dir)
    ledger = Ledger(loaded)
    for i, edit_set in enumerate(edit_sets):
        ledger.apply(edit_set, batch=i, check_fingerprint=i == 0)
    path = export_checkpoint(loaded, tokenizer, out, edit_sets=ledger.history, overwrite=overwrite)
    n_requests = sum(len(e.requests) for e in edit_sets)
    _stdout().print(f"Wrote {path}: {len(edit_sets)} edit set(s), {n_requests} request(s), "
                    f"{len(ledger.touched)} tensor(s) changed.")


def _parse_layers(text: str, n_layers: int) -> list[int]:
    layers: list[int] = []
    try:
        for part in text.replace(" ", ",").split(","):
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise ConfigError(param_message("--layers", "kedit stats", "layer indices like '4,5,6' or '4-8'", text)) from None
    if not layers or any(not 0 <= x < n_layers for x in layers):
        raise ConfigError(param_message("--layers", "kedit stats", f"layer indices in [0, {n_layers - 1}]", text))
    return sorted(set(layers))


@app.command()
@_handle_errors
def stats(
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers, e.g. '4,5,6' or '4-8' (default: the method's)."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Text file or folder (default: the method config's, else WikiText-2 test)."),
    token_budget: Optional[int] = typer.Option(None, "--token-budget", min=1, help="Tokens read (default: the method config's)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=2, help="Packed row length (default: the method config's)."),
    method: str = _METHOD,
    model: Optional[str] = _MODEL,
    config: Optional[Path] = _CONFIG,
    cache_dir: Optional[Path] = _CACHE,
) -> None:
    """Precompute key statistics (E[kk^T]) into the cache, so later edits start at once."""
    from rich.table import Table

    from kedit.methods.base import StatsConfig
    from kedit.methods.registry import build_config
    from kedit.models.adapters import get_adapter, num_layers
    from kedit.models.fingerprint import weights_fingerprint
    from kedit.stats.cache import StatsCache

    overrides = _read_config(config, method)
    if corpus is not None and not corpus.exists():
        raise FileNotFoundError(f"corpus {str(corpus)!r} not found")
    loaded, tokenizer = _load_model(model, cache_dir)
    adapter = get_adapter(loaded)
    total = num_layers(loaded, adapter)
    cfg = build_config(method, overrides, model_type=adapter.model_type, n_layers=total)
    stats_cfg = getattr(cfg, "stats", None)
    if layers is not None:
        chosen = _parse_layers(layers, total)
    elif hasattr(cfg, "layers"):
        chosen = list(cfg.layers)
    elif stats_cfg is not None and hasattr(cfg, "layer"):
        chosen = [cfg.layer]
    else:
        raise ConfigError(f"method {method!r} uses no key statistics; pass --layers to compute them anyway")
    stats_cfg = stats_cfg or StatsConfig()
    changes = {k: v for k, v in (("corpus", str(corpus) if corpus else None), ("token_budget", token_budget),
                                 ("seq_len", seq_len)) if v is not None}
    stats_cfg = stats_cfg.replace(**changes)
    cache = StatsCache(loaded, tokenizer, adapter, weights_fingerprint(loaded), corpus=stats_cfg.corpus or None,
                       token_budget=stats_cfg.token_budget, seq_len=stats_cfg.seq_len, cache_dir=cache_dir,
                       progress=True)
    t0 = time.perf_counter()
    cache.ensure(chosen)
    seconds = time.perf_counter() - t0
    table = Table(title=f"key statistics ({seconds:.1f} s; corpus {cache.corpus})")
    table.add_column("layer", justify="right")
    table.add_column("module")
    table.add_column("tokens", justify="right")
    table.add_column("cache file")
    for layer in chosen:
        table.add_row(str(layer), adapter.mlp_out_name(layer), str(cache.tokens_used.get(layer, "?")),
                      str(cache.path(layer)))
    _stdout().print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
