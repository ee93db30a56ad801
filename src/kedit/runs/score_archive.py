"""Score-only copies of finished benchmark runs, small enough to keep beside the code.

A long-answer benchmark on a CPU runs for days, in slices, on whatever machine is free; a slice's
run directory is the only record of its hours, and it is easily lost.  Pooling and paired
comparisons need from each slice only its per-request scores and its timing (``summary.json``,
``metrics.json``), not the texts: the questions and reference answers are dataset text and belong
with the dataset, and the generated answers are a few kilobytes per request.  An archive keeps the
first and drops the rest; ``kedit pool`` reads it as it reads the run itself, except for the
corpus-level sacreBLEU, which needs the texts and is left empty.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from kedit.errors import DataError

__all__ = ["TEXT_KEYS", "strip_texts", "archive_run", "archive_runs", "is_run_dir"]

#: Keys whose values are question, reference or generated text (the long-answer cases; the fact
#: protocols' cases hold scores only).
TEXT_KEYS = frozenset({"question", "questions", "answers", "predictions"})
_REQUIRED = ("summary.json", "metrics.json")
_COPIED = ("manifest.json", "config.yaml")  # provenance: versions, CPU, data hash, argv; no text


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


def archive_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``run_dir``'s scores, timing and provenance to ``out_dir`` with every text removed.

    Raises ``DataError`` when ``run_dir`` is not a finished run (no ``summary.json`` or
    ``metrics.json``) or when ``out_dir`` is ``run_dir`` itself (the texts would be lost)."""
    src, dst = Path(run_dir), Path(out_dir)
    if not is_run_dir(src):
        missing = [name for name in _REQUIRED if not (src / name).is_file()]
        raise DataError(f"{src}: not a finished run ({', '.join(missing)} missing); resume it before archiving")
    if dst.resolve() == src.resolve():
        raise DataError(f"{dst}: the archive would overwrite the run it copies; choose another --out")
    dst.mkdir(parents=True, exist_ok=True)
    metrics = strip_texts(_read(src / "metrics.json"))
    metrics["texts"] = "removed (score archive); corpus sacreBLEU cannot be recomputed from it"
    for name, data in (("summary.json", strip_texts(_read(src / "summary.json"))), ("metrics.json", metrics)):
        (dst / name).write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    for name in _COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return dst


def archive_runs(source: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Archive ``source``: one run directory (into ``out_dir``), or a benchmark folder holding run
    directories (each into ``out_dir/<name>``, the layout ``kedit pool --runs`` expects).

    Unfinished run directories of a folder are skipped; raises ``DataError`` when nothing under
    ``source`` is a finished run."""
    src, dst = Path(source), Path(out_dir)
    if is_run_dir(src):
        return [archive_run(src, dst)]
    runs = sorted(p for p in src.iterdir() if p.is_dir() and is_run_dir(p)) if src.is_dir() else []
    if not runs:
        raise DataError(f"{src}: holds no finished run (a folder with summary.json and metrics.json, or a folder "
                        "of such folders)")
    return [archive_run(run, dst / run.name) for run in runs]
