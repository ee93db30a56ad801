"""The score archives kept in ``bench/scores``: no question, reference or generated text in them (the
dataset stays in ../shared), and each pools to the request count its summary states."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kedit.runs.pooling import pool_runs
from kedit.runs.score_archive import TEXT_KEYS

KEPT = Path(__file__).resolve().parents[1] / "bench" / "scores"
ARCHIVES = sorted(p.parent for p in KEPT.rglob("summary.json"))


@pytest.mark.skipif(not ARCHIVES, reason="no score archive kept yet")
@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda p: str(p.relative_to(KEPT)))
def test_kept_archive_holds_scores_only_and_pools(archive, nested_keys):
    metrics = json.loads((archive / "metrics.json").read_text(encoding="utf-8"))
    summary = json.loads((archive / "summary.json").read_text(encoding="utf-8"))
    assert not TEXT_KEYS & nested_keys(metrics) and not TEXT_KEYS & nested_keys(summary)
    pooled = pool_runs([archive])
    assert pooled["n"] == summary["n"] == len({c["id"] for c in metrics["cases"]["post"]})
    assert pooled["metrics"]["bleu"] == summary["metrics"]["bleu"]
