"""Critical transmission paths: node packing, impact scores, path selection and masked contrastive updates.

Implements PAC (Zhai et al., ACL 2025, "Parameter-Aware Contrastive Knowledge Editing"), spec/methods.md §11.

An FFN layer ``h ↦ W2 σ(W1 h)`` is read as M key–value memories. Node ``j`` of layer ``l``:

* key node   = the input weights of intermediate neuron ``j`` in the first FFN matrix (``up_proj`` /
  ``fc_in`` / ``c_fc`` / ``dense_h_to_4h``; plus its bias entry when the layer has one; plus the gate
  row when ``include_gate``) — a row of ``W1`` in ``nn.Linear`` (out, in) layout, a column in GPT-2's
  ``Conv1D`` (in, out) layout;
* value node = the output weights of neuron ``j`` in the down projection — a column of ``W2`` (Linear),
  a row (Conv1D).

A *critical path* picks the top-N key nodes and the top-N value nodes of every layer by their impact
on the edit loss ``L = CE(y* | x)`` over the target tokens (T⁺); the bottom-1 nodes are the negative
path T⁻.  Only T⁺ learns the new fact, and T⁻ is trained to keep the original prediction, weighted by λ
(PAC eq. 7).  Why: the update stays sparse (N·2 slices per layer instead of whole matrices), and the
negative path gives the edit a contrast instead of letting all capacity drift towards the new answer.

Paper vs reference code (spec §11), default = paper:

* score ``"paper"`` (PAC eq. 6, per edit) or ``"reference"`` (summed raw gradients, z-scored);
* contrastive ``"joint"`` (one objective, eq. 7) or ``"alternating"`` (the reference's two Adam steps);
* the optimiser is a *masked* Adam with state only for selected nodes.  The reference steps one
  ``torch.optim.Adam`` over every FFN tensor with masked gradients, so the moments of nodes selected
  earlier (and of T⁺ during the T⁻ step) keep moving them (spec §11 pitfall); here a step moves exactly
  the nodes it is given, and a node leaving the selection loses its moments.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from kedit.data.requests import EditRequest
from kedit.errors import NonFiniteError
from kedit.ledger.delta import SparseRows
from kedit.models.adapters import Adapter
from kedit.models.hooks import eval_mode, frozen
from kedit.stages.spread import restoring
from kedit.stages.tokens import pad_right, target_ids

__all__ = ["NodeTensor", "PathPacking", "pack_paths", "EditRows", "encode_rows", "contrastive_labels",
           "NodeScores", "paper_scores", "reference_scores", "PathSelection", "select_paths", "MaskedAdam",
           "PathOptions", "PathResult", "train_paths"]

log = logging.getLogger(__name__)


# -- packing ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NodeTensor:
    """One parameter whose slices along ``dim`` are FFN nodes (``kind`` "key" or "value"), or an MLP
    output bias trained in full (``kind`` "out_bias", reference option)."""

    name: str
    layer: int
    kind: str
    dim: int


@dataclasses.dataclass(frozen=True)
class PathPacking:
    """Every node tensor of the edited layers; ``n_neurons`` = M (intermediate size)."""

    tensors: tuple[NodeTensor, ...]
    layers: tuple[int, ...]
    n_neurons: int

    def of(self, layer: int, kind: str) -> list[NodeTensor]:
        return [t for t in self.tensors if t.layer == layer and t.kind == kind]


def pack_paths(model, adapter: Adapter, layers: Sequence[int], *, include_gate: bool = False,
               out_bias: bool = False) -> PathPacking:
    """Pack key / value node tensors per layer (PAC §3.1; spec §11 "Packing").

    The adapter's ``layout`` is that of both MLP matrices (GPT-2's ``c_fc`` and ``c_proj`` are both
    ``Conv1D``), so the neuron axis is declared, never guessed: key dim 0 / value dim 1 for ``out_in``,
    key dim 1 / value dim 0 for ``in_out``.  Biases of the first matrix are indexed by neuron (dim 0).
    The gate is frozen by default, as in the reference code (Llama: ``up_proj`` only).
    """
    params = dict(model.named_parameters())
    key_dim, value_dim = (0, 1) if adapter.layout == "out_in" else (1, 0)
    tensors: list[NodeTensor] = []
    sizes: set[int] = set()
    for layer in layers:
        firsts = [adapter.mlp_in_name(layer)]
        if include_gate and adapter.mlp_gate is not None:
            firsts.append(adapter.mlp_gate.format(layer=layer))
        for module in firsts:
            weight = f"{module}.weight"
            tensors.append(NodeTensor(weight, layer, "key", key_dim))
            sizes.add(params[weight].shape[key_dim])
            if f"{module}.bias" in params:
                tensors.append(NodeTensor(f"{module}.bias", layer, "key", 0))
        tensors.append(NodeTensor(adapter.weight_name(layer), layer, "value", value_dim))
        sizes.add(params[adapter.weight_name(layer)].shape[value_dim])
        bias = f"{adapter.mlp_out_name(layer)}.bias"
        if out_bias and bias in params:
            tensors.append(NodeTensor(bias, layer, "out_bias", 0))
    if len(sizes) != 1:
        shapes = {t.name: tuple(params[t.name].shape) for t in tensors if t.kind != "out_bias"}
        raise ValueError(f"FFN node tensors disagree on the intermediate size along the declared layout "
                         f"{adapter.layout!r}: {shapes}")
    return PathPacking(tuple(tensors), tuple(layers), sizes.pop())


# -- tokens and labels -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EditRows:
    """Per request: ``ids`` = prompt + target tokens, ``labels`` = target ids at target positions
    (-100 elsewhere), ``original`` = contrastive labels y (filled by :func:`contrastive_labels`)."""

    ids: list[list[int]]
    labels: list[list[int]]
    original: list[list[int]] | None = None

    def batch(self, rows: Sequence[int], device) -> tuple[torch.Tensor, ...]:
        """(ids, attention mask, labels, contrastive labels or None) of ``rows``, right-padded."""
        ids, mask = pad_right([self.ids[i] for i in rows], 0)
        lab, _ = pad_right([self.labels[i] for i in rows], -100)
        orig = pad_right([self.original[i] for i in rows], -100)[0].to(device) if self.original is not None else None
        return ids.to(device), mask.to(device), lab.to(device), orig


def encode_rows(tokenizer, requests: Sequence[EditRequest]) -> EditRows:
    """Prompt (with the tokenizer's specials) followed by `` target_new``; loss on the target only."""
    ids, labels = [], []
    for request in requests:
        prompt = tokenizer(request.text)["input_ids"]
        target = target_ids(tokenizer, request.target_new)
        ids.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    return EditRows(ids, labels)


def target_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the labelled positions of the batch (token ``t`` predicted at ``t-1``), in at least
    float32 (float64 models stay float64, so finite differences can check the scores)."""
    logits = logits[:, :-1].flatten(0, 1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)


def contrastive_labels(model, rows: EditRows, *, batch_size: int) -> EditRows:
    """y of eq. 7: the model's own teacher-forced argmax on "prompt + target_new" at the target
    positions (the reference's precomputed "reproduce" predictions); computed without gradients."""
    device = next(model.parameters()).device
    original = []
    with torch.no_grad():
        for start in range(0, len(rows.ids), batch_size):
            chunk = list(range(start, min(start + batch_size, len(rows.ids))))
            ids, mask, lab, _ = rows.batch(chunk, device)
            pred = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.argmax(-1)  # (b, T)
            y = torch.full_like(lab, -100)
            y[:, 1:] = torch.where(lab[:, 1:] != -100, pred[:, :-1], y[:, 1:])
            original.extend(y[k, : len(rows.ids[i])].tolist() for k, i in enumerate(chunk))
    return dataclasses.replace(rows, original=original)


def _loss(model, rows: EditRows, chunk: Sequence[int], *, which: str = "labels") -> torch.Tensor:
    ids, mask, lab, orig = rows.batch(chunk, next(model.parameters()).device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return target_ce(logits, lab if which == "labels" else orig)


# -- impact scores ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NodeScores:
    """Impact per node: ``key[layer]`` and ``value[layer]`` are (M,) float64 tensors."""

    key: dict[int, torch.Tensor]
    value: dict[int, torch.Tensor]


def _grads(model, packing: PathPacking, loss: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    names = [t.name for t in packing.tensors]
    grads = torch.autograd.grad(loss, [params[n] for n in names], **kwargs)
    return dict(zip(names, grads))


def _acc(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: at least float32 (bfloat16 gradients are summed in float32)."""
    return torch.promote_types(x.dtype, torch.float32)


def paper_scores(model, packing: PathPacking, rows: EditRows) -> NodeScores:
    """PAC eq. 6 as read here [unverified]: the impact of node ``j`` for edit ``e`` is the first-order
    (Taylor) estimate of how much the edit loss depends on the node's parameters,
    ``I_e(j) = Σ_{θ ∈ node j} |θ · ∂L_e/∂θ|``, ``L_e = CE(y*_e | x_e)`` (mean over e's target tokens);
    the score is the mean of ``I_e(j)`` over the edits.  Key node = W1 slice (+ b1 entry, + gate slice),
    value node = W2 slice.  Why per edit: one edit's strong node is not averaged away by the others'
    gradients of opposite sign (the reference's summed gradient can cancel)."""
    params = dict(model.named_parameters())
    key = {layer: torch.zeros(packing.n_neurons, dtype=torch.float64) for layer in packing.layers}
    value = {layer: torch.zeros(packing.n_neurons, dtype=torch.float64) for layer in packing.layers}
    for i in range(len(rows.ids)):
        grads = _grads(model, packing, _loss(model, rows, [i]))
        for t in packing.tensors:
            if t.kind == "out_bias":
                continue
            theta = params[t.name].detach()
            contrib = (theta.to(_acc(theta)) * grads[t.name].to(_acc(theta))).abs()
            other = [d for d in range(contrib.dim()) if d != t.dim]
            per_node = contrib.sum(dim=other) if other else contrib  # (M,)
            (key if t.kind == "key" else value)[t.layer] += per_node.double().cpu()
    n = len(rows.ids)
    return NodeScores({k: v / n for k, v in key.items()}, {k: v / n for k, v in value.items()})


def _zscore_rows(G: torch.Tensor) -> torch.Tensor:
    """z-score each row of G (D, M) over its M entries (unbiased std, as ``Tensor.std``); a constant
    row (std 0, e.g. a dead input feature) scores 0 instead of NaN."""
    mean, std = G.mean(1, keepdim=True), G.std(1, keepdim=True)
    return torch.where(std > 0, (G - mean) / torch.where(std > 0, std, 1.0), torch.zeros_like(G))


def reference_scores(model, packing: PathPacking, rows: EditRows, *, batch_size: int) -> NodeScores:
    """The reference code's score (spec §11): sum the raw gradients of the mini-batch mean CE(y* | x)
    over all edit mini-batches; arrange each weight's gradient as [D, M] (M = neurons); z-score each
    of the D rows over the M neurons; |·|; mean over D.  Biases do not enter.  With the gate packed,
    the key score averages the rows of both matrices ([2D, M])."""
    total: dict[str, torch.Tensor] = {}
    for start in range(0, len(rows.ids), batch_size):
        chunk = list(range(start, min(start + batch_size, len(rows.ids))))
        for name, g in _grads(model, packing, _loss(model, rows, chunk)).items():
            total[name] = total[name] + g.to(_acc(g)) if name in total else g.to(_acc(g))  # float32, as the reference
    key, value = {}, {}
    for layer in packing.layers:
        for kind, out in (("key", key), ("value", value)):
            mats = [total[t.name] if t.dim == 1 else total[t.name].T
                    for t in packing.of(layer, kind) if total[t.name].dim() == 2]  # each (D, M)
            out[layer] = _zscore_rows(torch.cat(mats, 0).double()).abs().mean(0).cpu()  # (M,)
    return NodeScores(key, value)


# -- locator ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PathSelection:
    """Per layer, sorted node indices: ``pos_key``/``pos_value`` = T⁺, ``neg_key``/``neg_value`` = T⁻."""

    pos_key: dict[int, torch.Tensor]
    pos_value: dict[int, torch.Tensor]
    neg_key: dict[int, torch.Tensor]
    neg_value: dict[int, torch.Tensor]

    def nodes(self, t: NodeTensor, sign: str, n_out: int | None = None) -> torch.Tensor:
        if t.kind == "out_bias":
            return torch.arange(n_out)
        return getattr(self, f"{sign}_{t.kind}")[t.layer]

    def to_dict(self) -> dict[str, dict[int, list[int]]]:
        return {f.name: {layer: idx.tolist() for layer, idx in getattr(self, f.name).items()}
                for f in dataclasses.fields(self)}


def select_paths(scores: NodeScores, *, topk: int, bottomk: int) -> PathSelection:
    """T⁺ = the ``topk`` highest-impact key and value nodes of each layer, T⁻ = the ``bottomk`` lowest
    (PAC §3.2; ties broken by index, as the reference's stable argsort)."""
    out: dict[str, dict[int, torch.Tensor]] = {"pos_key": {}, "pos_value": {}, "neg_key": {}, "neg_value": {}}
    for kind, per_layer in (("key", scores.key), ("value", scores.value)):
        for layer, s in per_layer.items():
            out[f"pos_{kind}"][layer] = torch.argsort(s, descending=True, stable=True)[:topk].sort().values
            out[f"neg_{kind}"][layer] = torch.argsort(s, stable=True)[:bottomk].sort().values
    return PathSelection(**out)


# -- masked optimiser ------------------------------------------------------------------------
class MaskedAdam:
    """Adam whose state exists only for the active nodes (slices along each tensor's node axis).

    ``activate(name, index)`` sets the nodes that later steps may move: nodes that stay keep their
    moments, step counts and float32 master values; nodes that leave are dropped (their moments can no
    longer move them — the reference's pitfall, spec §11); new nodes start from zero moments.  Bias
    correction uses each node's own step count, so a node entering late gets a fresh Adam.
    ``step(param, name, nodes, grad_rows)`` moves exactly ``nodes``: the update of ``torch.optim.Adam``
    (``lr·m̂/(√v̂+ε)``, weight decay 0) on a float32 master copy written back in the weight's dtype.
    """

    def __init__(self, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.state: dict[str, dict] = {}

    def activate(self, param: torch.Tensor, name: str, dim: int, index: torch.Tensor) -> None:
        index = torch.unique(index.to(torch.long).cpu())  # sorted
        old = self.state.get(name)
        fresh = param.detach().index_select(dim, index.to(param.device)).float()
        new = {"index": index, "dim": dim, "m": torch.zeros_like(fresh), "v": torch.zeros_like(fresh),
               "t": torch.zeros(index.numel(), dtype=torch.long), "master": fresh}
        if old is not None and old["index"].numel():
            keep = torch.isin(index, old["index"])
            if keep.any():
                at_new = keep.nonzero().flatten()
                at_old = torch.searchsorted(old["index"], index[keep])
                for key in ("m", "v", "master"):
                    kept = old[key].index_select(dim, at_old.to(fresh.device))
                    new[key].index_copy_(dim, at_new.to(fresh.device), kept)
                new["t"][at_new] = old["t"][at_old]
        self.state[name] = new

    def step(self, param: torch.Tensor, name: str, nodes: torch.Tensor, grad_rows: torch.Tensor) -> None:
        s = self.state[name]
        dim = s["dim"]
        nodes = nodes.to(torch.long).cpu()
        at = torch.searchsorted(s["index"], nodes)
        if at.numel() and (int(at.max()) >= s["index"].numel() or not torch.equal(s["index"][at], nodes)):
            raise ValueError(f"MaskedAdam.step: nodes {nodes.tolist()} of {name!r} are not all active "
                             f"({s['index'].tolist()}); call activate() first")
        b1, b2 = self.betas
        dev = s["m"].device
        at_d = at.to(dev)
        g = grad_rows.float()
        m = s["m"].index_select(dim, at_d).mul_(b1).add_(g, alpha=1 - b1)
        v = s["v"].index_select(dim, at_d).mul_(b2).addcmul_(g, g, value=1 - b2)
        t = s["t"][at] + 1
        shape = [-1 if d == dim else 1 for d in range(g.dim())]
        bc1 = (1 - b1 ** t.double()).float().view(shape).to(dev)
        bc2 = (1 - b2 ** t.double()).float().view(shape).to(dev)
        master = s["master"].index_select(dim, at_d) - self.lr * (m / bc1) / ((v / bc2).sqrt() + self.eps)
        s["m"].index_copy_(dim, at_d, m)
        s["v"].index_copy_(dim, at_d, v)
        s["master"].index_copy_(dim, at_d, master)
        s["t"][at] = t
        with torch.no_grad():
            param.index_copy_(dim, nodes.to(param.device), master.to(param.dtype))


# -- training --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PathOptions:
    """See :class:`kedit.methods.critical_path.CriticalPathConfig` for every field."""

    topk: int = 15
    bottomk: int = 1
    lam: float = 0.1
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 30
    eta: int = 2
    batch_size: int = 2
    score: str = "paper"
    contrastive: str = "joint"
    early_stop_loss: float = 0.05
    shuffle: bool = True
    seed: int = 0


@dataclasses.dataclass
class PathResult:
    """Sparse deltas by parameter name, one info dict per epoch, and scores/selections per assessment."""

    deltas: dict[str, SparseRows]
    epochs: list[dict]
    scores: list[NodeScores]
    selections: list[PathSelection]


def _rows_of(g: torch.Tensor, t: NodeTensor, nodes: torch.Tensor) -> torch.Tensor:
    return g.index_select(t.dim, nodes.to(g.device))


def train_paths(model, tokenizer, adapter: Adapter, requests: Sequence[EditRequest], packing: PathPacking,
                options: PathOptions, *, on_epoch_end: Callable[[int, dict], None] | None = None,
                progress: bool = False) -> PathResult:
    """Edit ``requests`` by masked contrastive updates on critical paths; the model is restored on exit.

    Per epoch: every ``eta`` epochs (from epoch 0) score all nodes on all requests (current weights)
    and re-select T⁺/T⁻; then one pass over the requests in mini-batches of ``batch_size`` (shuffled
    with ``seed`` when ``shuffle``).  Per mini-batch, PAC eq. 7 ``J = L(f_Θ*(x), y*) + λ·L(f_Θ′(x), y)``:

    * ``joint``: one forward; ∇L(y*) moves T⁺ and ∇(λ·L(y)) moves T⁻ in one Adam step;
    * ``alternating`` (reference): an Adam step on T⁺ with L(y*), then a fresh forward and a step on T⁻
      with λ·L(y).

    ``y`` = the teacher-forced argmax of the weights this call starts from (:func:`contrastive_labels`),
    computed once.  A mini-batch whose L(y*) is below ``early_stop_loss`` is not stepped; training ends
    after an epoch with no step.  ``on_epoch_end(epoch, info)`` runs while the edited weights are in
    place (per-epoch evaluation of the reference's multi-epoch protocol).
    """
    from tqdm.auto import tqdm

    params = dict(model.named_parameters())
    names = [t.name for t in packing.tensors]
    device = next(model.parameters()).device
    result = PathResult({}, [], [], [])
    use_neg = options.lam > 0 and options.bottomk > 0
    touched: dict[str, set[int]] = {n: set() for n in names}
    with restoring(model, names) as saved, frozen(model, [params[n] for n in names]), eval_mode(model):
        rows = contrastive_labels(model, encode_rows(tokenizer, requests), batch_size=options.batch_size)
        opt = MaskedAdam(lr=options.lr, betas=tuple(options.betas))
        gen = torch.Generator().manual_seed(options.seed)
        selection = None
        for epoch in tqdm(range(options.epochs), desc="critical paths", disable=not progress):
            assessed = epoch % options.eta == 0
            if assessed:
                scores = (paper_scores(model, packing, rows) if options.score == "paper"
                          else reference_scores(model, packing, rows, batch_size=options.batch_size))
                selection = select_paths(scores, topk=options.topk, bottomk=options.bottomk)
                result.scores.append(scores)
                result.selections.append(selection)
                for t in packing.tensors:
                    n_out = params[t.name].shape[0]
                    active = selection.nodes(t, "pos", n_out)
                    if use_neg:
                        active = torch.cat([active, selection.nodes(t, "neg", n_out)])
                    opt.activate(params[t.name], t.name, t.dim, active)
            order = torch.randperm(len(rows.ids), generator=gen) if options.shuffle else torch.arange(len(rows.ids))
            losses, neg_losses, steps = [], [], 0
            for start in range(0, len(order), options.batch_size):
                chunk = order[start:start + options.batch_size].tolist()
                ids, mask, lab, orig = rows.batch(chunk, device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                loss = target_ce(logits, lab)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"critical-path edit loss became non-finite at epoch {epoch}; lower lr "
                                         f"(got {options.lr})")
                losses.append(float(loss.detach()))
                if loss.item() < options.early_stop_loss:
                    continue
                steps += 1
                joint = use_neg and options.contrastive == "joint"
                g_pos = _grads(model, packing, loss, retain_graph=joint)
                g_neg = None
                if joint:
                    neg = target_ce(logits, orig)
                    neg_losses.append(float(neg.detach()))
                    g_neg = _grads(model, packing, options.lam * neg)
                for t in packing.tensors:
                    n_out = params[t.name].shape[0]
                    pos_nodes = selection.nodes(t, "pos", n_out)
                    if t.kind == "out_bias":  # reference: the whole output bias follows every step
                        grad = g_pos[t.name] + (g_neg[t.name] if g_neg is not None else 0)
                        opt.step(params[t.name], t.name, pos_nodes, grad)
                    elif g_neg is not None:
                        neg_nodes = selection.nodes(t, "neg")
                        opt.step(params[t.name], t.name, torch.cat([pos_nodes, neg_nodes]),
                                 torch.cat([_rows_of(g_pos[t.name], t, pos_nodes),
                                            _rows_of(g_neg[t.name], t, neg_nodes)], t.dim))
                        touched[t.name].update(neg_nodes.tolist())
                    else:
                        opt.step(params[t.name], t.name, pos_nodes, _rows_of(g_pos[t.name], t, pos_nodes))
                    touched[t.name].update(pos_nodes.tolist())
                if use_neg and options.contrastive == "alternating":
                    neg = options.lam * _loss(model, rows, chunk, which="original")
                    neg_losses.append(float(neg.detach()) / options.lam)
                    g_neg = _grads(model, packing, neg)
                    for t in packing.tensors:
                        nodes = selection.nodes(t, "neg", params[t.name].shape[0])
                        opt.step(params[t.name], t.name, nodes, _rows_of(g_neg[t.name], t, nodes))
                        touched[t.name].update(nodes.tolist())
            info = {"epoch": epoch, "assessed": assessed, "steps": steps, "loss": sum(losses) / len(losses),
                    "contrastive_loss": sum(neg_losses) / len(neg_losses) if neg_losses else None}
            result.epochs.append(info)
            log.debug("critical paths epoch %d: %s", epoch, info)
            if on_epoch_end is not None:
                on_epoch_end(epoch, info)
            if steps == 0:
                break
        for name in names:
            if touched[name]:
                index = torch.tensor(sorted(touched[name]), dtype=torch.long)
                dim = next(t.dim for t in packing.tensors if t.name == name)
                now = params[name].detach().index_select(dim, index.to(device))
                before = saved[name].index_select(dim, index.to(device))
                values = now - before
                if not torch.isfinite(values).all():
                    raise NonFiniteError(f"critical-path delta for {name!r} is non-finite; nothing was applied")
                result.deltas[name] = SparseRows(index.to(device), values.clone(), dim)
    return result
