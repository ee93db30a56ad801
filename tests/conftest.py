"""Shared fixtures: data folder discovery, hook-leak guard (STYLE.md H2), offline hub."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from kedit.paths import data_dir


@pytest.fixture(scope="session")
def shared_data():
    """The benchmark data folder ($KEDIT_DATA_DIR or ../shared/data); skip when absent."""
    path = data_dir()
    if not path.exists():
        pytest.skip(f"benchmark data folder not found at {path} (set KEDIT_DATA_DIR)")
    return path


_TRACKED: list[torch.nn.Module] = []


@pytest.fixture
def track():
    """Register a model so the autouse guard checks it for leaked hooks after the test."""

    def add(model):
        _TRACKED.append(model)
        return model

    return add


@pytest.fixture(autouse=True)
def no_leaked_hooks():
    yield
    leaked = []
    for model in _TRACKED:
        for name, module in model.named_modules():
            if module._forward_hooks or module._forward_pre_hooks:
                leaked.append(name)
    _TRACKED.clear()
    assert not leaked, f"forward hooks left on modules: {leaked[:5]}"


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model tests on one thread; restores the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def all_cores():
    """The embedded model uses every core (unit-test modules drop to one thread for tiny models)."""
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm():
    """The embedded default model (session scoped; loading is < 1 s after the first conversion)."""
    from kedit.models.loading import load_model

    torch.manual_seed(0)
    return load_model()


def _nested_keys(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _nested_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _nested_keys(v)


@pytest.fixture(scope="session")
def nested_keys():
    """``nested_keys(value)``: the set of dict keys anywhere in a JSON-like value (lists walked too)."""
    return lambda value: set(_nested_keys(value))
