"""Scoped forward hooks and state switches (STYLE.md H1): every change is undone on exit.

``trace`` registers its hooks in ``__enter__`` through an ExitStack, so a failure part-way
removes the hooks already added; ``stop=True`` ends the forward pass after the last traced
module (statistics collection never runs layers it does not need).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from kedit.models.adapters import resolve_module

__all__ = ["trace", "Traced", "frozen", "eval_mode", "StopForward"]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; swallowed by ``trace``."""


@dataclasses.dataclass
class Traced:
    """What ``trace`` retained for one module: its first positional input and its output."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


def _first_tensor(x):
    return x[0] if isinstance(x, tuple) else x


@contextlib.contextmanager
def trace(
    model: nn.Module,
    names: Sequence[str],
    *,
    retain_input: bool = False,
    retain_output: bool = True,
    edit_output: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    stop: bool = False,
) -> Iterator[dict[str, Traced]]:
    """Record inputs/outputs of named modules for the duration of the ``with`` block.

    Args:
        names: dotted module names.
        retain_input / retain_output: what to keep (tensors are kept attached to the graph).
        edit_output: ``f(name, output) -> new_output`` applied to each module's (first) output.
        stop: raise StopForward after the last named module in forward order; the exception is
            swallowed on exit of the ``with`` block, so ``model(...)`` inside it must be wrapped
            by the caller in ``with trace(...)`` and its return value ignored.

    Example:
        >>> with trace(model, ["model.layers.0.mlp.down_proj"], retain_input=True) as t:  # doctest: +SKIP
        ...     model(ids)
        >>> t["model.layers.0.mlp.down_proj"].input.shape  # doctest: +SKIP
    """
    names = list(dict.fromkeys(names))
    records = {n: Traced() for n in names}
    remaining = set(names)

    def make_hook(name: str):
        def hook(module, inputs, output):
            if retain_input:
                records[name].input = _first_tensor(inputs)
            out = output
            if edit_output is not None:
                first = _first_tensor(output)
                new = edit_output(name, first)
                out = (new, *output[1:]) if isinstance(output, tuple) else new
            if retain_output:
                records[name].output = _first_tensor(out)
            remaining.discard(name)
            if stop and not remaining:
                raise StopForward()
            return out if edit_output is not None else None

        return hook

    with contextlib.ExitStack() as stack:
        for name in names:
            module = resolve_module(model, name)
            handle = module.register_forward_hook(make_hook(name))
            stack.callback(handle.remove)
        try:
            yield records
        except StopForward:
            pass


@contextlib.contextmanager
def frozen(model: nn.Module, trainable: Sequence[torch.nn.Parameter] = ()) -> Iterator[nn.Module]:
    """Set ``requires_grad=False`` on every parameter except ``trainable``; restore on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in trainable}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield model
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def bfloat16_linears(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` with bfloat16 copies of its ``nn.Linear`` weights (and eager attention); on
    exit every parameter gets its original tensor back, bit for bit (the originals are kept, not
    cast back).  Meant for use under ``torch.autocast(dtype=torch.bfloat16)``.

    Autocast alone does not pay on CPU for frozen weights: it re-casts every weight at every call
    (its cast cache holds only weights that require grad), which costs as much as the matmul it
    saves.  Norm weights stay float32 (layer norm runs in float32 under autocast and refuses mixed
    dtypes).  Eager attention because PyTorch's CPU flash-attention backward is several times
    slower in bfloat16 than in float32.  ``enabled=False`` changes nothing.
    """
    if not enabled:
        yield model
        return
    saved = [(m.weight, m.weight.data) for m in model.modules()
             if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32]
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    try:
        for weight, data in saved:
            weight.data = data.to(torch.bfloat16)
        if attn is not None:
            config._attn_implementation = "eager"
        yield model
    finally:
        for weight, data in saved:
            weight.data = data
        if attn is not None:
            config._attn_implementation = attn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode; restore each module's training flag on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def module_names(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    return [resolve_module(model, n) for n in names]
