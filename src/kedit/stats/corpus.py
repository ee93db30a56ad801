"""Text corpora for layer statistics: a file or a folder of ``.txt``/``.raw`` files."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from kedit.errors import DataError
from kedit.paths import data_dir

__all__ = ["default_corpus", "read_corpus", "corpus_digest"]


def default_corpus() -> Path:
    """The WikiText-2 test file in the shared data folder."""
    return data_dir() / "wikitext" / "wiki.test.raw"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".txt", ".raw", ".md"})
        if not files:
            raise DataError(f"{path}: corpus folder holds no .txt/.raw/.md files")
        return files
    if not path.exists():
        raise DataError(f"{path}: corpus file not found (pass --corpus FILE_OR_FOLDER)")
    return [path]


def read_corpus(path: str | Path) -> Iterator[str]:
    """Yield non-empty paragraphs (lines), with CR stripped (the WikiText copy uses CRLF)."""
    for file in _files(Path(path)):
        with open(file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.replace("\r", "").strip()
                if line:
                    yield line


def corpus_digest(path: str | Path) -> str:
    """Content hash of the corpus files (names excluded, so a moved copy reuses the cache)."""
    h = hashlib.sha256()
    for file in _files(Path(path)):
        h.update(file.read_bytes())
    return h.hexdigest()[:16]
