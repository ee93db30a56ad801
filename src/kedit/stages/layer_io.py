"""Record a decoder block's inputs and outputs, and replay the block on them.

UnKE (methods.md §7 step 2) trains one whole decoder block on recorded (input, output) pairs.
The reference rebuilds the causal mask and position ids by hand, which ties it to one
transformers version.  Here a forward *pre*-hook records exactly what the model itself passes
to the block — hidden states plus every keyword argument (attention mask in whatever form the
attention implementation wants, rotary ``position_embeddings``, position ids) — so replaying
``block(x, **kwargs)`` is the model's own computation for any supported family and version.
The recording forward stops after the block (baukit's ``stop``): the layers above it and the
vocabulary projection are never run, which on SmolLM2-135M (block 7 of 30) saves ~80 % of it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from kedit.models.adapters import Adapter, resolve_module
from kedit.models.hooks import StopForward, eval_mode
from kedit.stages.tokens import pad_right

__all__ = ["BlockIO", "record_block", "run_block"]

_DROP = ("past_key_values", "past_key_value", "layer_past", "use_cache", "output_attentions", "cache_position")


@dataclasses.dataclass
class BlockIO:
    """What block ``layer`` saw and produced on right-padded rows.

    Args:
        inputs: (R, T, d) hidden states entering the block.
        outputs: (R, T, d) block output (residual stream after the block).
        mask: (R, T) 1 for real tokens.
        kwargs: the keyword arguments the model passed to the block (tensors detached).
        args: further positional arguments after the hidden states (GPT-2 passes some).
    """

    inputs: torch.Tensor
    outputs: torch.Tensor
    mask: torch.Tensor
    kwargs: dict
    args: tuple = ()


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def record_block(model, adapter: Adapter, layer: int, rows: Sequence[Sequence[int]], pad_id: int) -> BlockIO:
    """Run ``rows`` (token id lists) through the model and record block ``layer``'s I/O."""
    ids, mask = pad_right([list(r) for r in rows], pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    block = resolve_module(model, adapter.layer(layer), adapter)
    seen: dict = {}

    def pre_hook(module, args, kwargs):
        seen["input"] = args[0] if args else kwargs["hidden_states"]
        seen["args"] = tuple(None if isinstance(a, torch.nn.Module) or type(a).__name__.endswith("Cache") else _detach(a)
                             for a in args[1:])
        seen["kwargs"] = {k: _detach(v) for k, v in kwargs.items() if k not in _DROP and k != "hidden_states"}

    def hook(module, args, kwargs, output):
        seen["output"] = _first(output)
        raise StopForward()

    handles = [block.register_forward_pre_hook(pre_hook, with_kwargs=True),
               block.register_forward_hook(hook, with_kwargs=True)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return BlockIO(seen["input"].detach(), seen["output"].detach(), mask, seen["kwargs"], seen["args"])


def run_block(model, adapter: Adapter, layer: int, io: BlockIO) -> torch.Tensor:
    """The block's output on the recorded inputs under its current weights (differentiable)."""
    block = resolve_module(model, adapter.layer(layer), adapter)
    return _first(block(io.inputs, *io.args, **io.kwargs))
