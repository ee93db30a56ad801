"""The one code path through which weights change: apply an EditSet, remember the originals, revert.

Why a ledger: editing research code writes weights in place and "restores" them by subtracting the delta
again, which is not exact in floating point and leaks edits across benchmark cases.  The ledger validates a
whole EditSet strictly before touching anything (names, shapes, base fingerprint, finiteness of every new
tensor), keeps a clone of each parameter at its first touch, and restores those clones bit for bit.

Sequential editing: every EditSet in a sequence carries ``base_fingerprint`` = the fingerprint of the
original base model; the ordered ``ledger.history`` records how they were stacked.  The first is applied
with ``check_fingerprint=True``; later ones, computed on the already-edited model, with
``check_fingerprint=False`` (the current weights no longer match any base fingerprint).

Example:
    >>> import torch
    >>> from kedit.testing.tiny import tiny_model
    >>> model, _ = tiny_model("llama")
    >>> ledger = Ledger(model)
    >>> name = "model.layers.0.mlp.down_proj.weight"
    >>> e = EditSet({name: torch.ones(32, 64)}, "demo", {}, (), ledger.base_fingerprint)
    >>> ledger.apply(e); ledger.touched
    ['model.layers.0.mlp.down_proj.weight']
    >>> ledger.revert(); ledger.touched
    []
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator

import torch
from torch import nn

from kedit.errors import LedgerError, NonFiniteError, closest
from kedit.ledger.delta import EditSet, SparseRows
from kedit.models.fingerprint import weights_fingerprint

__all__ = ["Ledger", "applied"]

log = logging.getLogger(__name__)


def _param_tables(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, str]]:
    """(every name incl. tied aliases -> parameter, every name -> canonical name from named_parameters())."""
    everything = dict(model.named_parameters(remove_duplicate=False))
    canonical_of_id = {id(p): name for name, p in model.named_parameters()}
    canonical = {name: canonical_of_id[id(p)] for name, p in everything.items()}
    return everything, canonical


def _shape_only(edit_set: EditSet) -> EditSet:
    """``edit_set`` with every dense delta replaced by a ``meta`` tensor of its shape and dtype (no
    storage); sparse deltas are kept (index and a few rows)."""
    deltas = {name: d if isinstance(d, SparseRows) else torch.empty_like(d, device="meta")
              for name, d in edit_set.deltas.items()}
    return dataclasses.replace(edit_set, deltas=deltas)


class Ledger:
    """Apply, record and revert EditSets on one model.

    Args:
        model: the model whose parameters the ledger edits (in place).
        base_fingerprint: the model's ``weights_fingerprint`` when the caller already knows it (skips the
            ~0.5 s hash of a 135M-parameter model); computed now when None.
        keep_deltas: False keeps each ``history`` entry's provenance with its dense deltas replaced by
            storage-less ``meta`` tensors of the same shape and dtype.  A sequential run of thousands
            of batches then holds one copy of the originals instead of one dense delta per batch
            (16.9 MiB per batch for MEMIT's five SmolLM2 layers); revert only needs the originals.

    Attributes:
        history: the EditSets applied so far, in order.

    Example:
        >>> from kedit.testing.tiny import tiny_model
        >>> Ledger(tiny_model("gpt2")[0]).touched
        []
    """

    def __init__(self, model: nn.Module, *, base_fingerprint: str | None = None, keep_deltas: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise LedgerError(f"Ledger needs a torch.nn.Module. Got {type(model).__name__} instead.")
        self.model = model
        self.history: list[EditSet] = []
        self.keep_deltas = keep_deltas
        self._originals: dict[str, torch.Tensor] = {}
        self._base_fingerprint = base_fingerprint if base_fingerprint is not None else weights_fingerprint(model)
        self._current_fingerprint: str | None = self._base_fingerprint

    # -- views ------------------------------------------------------------------------------
    @property
    def base_fingerprint(self) -> str:
        """Fingerprint of the weights the ledger saw at construction (and restores on revert)."""
        return self._base_fingerprint

    def fingerprint(self) -> str:
        """Fingerprint of the current weights (cached; recomputed lazily after an apply)."""
        if self._current_fingerprint is None:
            self._current_fingerprint = weights_fingerprint(self.model)
        return self._current_fingerprint

    @property
    def touched(self) -> list[str]:
        """Sorted canonical names of every parameter changed since construction or the last revert."""
        return sorted(self._originals)

    @property
    def aliases(self) -> dict[str, str]:
        """Tied-weight aliases: alias name -> the canonical name ``named_parameters()`` lists."""
        _, canonical = _param_tables(self.model)
        return {alias: name for alias, name in canonical.items() if alias != name}

    def current_delta(self, *, exact: bool = False) -> dict[str, torch.Tensor]:
        """``W_now - W_original`` for every touched parameter (float32, or float64 for float64 weights).

        ``exact=True`` returns float64 differences: for float32/bfloat16 weights, re-applying them
        to the originals reproduces the current weights bit for bit (resumable checkpoints).

        Example:
            >>> from kedit.testing.tiny import tiny_model
            >>> Ledger(tiny_model("gpt2")[0]).current_delta()
            {}
        """
        everything, _ = _param_tables(self.model)
        out = {}
        for name, original in self._originals.items():
            now = everything[name].detach()
            dtype = torch.float64 if exact else torch.promote_types(now.dtype, torch.float32)
            out[name] = (now.double() - original.double()).to(dtype)
        return out

    # -- apply ------------------------------------------------------------------------------
    def _resolve(self, edit_set: EditSet, everything: dict, canonical: dict) -> dict[str, str]:
        """Map each delta name to its canonical parameter name; raise on unknown or doubly-named tensors."""
        unknown = sorted(n for n in edit_set.deltas if n not in everything)
        if unknown:
            hints: list[str] = []
            for n in unknown:
                hints += [c for c in closest(n, everything, 5) if c not in hints]
            raise LedgerError(
                f"EditSet from method {edit_set.method!r} names parameters the model does not have: {unknown}. "
                f"Closest real names: {hints[:5]}. Use names from model.named_parameters(); the edit set may "
                f"belong to a different architecture."
            )
        resolved: dict[str, str] = {}
        seen: dict[str, str] = {}
        for name in edit_set.deltas:
            target = canonical[name]
            if target in seen:
                raise LedgerError(
                    f"EditSet from method {edit_set.method!r} has deltas for both {seen[target]!r} and {name!r}, "
                    f"which are the same tied tensor {target!r}; sum them into one delta under {target!r}."
                )
            seen[target] = name
            if target != name:
                log.debug("Delta for %r applies to tied tensor %r", name, target)
            resolved[name] = target
        return resolved

    @staticmethod
    def _check_shapes(edit_set: EditSet, everything: dict) -> None:
        problems = []
        for name, delta in sorted(edit_set.deltas.items()):
            shape = tuple(everything[name].shape)
            if isinstance(delta, SparseRows):
                problem = delta.check_shape(shape, name)
                if problem:
                    problems.append(problem)
            elif tuple(delta.shape) != shape:
                problems.append(f"{name}: delta shape {tuple(delta.shape)} but parameter shape {shape}")
        if problems:
            raise LedgerError(
                f"EditSet from method {edit_set.method!r} does not fit the model: " + "; ".join(problems)
                + ". Deltas must have exactly the parameter's shape (no transposes are guessed; check the adapter layout)."
            )

    def apply(self, edit_set: EditSet, *, batch: int | None = None, check_fingerprint: bool = True) -> None:
        """Add every delta of ``edit_set`` to the model, or change nothing and raise.

        Args:
            edit_set: the deltas to add.
            batch: batch index, named in error messages.
            check_fingerprint: require ``edit_set.base_fingerprint`` to equal the current weights'
                fingerprint. Pass False for the second and later edit sets of a sequential run.

        Raises:
            LedgerError: unknown names, shape mismatch, or fingerprint mismatch (nothing written).
            NonFiniteError: a new tensor would hold NaN/inf (nothing written).
        """
        if not isinstance(edit_set, EditSet):
            raise LedgerError(f"Ledger.apply needs an EditSet. Got {type(edit_set).__name__} instead.")
        everything, canonical = _param_tables(self.model)
        resolved = self._resolve(edit_set, everything, canonical)
        self._check_shapes(edit_set, everything)
        if check_fingerprint:
            current = self.fingerprint()
            if edit_set.base_fingerprint != current:
                raise LedgerError(
                    f"EditSet from method {edit_set.method!r} was computed for base weights {edit_set.base_fingerprint} "
                    f"but the model's weights are {current}; load the matching base model, or pass "
                    f"check_fingerprint=False when stacking it on earlier edits (sequential editing)."
                )
        where = f" (batch {batch})" if batch is not None else ""
        new_values: list[tuple[str, nn.Parameter, SparseRows | None, torch.Tensor]] = []
        with torch.no_grad():
            for name, delta in edit_set.deltas.items():
                param = everything[name]
                weight = param.detach()
                if isinstance(delta, SparseRows):
                    index = delta.index.to(weight.device)
                    old = weight.index_select(delta.dim, index)
                    new = (old.double() + delta.values.to(weight.device).double()).to(weight.dtype)
                    raw = delta.values
                else:
                    new = (weight.double() + delta.to(weight.device).double()).to(weight.dtype)
                    raw = delta
                if not torch.isfinite(new).all():
                    bad = int((~torch.isfinite(new)).sum())
                    bad_delta = int((~torch.isfinite(raw)).sum())
                    cause = (
                        f"the delta itself holds {bad_delta} NaN/inf values" if bad_delta
                        else f"the sum overflows {weight.dtype}"
                    )
                    raise NonFiniteError(
                        f"Applying the {edit_set.method!r} edit set{where} would make tensor {resolved[name]!r} "
                        f"non-finite ({bad} of {new.numel()} values; {cause}). The model was not changed; check "
                        f"the method's statistics, targets and learning rate."
                    )
                new_values.append((resolved[name], param, delta if isinstance(delta, SparseRows) else None, new))
            for target, param, sparse, _ in new_values:
                if target not in self._originals:
                    self._originals[target] = param.detach().clone()
            for target, param, sparse, new in new_values:
                if sparse is None:
                    param.data.copy_(new)
                else:
                    param.data.index_copy_(sparse.dim, sparse.index.to(param.device), new)
        self.history.append(edit_set if self.keep_deltas else _shape_only(edit_set))
        self._current_fingerprint = None
        log.info(
            "Applied %s edit set%s: %d tensor(s), %d request(s)",
            edit_set.method, where, len(edit_set.deltas), len(edit_set.requests),
        )

    # -- revert -----------------------------------------------------------------------------
    def revert(self) -> None:
        """Restore every touched parameter bit for bit and clear the history.

        Example:
            >>> from kedit.testing.tiny import tiny_model
            >>> ledger = Ledger(tiny_model("gpt2")[0]); ledger.revert(); ledger.history
            []
        """
        everything, _ = _param_tables(self.model)
        missing = sorted(n for n in self._originals if n not in everything)
        if missing:
            raise LedgerError(
                f"Cannot revert: the model no longer has parameters {missing} that the ledger changed "
                f"(was the model rebuilt or resized after apply?). Nothing was restored."
            )
        with torch.no_grad():
            for name, original in self._originals.items():
                everything[name].data.copy_(original)
        log.info("Reverted %d tensor(s) from %d edit set(s)", len(self._originals), len(self.history))
        self._originals.clear()
        self.history.clear()
        self._current_fingerprint = self._base_fingerprint

    def __repr__(self) -> str:
        return f"Ledger(edit_sets={len(self.history)}, touched={len(self._originals)})"


@contextlib.contextmanager
def applied(
    model: nn.Module, edit_set: EditSet, *, check_fingerprint: bool = True, batch: int | None = None
) -> Iterator[Ledger]:
    """Apply ``edit_set`` for the duration of a ``with`` block and revert on exit (also on error).

    Example:
        >>> import torch
        >>> from kedit.testing.tiny import tiny_model
        >>> from kedit.models.fingerprint import weights_fingerprint
        >>> model, _ = tiny_model("gpt2")
        >>> delta = torch.ones_like(model.lm_head.weight)
        >>> e = EditSet({"lm_head.weight": delta}, "demo", {}, (), weights_fingerprint(model))
        >>> with applied(model, e) as ledger: ledger.touched
        ['transformer.wte.weight']
    """
    ledger = Ledger(model)
    ledger.apply(edit_set, batch=batch, check_fingerprint=check_fingerprint)
    try:
        yield ledger
    finally:
        ledger.revert()
