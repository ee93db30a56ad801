"""The conformance battery (kedit.testing.checks) over every registered method × every tiny family.

Adding a method = one ``register_method`` line (+ optionally a ``CHEAP_CONFIGS`` entry); its whole
battery then runs here with ids like ``memit-llama-check_revert_bit_exact``.  Known bugs in the
library are marked ``xfail(strict=True)`` in ``KNOWN_BUGS`` so a fix turns them into a failure
that asks for the mark to be removed.
"""
from __future__ import annotations

import pytest
import torch

from kedit.methods import list_methods
from kedit.testing.checks import SkipCheck, iter_checks, write_tiny_corpus
from kedit.testing.tiny import TINY_FAMILIES, tiny_model

#: (method, check) → reason; applies to every family.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _params():
    out = []
    for spec in list_methods():
        for family in TINY_FAMILIES:
            for check_name, run in iter_checks(spec.name):
                marks = []
                reason = KNOWN_BUGS.get((spec.name, check_name))
                if reason:
                    marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError))
                out.append(pytest.param(family, run, id=f"{spec.name}-{family}-{check_name}", marks=marks))
    return out


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread (two threads fight under a shared 2-core load)."""


@pytest.fixture(scope="module")
def battery_dirs(tmp_path_factory):
    """(statistics cache root, tiny corpus) shared by the module: each family's E[kkᵀ] is measured once."""
    root = tmp_path_factory.mktemp("battery")
    return root / "cache", write_tiny_corpus(root / "corpus.txt")


@pytest.mark.parametrize("family, run", _params())
def test_battery(family, run, battery_dirs, track):
    cache_dir, corpus = battery_dirs
    model, tok = tiny_model(family)
    track(model)
    try:
        run(model, tok, cache_dir=cache_dir, corpus=corpus)
    except SkipCheck as exc:
        pytest.skip(str(exc))


def test_every_method_has_checks():
    """The battery is not empty for any method, and tags select checks (FT has no statistics checks)."""
    for spec in list_methods():
        names = [name for name, _ in iter_checks(spec.name)]
        assert "check_revert_bit_exact" in names, spec.name
        assert ("check_nan_stats" in names) == ("needs_stats" in spec.tags), spec.name


def test_check_method_passes_and_reports_declared_failures_as_skips(battery_dirs, track, monkeypatch):
    """A preset declaring ``expected_failures`` gets a skip with that reason, everything else passes."""
    from kedit.methods.memit import Memit, MemitConfig
    from kedit.methods.registry import METHODS, MethodSpec
    from kedit.testing.checks import SkippedCheckWarning, check_method

    spec = MethodSpec("memit-declared", MemitConfig, Memit, "test double", Memit.tags,
                      {"check_inf_stats": "inf statistics are not detected yet"})
    monkeypatch.setitem(METHODS, spec.name, spec)
    cache_dir, corpus = battery_dirs
    model, tok = tiny_model("llama")
    track(model)
    with pytest.warns(SkippedCheckWarning, match="Skipping check_inf_stats: memit-declared: inf statistics"):
        results = check_method(spec.name, model, tok, cache_dir=cache_dir, corpus=corpus)
    assert results.pop("check_inf_stats").startswith("skipped: ")
    assert set(results.values()) == {"passed"} and len(results) == 13


@pytest.mark.filterwarnings("ignore::kedit.testing.checks.SkippedCheckWarning")
def test_check_method_catches_a_method_that_breaks_the_contract(battery_dirs, monkeypatch):
    """A method that writes weights in compute and leaks a hook fails (b), (c), (g) with clear messages."""
    from kedit.methods.ft import FineTune, FTConfig
    from kedit.methods.registry import METHODS, MethodSpec
    from kedit.testing.checks import check_method

    class Leaky(FineTune):
        def compute(self, ctx, requests, state):
            deltas, state, info = super().compute(ctx, requests, state)
            with torch.no_grad():
                dict(ctx.model.named_parameters())[ctx.adapter.weight_name(1)].add_(1.0)
            ctx.model.get_submodule(ctx.adapter.layer(0)).register_forward_hook(lambda *a: None)
            return deltas, state, info

    spec = MethodSpec("leaky", FTConfig, Leaky, "test double", FineTune.tags, {})
    monkeypatch.setitem(METHODS, spec.name, spec)
    cache_dir, corpus = battery_dirs
    model, tok = tiny_model("gpt2")
    with pytest.raises(AssertionError) as info:
        check_method(spec.name, model, tok, cache_dir=cache_dir, corpus=corpus)
    message = str(info.value)
    assert "check_compute_leaves_model_unchanged: leaky: Editor.compute changed the model" in message
    assert "check_revert_bit_exact" in message
    assert "check_no_leftover_hooks: leaky: hooks left on ['transformer.h.0']" in message


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_duplicate_layers_are_rejected(method):
    from kedit.errors import ConfigError
    from kedit.methods import get_method

    with pytest.raises(ConfigError, match="layers"):
        get_method(method).config_cls(layers=[1, 1])
