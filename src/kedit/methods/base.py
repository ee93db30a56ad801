"""What every method preset implements, and the context it runs in."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import torch

from kedit.config import Config, field
from kedit.data.requests import EditRequest
from kedit.models.adapters import Adapter
from kedit.stages.contexts import generate_context_templates
from kedit.stages.values import ValueResult, optimise_values
from kedit.stats.cache import StatsCache

__all__ = ["EditContext", "EditMethod", "MultiLayerConfig", "StatsConfig", "ValueTargetConfig", "ValueCache"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StatsConfig(Config):
    """Key-statistics options (affect results, so they are config fields, STYLE.md M5).

    Args:
        corpus: text file or folder; empty = WikiText-2 test from the shared data folder.
        token_budget: tokens used for E[kkᵀ] (FastMEMIT: a few × d_k suffice).
        seq_len: length of the packed rows.
    """

    corpus: str = field("", "Text file/folder for key statistics; '' = shared WikiText-2 test.")
    token_budget: int = field(20_000, "Tokens read for E[kkᵀ] (a few × d_k is enough).")
    seq_len: int = field(256, "Packed row length in tokens.")

    def __post_init__(self) -> None:
        self._check("token_budget", self.token_budget > 0, "a positive int")
        self._check("seq_len", self.seq_len > 1, "an int > 1")


@dataclasses.dataclass(frozen=True)
class ValueTargetConfig(Config):
    """Value optimisation (methods.md §1.3).

    Args:
        steps: Adam iterations (v_num_grad_steps).
        lr: Adam learning rate (v_lr).
        clamp_norm_factor: ‖δ‖ ≤ factor · ‖h_init‖.
        kl_factor: weight of KL(p_cur ‖ p_init) on the KL prompt.
        weight_decay: v_weight_decay (times ‖δ‖/‖h_init‖²).
        early_stop_loss: stop a request once its loss is below this.
        kl_prompt: template of the essence prompt.
        context_templates: [[length, count], ...] of sampled prefixes (plus "{}").
        prefix_cache: reuse the prefix keys/values across optimisation steps (an exact speed-up).
        compute_dtype: ``"bfloat16"`` runs the forward passes of the optimisation under bfloat16
            autocast; h_init, δ, the loss and Adam stay in float32.  Not in any paper: an option for
            long sequential runs on CPUs with bfloat16 matrix units, where those matmuls (80 % of an
            edit's time) run 2-3× faster; the targets differ from float32 ones by bfloat16 rounding.
    """

    steps: int = field(25, "Adam iterations for δ (v_num_grad_steps).")
    lr: float = field(0.5, "Adam learning rate for δ (v_lr).")
    clamp_norm_factor: float = field(4.0, "Project δ onto ‖δ‖ ≤ factor·‖h_init‖ after each step.")
    kl_factor: float = field(0.0625, "Weight of the KL term on the essence prompt.")
    weight_decay: float = field(1e-3, "v_weight_decay: weight of ‖δ‖/‖h_init‖².")
    early_stop_loss: float = field(5e-2, "Stop optimising a request once its loss is below this.")
    kl_prompt: str = field("{} is a", "Essence prompt for the KL term ('{}' = subject).")
    context_templates: list[list[int]] = field([[10, 5]], "[[length, count], ...] sampled context prefixes.")
    prefix_cache: bool = field(True, "Reuse the keys/values of positions before the edit token across steps "
                                     "(same result, several times faster).")
    compute_dtype: str = field("float32", "'bfloat16': autocast the optimisation's forward passes (faster on "
                                          "CPUs with bfloat16 units; targets change by rounding).")

    def __post_init__(self) -> None:
        self._check("steps", self.steps >= 1, "an int >= 1")
        self._check("lr", self.lr > 0, "a float > 0")
        self._check("clamp_norm_factor", self.clamp_norm_factor > 0, "a float > 0")
        self._check("kl_factor", self.kl_factor >= 0, "a float >= 0")
        self._check("weight_decay", self.weight_decay >= 0, "a float >= 0")
        self._check("compute_dtype", self.compute_dtype in ("float32", "bfloat16"), "'float32' or 'bfloat16'")
        self._check("context_templates", all(len(x) == 2 and x[0] > 0 and x[1] >= 0 for x in self.context_templates),
                    "a list of [length > 0, count >= 0] pairs")

    def options(self):
        from kedit.stages.values import ValueOptions

        return ValueOptions(self.steps, self.lr, self.clamp_norm_factor, self.kl_factor, self.weight_decay,
                            self.early_stop_loss, self.kl_prompt, self.prefix_cache, self.compute_dtype)


@dataclasses.dataclass(frozen=True)
class MultiLayerConfig(Config):
    """Fields shared by the presets that spread a value target over several MLP layers.

    Args:
        layers: edited layers (MLP output projections); the value target sits after the last.
        target: value optimisation options.
        stats: key statistics options.
        seed: seed of the context templates.
    """

    layers: list[int] = field([1, 2], "Edited layers; the value target sits after the last one.")
    target: ValueTargetConfig = field(ValueTargetConfig(), "Value optimisation options.")
    stats: StatsConfig = field(StatsConfig(), "Key statistics options.")
    seed: int = field(0, "Seed of the sampled context templates.")

    def __post_init__(self) -> None:
        self._check("layers", bool(self.layers) and all(isinstance(x, int) and x >= 0 for x in self.layers)
                    and len(set(self.layers)) == len(self.layers), "a non-empty list of distinct layer indices >= 0")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None):
        from kedit.methods.defaults import default_memit_layers

        return cls(layers=default_memit_layers(n_layers))


class ValueCache:
    """In-memory cache of value targets keyed by content: (current weights fingerprint, request,
    value options, layer, site, context templates).  Batched optimisation equals one-by-one
    optimisation, so cached columns can be mixed with fresh ones."""

    def __init__(self) -> None:
        self._store: dict[tuple, tuple[torch.Tensor, torch.Tensor, float, float, int]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get_or_compute(self, ctx: "EditContext", requests, templates, options, *, layer: int, site: str) -> ValueResult:
        from kedit.models.fingerprint import weights_fingerprint

        fp = weights_fingerprint(ctx.model)
        keys = [(fp, repr(r.to_dict()), options, layer, site, tuple(templates)) for r in requests]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = optimise_values(ctx.model, ctx.tokenizer, ctx.adapter, [requests[i] for i in missing], templates,
                                    options, layer=layer, site=site)
            for j, i in enumerate(missing):
                self._store[keys[i]] = (fresh.z[:, j].clone(), fresh.h_init[:, j].clone(), fresh.loss[j],
                                        fresh.nll[j], fresh.steps[j])
        cols = [self._store[k] for k in keys]
        return ValueResult(z=torch.stack([c[0] for c in cols], 1), h_init=torch.stack([c[1] for c in cols], 1),
                           loss=[c[2] for c in cols], nll=[c[3] for c in cols], steps=[c[4] for c in cols])


@dataclasses.dataclass
class EditContext:
    """Everything a method needs besides its config: explicit objects, no globals."""

    model: Any
    tokenizer: Any
    adapter: Adapter
    fingerprint: str
    cache_dir: Any = None
    progress: bool = False
    seed: int = 0
    value_cache: "ValueCache | None" = None
    _stats: dict = dataclasses.field(default_factory=dict)
    _templates: dict = dataclasses.field(default_factory=dict)
    _base: dict = dataclasses.field(default_factory=dict)

    def base_weight(self, name: str) -> torch.Tensor:
        """A copy of parameter ``name`` as it was at its first request; methods call this from
        ``prepare`` (on the unedited model) for the weights their statistics are tied to."""
        if name not in self._base:
            self._base[name] = dict(self.model.named_parameters())[name].detach().clone()
        return self._base[name]

    def stats(self, config: StatsConfig) -> StatsCache:
        """The statistics cache of the unedited model for ``config`` (built once per context)."""
        key = config.config_hash()
        if key not in self._stats:
            self._stats[key] = StatsCache(
                self.model, self.tokenizer, self.adapter, self.fingerprint, corpus=config.corpus or None,
                token_budget=config.token_budget, seq_len=config.seq_len, cache_dir=self.cache_dir,
                progress=self.progress,
            )
        return self._stats[key]

    def values(self, requests: Sequence[EditRequest], templates: Sequence[str], options, *, layer: int,
               site: str = "block"):
        """Value targets, reused from ``value_cache`` when the same request was optimised on the
        same weights with the same options (independent editing recomputes nothing)."""
        start = time.perf_counter()
        if self.value_cache is None:
            result = optimise_values(self.model, self.tokenizer, self.adapter, requests, templates, options,
                                     layer=layer, site=site)
        else:
            result = self.value_cache.get_or_compute(self, requests, templates, options, layer=layer, site=site)
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    def templates(self, spec: list[list[int]], seed: int) -> list[str]:
        """Context templates generated once per (spec, seed) from the unedited model."""
        key = (tuple(tuple(x) for x in spec), seed)
        if key not in self._templates:
            self._templates[key] = generate_context_templates(self.model, self.tokenizer, spec, seed=seed)
        return self._templates[key]


class EditMethod:
    """A preset: turns requests into weight deltas without changing the model.

    Subclasses implement :meth:`compute`; :meth:`prepare` precomputes what must come from the
    unedited model (statistics, projections) and :meth:`initial_state` the sequential state
    (AlphaEdit's past-key sums).  ``tags`` drive the conformance battery.
    """

    tags: frozenset[str] = frozenset()

    def __init__(self, config: Config):
        self.config = config

    def prepare(self, ctx: EditContext) -> None:
        """Compute everything that must be measured on the unedited model (default: nothing)."""

    def initial_state(self, ctx: EditContext) -> dict[str, torch.Tensor]:
        return {}

    def compute(self, ctx: EditContext, requests: Sequence[EditRequest], state: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        """Return (deltas by parameter name, new state, info); the model is unchanged afterwards."""
        raise NotImplementedError
