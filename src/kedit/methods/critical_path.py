"""Critical-path contrastive editing preset (PAC: Zhai et al., ACL 2025; spec/methods.md §11).

Locator = critical transmission paths (the top-``topk`` key and value FFN nodes of every layer by
impact on the edit loss, PAC eq. 6, re-assessed every ``eta`` epochs); writer = masked contrastive
gradient updates (PAC eq. 7: CE of the new target on T⁺, λ·CE of the original prediction on the
bottom-``bottomk`` nodes T⁻).  The math lives in :mod:`kedit.stages.critical_path`.

Two ways to run it:

* ``Editor(model, tok, "critical_path").edit(batch)`` — our "consecutive editing": one pass over a
  stream of batches, each batch trained for up to ``epochs`` passes and applied before the next;
* :func:`train_consecutive` — the reference code's protocol (spec §11): multi-epoch training over the
  whole request set (batch 2, shuffled, scores re-assessed every ``eta`` epochs, 11–15 epochs).

Example:
    >>> from kedit import Editor
    >>> from kedit.testing.tiny import tiny_model
    >>> from kedit.testing.checks import tiny_requests
    >>> model, tok = tiny_model("llama")
    >>> editor = Editor(model, tok, "critical_path", {"epochs": 2, "topk": 2})
    >>> sorted(editor.edit(tiny_requests()[:1]).deltas)[0]
    'model.layers.0.mlp.down_proj.weight'
    >>> editor.revert()
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from kedit.config import Config, field
from kedit.data.requests import EditRequest, check_requests
from kedit.errors import ConfigError, param_message
from kedit.methods.base import EditMethod
from kedit.methods.registry import build_config, register_method
from kedit.models.adapters import get_adapter, num_layers
from kedit.stages.critical_path import NodeScores, PathOptions, PathPacking, PathSelection, pack_paths, train_paths

__all__ = ["CriticalPathConfig", "CriticalPath", "ConsecutiveResult", "train_consecutive"]

SCORES = ("paper", "reference")
CONTRASTIVE = ("joint", "alternating")


@dataclasses.dataclass(frozen=True)
class CriticalPathConfig(Config):
    """Critical-path contrastive editing (PAC).  Paper defaults; reference-code variants as options.

    Args:
        layers: layers whose FFN nodes are ranked and edited; [] = every layer (PAC: all layers).
        topk: |T⁺| per layer, separately for key and value nodes (PAC: 15).
        bottomk: |T⁻| per layer, the negative path (PAC: 1).
        lam: λ of eq. 7, weight of the contrastive term (PAC: 0.1; 0 disables it).  Under Adam any λ > 0
            gives nearly the same edit: T⁻ rows see only λ·∇L(y), and Adam's step is invariant to a
            constant gradient scale (up to ε, nodes moving between T⁻ and T⁺, a shared output bias).
            What λ > 0 buys is that T⁻ moves at all; the paper's λ sweep needs an unnormalised optimiser.
        lr: Adam learning rate.  The reference uses 1e-5 for 7B models over 11–15 epochs of a 3K set
            (every edit is stepped only ~12 times there, as part of 1.5K mini-batches per epoch).  Measured
            on SmolLM2-135M-Instruct (zsRE, one request per compute, paper defaults otherwise): the target
            CE falls below 0.05 and the answer flips after ~30 steps at 1e-4, ~11 at 3e-4, ~6 at 1e-3,
            ~4 at 5e-3.  3e-4 edits within a dozen steps while keeping each step small (Adam moves an
            entry by at most ~lr per step).  At the reference's 1e-5 the target CE only falls from 3.4 to 1.7
            (6.3 to 4.5) in 30 steps and neither answer flips.
        betas: Adam (β1, β2); weight decay is 0 as in the reference.
        epochs: passes over the requests per ``compute`` (each pass = one step per mini-batch).
        eta: re-assess the impact scores every ``eta`` epochs, from epoch 0 (PAC/reference: 2).
        batch_size: mini-batch size of the updates and of the reference score (reference: 2).
        score: "paper" (per-edit |θ·∇θL| summed per node, eq. 6) or "reference" (summed raw gradients,
            z-scored per input dimension).
        contrastive: "joint" (one objective, eq. 7: ∇L(y*) on T⁺ and ∇λL(y) on T⁻ in one step) or
            "alternating" (reference: an Adam step on T⁺, then one on T⁻).
        include_gate: also pack the gate projection's neuron slice into the key node (reference: frozen).
        out_bias: also train the whole MLP output bias where one exists (reference code for GPT-J; it is
            not a node parameter in the paper, and it makes the delta dense in that bias).
        early_stop_loss: skip the step of a mini-batch whose target CE is below this; stop after an epoch
            without steps (0 = always run ``epochs``; the reference has no early stop).
        shuffle: reshuffle the mini-batches every epoch (reference: yes).
        seed: seed of the shuffling (a private generator; the global RNG is untouched).
    """

    layers: list[int] = field([], "Edited layers; [] = every layer (PAC).")
    topk: int = field(15, "|T⁺|: top key and top value nodes per layer (PAC: 15).")
    bottomk: int = field(1, "|T⁻|: bottom nodes per layer forming the negative path (PAC: 1).")
    lam: float = field(0.1, "λ of eq. 7 weighting the contrastive term (0 disables it).")
    lr: float = field(3e-4, "Adam learning rate (reference 1e-5 for 7B models over ~12 epochs; 3e-4 flips a "
                            "zsRE answer of SmolLM2-135M in ~11 steps).")
    betas: list[float] = field([0.9, 0.999], "Adam (β1, β2); weight decay 0.")
    epochs: int = field(30, "Passes over the requests per compute (one step per mini-batch per pass).")
    eta: int = field(2, "Re-assess impact scores every eta epochs (PAC: 2).")
    batch_size: int = field(2, "Mini-batch size of updates and reference scores (PAC: 2).")
    score: str = field("paper", "'paper' (eq. 6, per-edit |θ·∇L|) or 'reference' (z-scored summed gradients).")
    contrastive: str = field("joint", "'joint' (eq. 7 as one objective) or 'alternating' (reference: two Adam "
                                      "steps per mini-batch).")
    include_gate: bool = field(False, "Pack the gate projection into key nodes (reference: gate frozen).")
    out_bias: bool = field(False, "Train the whole MLP output bias too (reference code, GPT-J).")
    early_stop_loss: float = field(0.05, "Skip steps of mini-batches whose target CE is below this; stop after "
                                         "an epoch without steps (0 = off).")
    shuffle: bool = field(True, "Reshuffle mini-batches every epoch (reference: yes).")
    seed: int = field(0, "Seed of the mini-batch shuffling (private generator).")

    def __post_init__(self) -> None:
        self._check("layers", all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.layers)
                    and len(set(self.layers)) == len(self.layers), "a list of distinct layer indices >= 0 ([] = all)")
        self._check("topk", _is_int(self.topk) and self.topk >= 1, "an int >= 1")
        self._check("bottomk", _is_int(self.bottomk) and self.bottomk >= 0, "an int >= 0")
        self._check("lam", self.lam >= 0, "a float >= 0")
        self._check("lr", self.lr > 0, "a float > 0")
        self._check("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two floats in [0, 1)")
        self._check("epochs", _is_int(self.epochs) and self.epochs >= 1, "an int >= 1")
        self._check("eta", _is_int(self.eta) and self.eta >= 1, "an int >= 1")
        self._check("batch_size", _is_int(self.batch_size) and self.batch_size >= 1, "an int >= 1")
        self._check("score", self.score in SCORES, f"one of {list(SCORES)}")
        self._check("contrastive", self.contrastive in CONTRASTIVE, f"one of {list(CONTRASTIVE)}")
        self._check("early_stop_loss", self.early_stop_loss >= 0, "a float >= 0")

    def options(self) -> PathOptions:
        return PathOptions(self.topk, self.bottomk, self.lam, self.lr, (self.betas[0], self.betas[1]), self.epochs,
                           self.eta, self.batch_size, self.score, self.contrastive, self.early_stop_loss,
                           self.shuffle, self.seed)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _packing(config: CriticalPathConfig, model, adapter) -> PathPacking:
    """The node tensors of the configured layers; ConfigError when layers or topk+bottomk do not fit."""
    n = num_layers(model, adapter)
    layers = list(config.layers) or list(range(n))
    if max(layers) >= n:
        raise ConfigError(param_message("layers", "CriticalPathConfig", f"a list of layer indices in [0, {n - 1}]",
                                        config.layers))
    packing = pack_paths(model, adapter, sorted(layers), include_gate=config.include_gate, out_bias=config.out_bias)
    if config.topk + config.bottomk > packing.n_neurons:
        raise ConfigError(f"CriticalPathConfig: topk + bottomk = {config.topk + config.bottomk} exceeds the "
                          f"{packing.n_neurons} FFN neurons per layer; lower 'topk' or 'bottomk'.")
    return packing


def _summary(result) -> dict[str, Any]:
    last = result.selections[-1] if result.selections else None
    return {"epochs": result.epochs, "assessments": len(result.selections),
            "paths": last.to_dict() if last is not None else None,
            "edited_nodes": {name: int(d.index.numel()) for name, d in result.deltas.items()}}


class CriticalPath(EditMethod):
    """PAC: ``compute`` trains the critical paths of ``requests`` from the current weights and returns
    :class:`~kedit.ledger.SparseRows` deltas (key rows / value columns, or the transpose for Conv1D);
    the model is restored bit for bit before returning.

    In a stream of batches the contrastive labels y of each batch come from the weights that batch
    starts from (the reference precomputes them once on the original model: :func:`train_consecutive`).
    No state is carried between batches: each ``compute`` starts a fresh optimiser and re-locates its
    paths on the current weights."""

    tags = frozenset({"deterministic", "gradient_based", "batched"})

    def compute(self, ctx, requests, state):
        packing = _packing(self.config, ctx.model, ctx.adapter)
        result = train_paths(ctx.model, ctx.tokenizer, ctx.adapter, requests, packing, self.config.options(),
                             progress=ctx.progress)
        return result.deltas, state, {"critical_path": _summary(result)}


@dataclasses.dataclass
class ConsecutiveResult:
    """What :func:`train_consecutive` returns.

    Attributes:
        edit_set: the combined sparse deltas of the whole run (apply with ``Ledger.apply``).
        epochs: per epoch ``{epoch, assessed, steps, loss, contrastive_loss}`` plus whatever
            ``on_epoch_end`` returned under ``"eval"``.
        scores: node scores of every assessment (for :func:`kedit.runs.path_plots.plot_node_importance`).
        selections: T⁺/T⁻ of every assessment.
    """

    edit_set: Any
    epochs: list[dict]
    scores: list[NodeScores]
    selections: list[PathSelection]


def train_consecutive(model, tokenizer, requests: Sequence[EditRequest], config: Any = None, *,
                      epochs: int | None = None, progress: bool = False,
                      on_epoch_end: Callable[[int, Any], Any] | None = None) -> ConsecutiveResult:
    """The reference code's consecutive editing (spec §11): train every request together for ``epochs``
    epochs (shuffled mini-batches of ``batch_size``; paths re-assessed every ``eta`` epochs; the
    contrastive labels y precomputed once on the original model).  The model is left unchanged.

    Args:
        model, tokenizer: any supported causal LM.
        requests: the whole edit set (the reference: 3K zsRE / CounterFact records).
        config: None (defaults), a dict of overrides or a :class:`CriticalPathConfig`.
        epochs: overrides ``config.epochs`` (reference: 11 for Llama3 zsRE, 12 for GPT-J/Llama2/Llama3 CF).
        progress: show an epoch progress bar.
        on_epoch_end: ``f(epoch, model)`` run after each epoch with the edited weights in place (the
            reference evaluates after every epoch); its return value is stored in ``epochs[i]["eval"]``.

    Example:
        >>> from kedit.testing.tiny import tiny_model
        >>> from kedit.testing.checks import tiny_requests
        >>> model, tok = tiny_model("gpt2")
        >>> out = train_consecutive(model, tok, tiny_requests(), {"topk": 2}, epochs=2)
        >>> len(out.epochs), out.edit_set.method
        (2, 'critical_path')
    """
    from kedit.ledger import EditSet
    from kedit.models.fingerprint import weights_fingerprint

    requests = check_requests(requests, "train_consecutive")
    adapter = get_adapter(model)
    cfg = build_config("critical_path", config, model_type=adapter.model_type, n_layers=num_layers(model, adapter))
    if epochs is not None:
        if not _is_int(epochs) or epochs < 1:
            raise ConfigError(param_message("epochs", "train_consecutive", "an int >= 1", epochs))
        cfg = cfg.replace(epochs=epochs)
    fingerprint = weights_fingerprint(model)

    def callback(epoch: int, info: dict) -> None:
        info["eval"] = on_epoch_end(epoch, model)

    result = train_paths(model, tokenizer, adapter, requests, _packing(cfg, model, adapter), cfg.options(),
                         on_epoch_end=callback if on_epoch_end is not None else None, progress=progress)
    edit_set = EditSet(result.deltas, "critical_path", cfg.to_dict(), tuple(requests), fingerprint,
                       meta={"protocol": "multi-epoch (reference)", "critical_path": _summary(result)})
    return ConsecutiveResult(edit_set, result.epochs, result.scores, result.selections)


register_method("critical_path", CriticalPathConfig, CriticalPath,
                summary="Critical-path contrastive editing: masked FFN key/value node updates (PAC, Zhai et al. 2025).",
                tags=CriticalPath.tags)
