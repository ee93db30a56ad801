"""``kedit demo``: a few counterfactual edits on the embedded model, shown end to end.

The four requests below were written for this demo (they are not taken from any dataset): each
rewrites one well-known fact, and carries the true object, one paraphrase and one neighbouring fact
that must not change.  The demo prints greedy generations before and after the edit, CounterFact-style
metrics before and after, then reverts the edit and checks that the weights are bit-identical to the
original ones.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from kedit.data.requests import EditRequest

__all__ = ["run_demo", "DEMO_REQUESTS"]

log = logging.getLogger(__name__)

DEMO_REQUESTS: tuple[EditRequest, ...] = (
    EditRequest(
        prompt="{} is located in the city of", subject="The Eiffel Tower", target_new="Rome", target_true="Paris",
        rephrases=("The Eiffel Tower, the famous iron landmark, stands in the city of",),
        locality=(("The Louvre museum is located in the city of", "Paris"),),
        id="demo-eiffel",
    ),
    EditRequest(
        prompt="The native language of {} is", subject="Albert Einstein", target_new="Spanish", target_true="German",
        rephrases=("Albert Einstein grew up speaking his mother tongue,",),
        locality=(("The native language of Victor Hugo is", "French"),),
        id="demo-einstein",
    ),
    EditRequest(
        prompt="{} plays the sport of", subject="Serena Williams", target_new="cricket", target_true="tennis",
        rephrases=("Serena Williams became famous as a professional player of",),
        locality=(("Lionel Messi plays the sport of", "football"),),
        id="demo-serena",
    ),
    EditRequest(
        prompt="The CEO of {} is", subject="Apple", target_new="Bill Gates", target_true="Tim Cook",
        rephrases=("The chief executive officer of Apple is",),
        locality=(("The CEO of Tesla is", "Elon Musk"),),
        id="demo-apple",
    ),
)

_HEADLINE = ("efficacy", "generalization", "specificity", "score")


def _probes(requests) -> list[tuple[str, str, str]]:
    """(request id, kind, prompt): the prompt, one rephrase and the neighbour of every request."""
    rows = []
    for r in requests:
        rows.append((str(r.id), "prompt", r.text))
        if r.rephrases:
            rows.append((str(r.id), "rephrase", r.rephrases[0]))
        if r.locality:
            rows.append((str(r.id), "neighbour", r.locality[0][0]))
    return rows


def _clean(text: str) -> str:
    return " ".join(text.split())


def run_demo(
    model=None,
    tokenizer=None,
    *,
    method: str = "memit",
    out: str | os.PathLike | None = None,
    config: Any = None,
    cache_dir: str | os.PathLike | None = None,
    requests=None,
    max_new_tokens: int = 20,
    console=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Edit four invented counterfacts into ``model``, show the effect, then revert.

    Args:
        model, tokenizer: default: the embedded SmolLM2-135M-Instruct (``kedit.load_model()``).
        method: the preset (``kedit methods``); ``config``: None (family defaults), a dict or a config.
        out: optional folder; ``demo.json`` (generations, metrics, timings) is written there.
        cache_dir: kedit cache root (statistics).
        requests: other requests to demonstrate (default :data:`DEMO_REQUESTS`).
        max_new_tokens: length of the greedy generations.
        console: a ``rich.console.Console`` (default: a new one on stdout).

    Returns:
        ``{"method", "requests", "generations": [{id, kind, prompt, before, after}], "metrics": {"pre",
        "post"}, "cases": {"pre", "post"}, "timing": {...}, "fingerprints": {...}, "reverted_identical"}``.

    Example:
        >>> from kedit.testing.tiny import tiny_model
        >>> result = run_demo(*tiny_model("llama"), config={"stats": {"token_budget": 500}})  # doctest: +SKIP
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    from kedit.editor import Editor
    from kedit.eval import evaluate_counterfact, greedy_generate
    from kedit.models.fingerprint import weights_fingerprint
    from kedit.runs.report import format_fraction

    console = console or Console()
    requests = list(requests or DEMO_REQUESTS)
    if model is None or tokenizer is None:
        from kedit.models.loading import load_model

        with console.status("loading the embedded model"):
            model, tokenizer = load_model(cache_dir=cache_dir)
    timing: dict[str, float] = {}

    editor = Editor(model, tokenizer, method, config, cache_dir=cache_dir, progress=progress)
    name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    edits = Table(show_header=True, box=None)
    for col in ("subject", "prompt", "old", "new"):
        edits.add_column(col)
    for r in requests:
        edits.add_row(escape(r.subject or ""), escape(r.prompt), escape(r.target_true or "-"),
                      f"[green]{escape(r.target_new)}[/green]")
    console.print(Panel(edits, title=f"kedit demo: {method} on {name}", subtitle="counterfacts written for this demo"))

    probes = _probes(requests)
    prompts = [p for _, _, p in probes]
    t0 = time.perf_counter()
    with console.status("greedy generations before the edit"):
        before = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    timing["generate_seconds"] = time.perf_counter() - t0
    with console.status("pre-edit metrics"), torch.no_grad():
        pre = evaluate_counterfact(model, tokenizer, requests)

    t0 = time.perf_counter()
    console.print("Preparing statistics (cached after the first run) ...")
    editor.prepare()
    timing["stats_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with console.status(f"computing and applying the {method} edit ({len(requests)} requests)"):
        edit_set = editor.edit(requests)
    timing["edit_seconds"] = time.perf_counter() - t0
    edited_fingerprint = editor.ledger.fingerprint()
    delta_norms = {k: float(v.norm()) for k, v in editor.ledger.current_delta().items()}
    console.print(f"Edited {len(delta_norms)} tensor(s) in {timing['edit_seconds']:.1f} s "
                  f"(statistics {timing['stats_seconds']:.1f} s).")

    with console.status("greedy generations after the edit"):
        after = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    with console.status("post-edit metrics"), torch.no_grad():
        post = evaluate_counterfact(model, tokenizer, requests)

    gens = Table(title="greedy generations", show_lines=True)
    for col, kw in (("edit", {}), ("kind", {}), ("prompt", {"ratio": 2}), ("before", {"ratio": 3}),
                    ("after", {"ratio": 3})):
        gens.add_column(col, **kw)
    generations = []
    for (rid, kind, prompt), b, a in zip(probes, before, after):
        generations.append({"id": rid, "kind": kind, "prompt": prompt, "before": b, "after": a})
        shown = escape(_clean(a))
        gens.add_row(escape(rid), kind, escape(prompt), escape(_clean(b)), shown if a == b else f"[yellow]{shown}[/yellow]")
    console.print(gens)

    metrics = Table(title="CounterFact-style metrics (%; probability comparison)")
    metrics.add_column("metric")
    metrics.add_column("before", justify="right")
    metrics.add_column("after", justify="right")
    for key in _HEADLINE:
        metrics.add_row(key, format_fraction(pre["metrics"].get(key)), format_fraction(post["metrics"].get(key)))
    console.print(metrics)
    per_case = Table(title="per edit (efficacy / generalization / specificity, before -> after)")
    per_case.add_column("edit")
    for key in _HEADLINE[:3]:
        per_case.add_column(key, justify="center")
    for c0, c1 in zip(pre["cases"], post["cases"]):
        per_case.add_row(escape(str(c0["id"])), *(f"{format_fraction(c0[k])} -> {format_fraction(c1[k])}" for k in _HEADLINE[:3]))
    console.print(per_case)

    with console.status("reverting"):
        editor.revert()
        restored = weights_fingerprint(model)
    identical = restored == editor.ledger.base_fingerprint
    verdict = ("[green]bit-identical to the original weights[/green]" if identical
               else "[red]DIFFERENT from the original weights[/red]")
    console.print(Panel(
        f"original  {editor.ledger.base_fingerprint}\nedited    {edited_fingerprint}\nreverted  {restored}\n"
        f"After revert the model is {verdict}.",
        title="revert check (SHA-256 over every weight)",
    ))

    result = {
        "method": method,
        "model": name,
        "config": editor.config.to_dict(),
        "requests": [r.to_dict() for r in requests],
        "generations": generations,
        "metrics": {"pre": pre["metrics"], "post": post["metrics"]},
        "cases": {"pre": pre["cases"], "post": post["cases"]},
        "timing": timing,
        "edit_info": {k: v for k, v in edit_set.meta.items() if k != "seconds"},
        "delta_norms": delta_norms,
        "fingerprints": {"original": editor.ledger.base_fingerprint, "edited": edited_fingerprint,
                         "reverted": restored},
        "reverted_identical": identical,
    }
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "demo.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        console.print(f"Wrote {folder / 'demo.json'}")
    return result
