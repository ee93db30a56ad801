"""Set-up shared by the CounterFact comparison benchmarks (core_quality.py, lyaplock.py)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import kedit
from kedit.data import load_counterfact
from kedit.methods.base import ValueCache
from kedit.paths import data_dir


class CounterFactRun(NamedTuple):
    out: Path
    model: object
    tokenizer: object
    data: Path
    requests: list
    cache: ValueCache


def counterfact_run(out: str | Path, n: int) -> CounterFactRun:
    """The output folder (created), the embedded model, the first ``n`` CounterFact requests and one
    ValueCache, so value targets optimised on the unedited weights are shared by every run of the script."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = kedit.load_model()
    data = data_dir() / "counterfact" / "counterfact-edit.json"
    return CounterFactRun(out, model, tok, data, load_counterfact(data, n=n), ValueCache())
