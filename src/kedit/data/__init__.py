"""Benchmark data as ``EditRequest`` lists: one schema, one loader per dataset, validated at the door."""
from __future__ import annotations

from kedit.data.counterfact import load_counterfact
from kedit.data.loaders import DATASET_LOADERS, load_requests
from kedit.data.requests import EditRequest
from kedit.data.unstructured import load_akew_mquake, load_editeverything, load_unkebench
from kedit.data.zsre import load_zsre

__all__ = [
    "EditRequest",
    "load_counterfact",
    "load_zsre",
    "load_unkebench",
    "load_akew_mquake",
    "load_editeverything",
    "load_requests",
    "DATASET_LOADERS",
]
