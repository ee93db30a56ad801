"""RECT and PRUNE: the post-update regularisers, by hand and on a tiny sequential run."""
from __future__ import annotations

import math

import pytest
import torch

import kedit
from kedit.stages.regularisers import prune_restrain, rect_sparsify
from kedit.testing.checks import cheap_config, tiny_requests, write_tiny_corpus
from kedit.testing.tiny import tiny_model


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread."""


def test_rect_keeps_the_largest_relative_changes():
    W = torch.tensor([[1.0, 10.0], [0.5, 2.0], [4.0, 1.0]])
    delta = torch.tensor([[0.5, 0.5], [0.5, 0.1], [0.4, -0.3]])
    # relative: [[0.5, 0.05], [1.0, 0.05], [0.1, 0.3]] → top 40 % of 6 = 2 entries: 1.0 and 0.5
    kept = rect_sparsify(delta, W, 0.4)
    assert torch.equal(kept, torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.0]]))
    assert torch.equal(rect_sparsify(delta, W, 1.0), delta)


def test_prune_compresses_only_singular_values_above_the_weight_norm():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    W0 = U[:, :4] @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ V.T  # σ_max = 3
    sig = torch.tensor([20.0, 5.0, 2.0, 0.1], dtype=torch.float64)
    delta = U[:, :4] @ torch.diag(sig) @ V.T
    out = torch.linalg.svdvals(prune_restrain(delta, W0))
    expected = torch.tensor([math.log(20 / 3) + 3, math.log(5 / 3) + 3, 2.0, 0.1], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-9)
    small = 0.1 * delta / 20
    assert torch.allclose(prune_restrain(small, W0), small, atol=1e-12)


@pytest.mark.parametrize("quirk", [False, True])
def test_prune_finalize_writes_w0_plus_restrained_update(tmp_path, quirk):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    model, tok = tiny_model("llama")
    config = {**cheap_config("prune", corpus), "prune_reference_quirk": quirk, "mom2_update_weight": 1e-3}
    editor = kedit.Editor(model, tok, "prune", config, cache_dir=tmp_path / "cache")
    name = editor.adapter.weight_name(editor.config.layers[0])
    W0 = dict(model.named_parameters())[name].detach().clone().double()
    for r in tiny_requests():
        editor.edit([r])
    W_now = dict(model.named_parameters())[name].detach().clone().double()
    editor.finalize()
    W_final = dict(model.named_parameters())[name].detach().double()
    restrained = prune_restrain(W_now - W0, W0)  # llama: out_in layout, no transpose
    expected = (W_now if quirk else W0) + restrained
    assert torch.allclose(W_final, expected, atol=1e-5)
    editor.revert()
    assert torch.equal(dict(model.named_parameters())[name].detach().double(), W0)
