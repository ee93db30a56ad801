"""What a method hands to the ledger: additive weight deltas plus the provenance needed to trust them.

A method never writes weights itself (DESIGN "Weights change only through the ledger"). It returns an
:class:`EditSet`: one additive delta per parameter, the method name, its resolved config, the requests it
answered and the fingerprint of the weights the deltas were computed against.  A delta is either a dense
tensor with exactly the parameter's shape or a :class:`SparseRows` that changes only a few rows (``dim=0``)
or columns (``dim=1``), for methods that touch a handful of FFN key columns / value rows.

Example:
    >>> import torch
    >>> s = SparseRows(torch.tensor([2]), torch.ones(1, 3), dim=0)
    >>> s.to_dense((4, 3), torch.float32).sum().item()
    3.0
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

import torch

from kedit.data.requests import EditRequest
from kedit.errors import LedgerError

__all__ = ["SparseRows", "EditSet", "Delta"]


@dataclasses.dataclass(frozen=True, eq=False)
class SparseRows:
    """A delta that changes only the rows (``dim=0``) or columns (``dim=1``) listed in ``index``.

    Storing ``r`` rows instead of the whole matrix keeps ledger files small for methods that edit a few
    FFN key columns or value rows.  ``values`` has the parameter's shape except along ``dim``, where its
    size is ``r = len(index)``: ``(r, cols)`` for rows, ``(rows, r)`` for columns.  Indices must be unique
    (a repeated index would make "add these rows" ambiguous).

    Args:
        index: LongTensor ``(r,)`` of row (or column) positions, unique.
        values: the additive values for those rows (columns).
        dim: 0 for rows, 1 for columns.

    Example:
        >>> import torch
        >>> SparseRows(torch.tensor([0, 3]), torch.ones(4, 2), dim=1).to_dense((4, 5), torch.float32)[:, 3].tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    index: torch.Tensor
    values: torch.Tensor
    dim: int = 0

    def __post_init__(self) -> None:
        if self.dim not in (0, 1):
            raise LedgerError(f"The 'dim' parameter of SparseRows must be 0 (rows) or 1 (columns). Got {self.dim!r} instead.")
        index, values = self.index, self.values
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise LedgerError(
                "The 'index' parameter of SparseRows must be a 1-D integer tensor. "
                f"Got {type(index).__name__} {getattr(index, 'dtype', '')} {tuple(getattr(index, 'shape', ()))} instead; "
                "pass torch.tensor(rows, dtype=torch.long)."
            )
        if not isinstance(values, torch.Tensor) or not values.is_floating_point():
            raise LedgerError(
                f"The 'values' parameter of SparseRows must be a floating-point tensor. Got {getattr(values, 'dtype', type(values).__name__)} instead."
            )
        if values.dim() <= self.dim or values.shape[self.dim] != index.numel():
            raise LedgerError(
                f"SparseRows values must have size len(index)={index.numel()} along dim={self.dim}. "
                f"Got values of shape {tuple(values.shape)}; for dim=0 pass (r, cols), for dim=1 pass (rows, r)."
            )
        if index.numel() and torch.unique(index).numel() != index.numel():
            raise LedgerError(
                f"SparseRows index must not repeat a position. Got {index.tolist()}; sum the duplicate rows first."
            )
        object.__setattr__(self, "index", index.to(torch.long))

    def check_shape(self, shape: tuple[int, ...], name: str = "parameter") -> str | None:
        """Return a problem description when this delta does not fit a parameter of ``shape``, else None."""
        shape = tuple(shape)
        if len(shape) != self.values.dim():
            return f"{name}: sparse values of shape {tuple(self.values.shape)} (dim={self.dim}) but parameter shape {shape}"
        other = [s for i, s in enumerate(shape) if i != self.dim]
        got = [s for i, s in enumerate(self.values.shape) if i != self.dim]
        if other != got:
            return f"{name}: sparse values of shape {tuple(self.values.shape)} (dim={self.dim}) but parameter shape {shape}"
        if self.index.numel() and (int(self.index.min()) < 0 or int(self.index.max()) >= shape[self.dim]):
            return (
                f"{name}: sparse index out of range [0, {shape[self.dim]}) along dim={self.dim} "
                f"(min {int(self.index.min())}, max {int(self.index.max())})"
            )
        return None

    def to_dense(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        """The equivalent dense delta of ``shape`` (zeros outside ``index``), in ``dtype`` (default: values')."""
        problem = self.check_shape(shape)
        if problem:
            raise LedgerError(f"Cannot densify SparseRows: {problem}.")
        dtype = dtype or self.values.dtype
        out = torch.zeros(tuple(shape), dtype=dtype, device=self.values.device)
        return out.index_copy_(self.dim, self.index.to(out.device), self.values.to(dtype))

    def nbytes(self) -> int:
        return self.index.numel() * self.index.element_size() + self.values.numel() * self.values.element_size()


Delta = Union[torch.Tensor, SparseRows]


def _merge_sparse(a: SparseRows, b: SparseRows) -> SparseRows:
    """Union of two same-dim sparse deltas; overlapping positions are summed."""
    dtype = torch.promote_types(a.values.dtype, b.values.dtype)
    index = torch.cat([a.index, b.index.to(a.index.device)])
    union, inverse = torch.unique(index, return_inverse=True)
    shape = list(a.values.shape)
    shape[a.dim] = union.numel()
    values = torch.zeros(shape, dtype=dtype, device=a.values.device)
    stacked = torch.cat([a.values.to(dtype), b.values.to(device=a.values.device, dtype=dtype)], dim=a.dim)
    values.index_add_(a.dim, inverse, stacked)
    return SparseRows(union, values, a.dim)


def _merge_delta(name: str, a: Delta, b: Delta) -> Delta:
    if isinstance(a, SparseRows) and isinstance(b, SparseRows):
        if a.dim == b.dim:
            rest_a = [s for i, s in enumerate(a.values.shape) if i != a.dim]
            if rest_a != [s for i, s in enumerate(b.values.shape) if i != b.dim]:
                raise LedgerError(f"Cannot merge sparse deltas for {name!r}: values shapes {tuple(a.values.shape)} and {tuple(b.values.shape)} disagree.")
            return _merge_sparse(a, b)
        rows_part, cols_part = (b, a) if a.dim == 0 else (a, b)  # dim=1 values carry every row, dim=0 every column
        shape = (rows_part.values.shape[0],) + tuple(cols_part.values.shape[1:])
        a, b = a.to_dense(shape), b.to_dense(shape)
    elif isinstance(a, SparseRows):
        a = a.to_dense(tuple(b.shape), b.dtype)
    elif isinstance(b, SparseRows):
        b = b.to_dense(tuple(a.shape), a.dtype)
    if a.shape != b.shape:
        raise LedgerError(f"Cannot merge deltas for {name!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ.")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype) + b.to(device=a.device, dtype=dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class EditSet:
    """The additive weight deltas one method computed for one batch of requests, with provenance.

    Equality is identity (``eq=False``): deltas are tensors, whose ``==`` is elementwise.

    Sequential editing: every EditSet of a sequence carries ``base_fingerprint`` = the fingerprint of the
    ORIGINAL base model, and the ledger's ordered ``history`` says in which order they were applied; apply
    later ones with ``Ledger.apply(..., check_fingerprint=False)``.

    Args:
        deltas: parameter name (as in ``model.named_parameters()``) -> dense tensor with exactly the
            parameter's shape, or :class:`SparseRows`.
        method: the method / preset name (``"memit"``).
        config: the fully resolved config as a JSON-serialisable dict.
        requests: the requests these deltas answer.
        base_fingerprint: ``weights_fingerprint`` of the weights the deltas were computed against.
        meta: free-form JSON-serialisable extras (timings, batch index, ...).

    Example:
        >>> import torch
        >>> e = EditSet({"w": torch.zeros(2, 2)}, "demo", {}, (), "fp")
        >>> e.names()
        ('w',)
    """

    deltas: dict[str, Delta]
    method: str
    config: dict
    requests: tuple[EditRequest, ...]
    base_fingerprint: str
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.deltas, dict):
            raise LedgerError(f"The 'deltas' parameter of EditSet must be a dict name -> tensor. Got {type(self.deltas).__name__} instead.")
        for name, delta in self.deltas.items():
            if not isinstance(name, str) or not name:
                raise LedgerError(f"EditSet delta names must be non-empty strings. Got {name!r}.")
            if isinstance(delta, SparseRows):
                continue
            if not isinstance(delta, torch.Tensor) or not delta.is_floating_point():
                raise LedgerError(
                    f"EditSet delta {name!r} must be a floating-point torch.Tensor or SparseRows. "
                    f"Got {getattr(delta, 'dtype', type(delta).__name__)} instead."
                )
        for field_name in ("method", "base_fingerprint"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value:
                raise LedgerError(f"The {field_name!r} parameter of EditSet must be a non-empty string. Got {value!r} instead.")
        if not isinstance(self.config, dict) or not isinstance(self.meta, dict):
            raise LedgerError("The 'config' and 'meta' parameters of EditSet must be dicts.")
        requests = tuple(self.requests)
        for i, r in enumerate(requests):
            if not isinstance(r, EditRequest):
                raise LedgerError(f"EditSet requests[{i}] must be an EditRequest. Got {type(r).__name__} instead.")
        object.__setattr__(self, "requests", requests)

    def names(self) -> tuple[str, ...]:
        """Sorted parameter names this edit set changes."""
        return tuple(sorted(self.deltas))

    def request_ids(self) -> list[Any]:
        """The ``id`` of every request, in order (None where a request has none)."""
        return [r.id for r in self.requests]

    def merge(self, other: "EditSet") -> "EditSet":
        """One EditSet whose deltas are the sums of both (both must share ``base_fingerprint``).

        Dense + sparse becomes dense; sparse + sparse on the same dim stays sparse.

        Example:
            >>> import torch
            >>> a = EditSet({"w": torch.ones(2)}, "m", {}, (), "fp")
            >>> a.merge(a).deltas["w"].tolist()
            [2.0, 2.0]
        """
        if not isinstance(other, EditSet):
            raise LedgerError(f"EditSet.merge needs another EditSet. Got {type(other).__name__} instead.")
        if other.base_fingerprint != self.base_fingerprint:
            raise LedgerError(
                f"Cannot merge edit sets computed for different base weights ({self.base_fingerprint} vs "
                f"{other.base_fingerprint}); apply them one after the other through a Ledger instead."
            )
        deltas: dict[str, Delta] = dict(self.deltas)
        for name, delta in other.deltas.items():
            deltas[name] = _merge_delta(name, deltas[name], delta) if name in deltas else delta
        same = self.method == other.method
        return EditSet(
            deltas=deltas,
            method=self.method if same else f"{self.method}+{other.method}",
            config=dict(self.config) if same and self.config == other.config else {"merged": [self.config, other.config]},
            requests=self.requests + other.requests,
            base_fingerprint=self.base_fingerprint,
            meta={"merged_from": [self.meta, other.meta]},
        )
