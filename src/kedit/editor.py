"""The public entry point: an Editor binds a model, a method preset and a ledger.

Example:
    >>> from kedit import Editor, EditRequest
    >>> from kedit.testing.tiny import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> editor = Editor(model, tok, "memit", {"stats": {"token_budget": 512}, "target": {"steps": 2}})  # doctest: +SKIP
    >>> edits = editor.edit([EditRequest("{} lives in", "Ada", "Rome")])  # doctest: +SKIP
    >>> editor.revert()  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch

from kedit.data.requests import EditRequest, check_requests
from kedit.errors import NonFiniteError
from kedit.ledger import EditSet, Ledger
from kedit.methods.base import EditContext, ValueCache
from kedit.methods.registry import build_config, get_method
from kedit.models.adapters import get_adapter, num_layers

__all__ = ["Editor"]

log = logging.getLogger(__name__)


class Editor:
    """Edit ``model`` in place with a named method; every change goes through ``self.ledger``.

    Args:
        model, tokenizer: a Hugging Face causal LM (any supported family) and its tokenizer.
        method: preset name (see ``kedit methods``).
        config: None (family defaults), a dict (merged over the defaults, nested stage dicts
            field by field) or a config instance.
        cache_dir: cache root for statistics (default ``$KEDIT_CACHE_DIR`` or ``~/.cache/kedit``).
        progress: show progress bars for long work.
        value_cache: a :class:`ValueCache` shared between editors of the same model, so value
            targets already optimised on the same weights are reused.
    """

    def __init__(self, model, tokenizer, method: str = "memit", config: Any = None, *, cache_dir=None,
                 progress: bool = False, value_cache: ValueCache | None = None):
        self.adapter = get_adapter(model)
        self.spec = get_method(method)
        self.config = build_config(method, config, model_type=self.adapter.model_type,
                                   n_layers=num_layers(model, self.adapter))
        self.method = self.spec.method_cls(self.config)
        self.ledger = Ledger(model)
        self.ctx = EditContext(model, tokenizer, self.adapter, self.ledger.base_fingerprint, cache_dir=cache_dir,
                               progress=progress, seed=getattr(self.config, "seed", 0), value_cache=value_cache)
        self.state: dict[str, torch.Tensor] = self.method.initial_state(self.ctx)
        self._prepared = False

    @property
    def model(self):
        return self.ctx.model

    @property
    def tokenizer(self):
        return self.ctx.tokenizer

    def prepare(self) -> None:
        """Measure what must come from the unedited model (statistics, projections, templates)."""
        if not self._prepared:
            self.method.prepare(self.ctx)
            self._prepared = True

    def compute(self, requests: Sequence[EditRequest]) -> tuple[EditSet, dict[str, torch.Tensor]]:
        """Deltas for ``requests`` against the current weights; the model is left unchanged."""
        requests = check_requests(requests, "Editor.edit")
        self.prepare()
        start = time.perf_counter()
        deltas, state, info = self.method.compute(self.ctx, requests, self.state)
        seconds = time.perf_counter() - start
        for name, delta in deltas.items():
            if isinstance(delta, torch.Tensor) and not torch.isfinite(delta).all():
                raise NonFiniteError(f"{self.spec.name}: the delta for {name!r} contains NaN/inf; nothing was applied.")
        edit_set = EditSet(deltas, self.spec.name, self.config.to_dict(), tuple(requests), self.ledger.base_fingerprint,
                           meta={"seconds": seconds, **_jsonable(info)})
        return edit_set, state

    def edit(self, requests: Sequence[EditRequest]) -> EditSet:
        """Compute and apply; the method's sequential state advances (AlphaEdit's past keys)."""
        edit_set, state = self.compute(requests)
        self.ledger.apply(edit_set, batch=len(self.ledger.history), check_fingerprint=not self.ledger.history)
        self.state = state
        return edit_set

    def finalize(self) -> EditSet | None:
        """Apply the method's end-of-stream correction (PRUNE's singular-value restraint), if any."""
        finalize = getattr(self.method, "finalize", None)
        if finalize is None or not self.ledger.history:
            return None
        deltas = finalize(self.ctx)
        edit_set = EditSet(deltas, self.spec.name, self.config.to_dict(), (), self.ledger.base_fingerprint,
                           meta={"finalize": True})
        self.ledger.apply(edit_set, batch=len(self.ledger.history), check_fingerprint=False)
        return edit_set

    def revert(self) -> None:
        """Restore the original weights bit for bit and reset the sequential state."""
        self.ledger.revert()
        self.state = self.method.initial_state(self.ctx)

    def reset_state(self) -> None:
        self.state = self.method.initial_state(self.ctx)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = v
    return out
