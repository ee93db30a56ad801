"""Health monitoring of a model during a sequential editing run.

A :class:`HealthMonitor` captures, on the unedited model, the Frobenius norms of the edited weights,
the perplexity of a fixed WikiText probe and (when probes are on) the general-capability probe
scores of spec/metrics.md §5. After each batch, :meth:`HealthMonitor.check` reports the weight-norm
growth ‖W‖/‖W₀‖, the probe perplexity, the preservation loss D(t) per edited layer (methods with
key statistics, :class:`PreservationLoss`) and, every ``probe_every`` edits, the probe scores;
:meth:`HealthMonitor.should_stop` says when the probes have collapsed below a fraction of their
pre-edit level (the runner's ``auto_stop``).
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from kedit.errors import ConfigError, DataError, param_message
from kedit.eval.probes import PROBES, compact, load_probe_set, mean_f1, run_probes

__all__ = ["HealthMonitor", "PreservationLoss", "wikitext_probe_ids", "perplexity"]

log = logging.getLogger(__name__)


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def wikitext_probe_ids(tokenizer, *, text: str | None = None, n_tokens: int = 512,
                       path: str | os.PathLike | None = None) -> list[int]:
    """The first ``n_tokens`` token ids of ``text`` (default: ``data_dir()/wikitext/wiki.test.raw``
    with ``\\r`` removed), encoded with the tokenizer's default special tokens (a BOS when it adds one)."""
    if text is None:
        from kedit.paths import data_dir

        path = path or data_dir() / "wikitext" / "wiki.test.raw"
        if not os.path.exists(path):
            raise DataError(f"{path}: WikiText probe file not found (set KEDIT_DATA_DIR or pass ppl_text=).")
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read(max(4096, 16 * n_tokens)).replace("\r", "")  # a prefix is enough for n_tokens
    ids = list(tokenizer(text)["input_ids"])[:n_tokens]
    if len(ids) < 2:
        raise DataError(f"the perplexity probe text encodes to {len(ids)} token(s); at least 2 are needed.")
    return ids


def perplexity(model, ids: Sequence[int]) -> float:
    """exp(mean next-token NLL) of ``ids`` in one forward pass (positions 1 … T−1 are predicted)."""
    from kedit.models.hooks import eval_mode

    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, T)
    with torch.no_grad(), eval_mode(model):
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()  # (T-1, V)
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:])
    return float(math.exp(float(nll)))


class PreservationLoss:
    """D(t) per edited layer on the model as it is now, for any method with ``layers`` and ``stats``.

    D(t) = tr(E[kkᵀ] WᵀW) − 2 tr(E[vkᵀ] Wᵀ) + tr(E[vvᵀ]) is LyapLock's preservation loss
    (LyapLock 2025 §3.1; spec/methods.md §6.2), the per-token ‖W k − W0 k‖² on the statistics'
    keys.  LyapLock measures it for its queue; measuring it the same way for MEMIT, AlphaEdit, RECT,
    PRUNE, … is what makes the paper's Fig. 4 comparison drawable.  The moments are taken once,
    from the unedited weights, so each call costs one d_k×d_v×d_k product per layer.

    Args:
        model: the model being edited.
        adapter: its architecture adapter (weight names and layout).
        moments: ``{layer: (E[kkᵀ], E[vkᵀ], E[vvᵀ])}`` of the unedited model.
    """

    def __init__(self, model, adapter, moments: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        self.model, self.adapter = model, adapter
        self.moments = dict(moments)

    @classmethod
    def for_editor(cls, editor) -> "PreservationLoss | None":
        """The tracker of an :class:`~kedit.editor.Editor` whose config has ``layers`` and ``stats``
        (the closed-form MEMIT family), else None; call it before the first edit (W0 is captured)."""
        from kedit.methods.lyaplock import unedited_moments

        cfg = editor.config
        if not (hasattr(cfg, "layers") and hasattr(cfg, "stats")):
            return None
        stats = editor.ctx.stats(cfg.stats)
        return cls(editor.model, editor.adapter, {layer: unedited_moments(editor.ctx, stats, layer)
                                                  for layer in cfg.layers})

    def __call__(self) -> dict[int, float]:
        """``{layer: D(t)}`` for the current weights."""
        from kedit.stages.lyaplock import preservation_loss

        out = {}
        for layer, (C0, VK, VV) in self.moments.items():
            W = self.adapter.to_out_in(self.model.get_parameter(self.adapter.weight_name(layer)).detach())
            out[layer] = preservation_loss(W, C0, VK, VV)
        return out


class HealthMonitor:
    """Per-batch health of a model being edited (weight-norm growth, WikiText perplexity, probes).

    Everything is measured once at construction on the model as given, which must be unedited.

    Args:
        model, tokenizer: the model being edited and its tokenizer.
        layers_weight_names: parameter names of the edited weights (e.g. ``adapter.weight_name(l)``).
        probe_every: run the metrics.md §5 probes whenever the edit count crosses a multiple of this
            (0 = never; the pre-edit probes are then not measured either).
        probes: probe tasks (default all of :data:`~kedit.eval.probes.PROBES`).
        probe_n: items per probe task.
        ppl_text: perplexity probe text (default: the start of WikiText-2 test, ``\\r`` removed).
        ppl_tokens: tokens of the perplexity probe (capped at the model's context length).
        stop_below: auto-stop threshold: :meth:`should_stop` is true once the mean probe F1 falls
            below ``stop_below ×`` its pre-edit value (requires ``probe_every > 0``).
        per_batch: measure weight norms and perplexity at every :meth:`check` (False: only the
            probes, at their crossings).
        probe_data: pre-loaded probe items ``{task: items}`` (default: read from ``data_dir()/glue``).
        batch_size: prompts per forward pass for the probes.
        preservation: called at every per-batch check for ``{layer: D(t)}`` (a
            :class:`PreservationLoss`); None = not measured.
        pre_probes: pre-edit probe results measured earlier on these same weights (a resumed run
            reads them from its run directory); None = measure them now.

    Example:
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> mon = HealthMonitor(model, tok, layers_weight_names=["model.layers.1.mlp.down_proj.weight"],
        ...                     ppl_text="the cat sat on the mat")
        >>> mon.check(0, 1)["weight_norm_growth"]
        {'model.layers.1.mlp.down_proj.weight': 1.0}
    """

    def __init__(self, model, tokenizer, *, layers_weight_names: Sequence[str], probe_every: int = 0,
                 probes: Sequence[str] = PROBES, probe_n: int = 100, ppl_text: str | None = None,
                 ppl_tokens: int = 512, stop_below: float | None = None, per_batch: bool = True,
                 probe_data: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, batch_size: int = 16,
                 preservation: Callable[[], Mapping[int, float]] | None = None,
                 pre_probes: Mapping[str, Mapping[str, Any]] | None = None):
        owner = "HealthMonitor"
        if not isinstance(probe_every, int) or isinstance(probe_every, bool) or probe_every < 0:
            raise ConfigError(param_message("probe_every", owner, "an int >= 0", probe_every))
        if not isinstance(probe_n, int) or isinstance(probe_n, bool) or probe_n < 1:
            raise ConfigError(param_message("probe_n", owner, "a positive int", probe_n))
        if not isinstance(ppl_tokens, int) or isinstance(ppl_tokens, bool) or ppl_tokens < 2:
            raise ConfigError(param_message("ppl_tokens", owner, "an int >= 2", ppl_tokens))
        if stop_below is not None:
            if isinstance(stop_below, bool) or not isinstance(stop_below, (int, float)) or not stop_below > 0:
                raise ConfigError(param_message("stop_below", owner, "None or a float > 0", stop_below))
            if probe_every == 0:
                raise ConfigError("HealthMonitor: 'stop_below' needs the probes; set probe_every > 0 "
                                  f"(got probe_every=0, stop_below={stop_below!r}).")
        names = list(layers_weight_names)
        params = dict(model.named_parameters())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ConfigError(param_message("layers_weight_names", owner, "parameter names of the model", unknown))
        self.model, self.tokenizer = model, tokenizer
        self.weight_names = names
        self.probe_every, self.probe_n, self.stop_below = probe_every, probe_n, stop_below
        self.per_batch = per_batch
        self.probes = tuple(probes)
        self.batch_size = batch_size
        self.preservation = preservation
        self.last_edits = 0  # edit count at the previous check (the runner sets it when resuming)

        self.base_norms = {n: self._norm(n) for n in names}
        limit = _max_positions(model)
        self.ppl_ids = wikitext_probe_ids(tokenizer, text=ppl_text,
                                          n_tokens=min(ppl_tokens, limit) if limit else ppl_tokens)
        self.base_perplexity = perplexity(model, self.ppl_ids)
        self.probe_data: dict[str, list[Mapping[str, Any]]] | None = None
        self.pre_probes: dict[str, dict[str, Any]] | None = None
        self.last_probes: dict[str, dict[str, Any]] | None = None  # full results of the latest probe run
        if probe_every > 0:
            if probe_data is None:
                probe_data = {task: load_probe_set(task, n=probe_n) for task in self.probes}
            self.probe_data = {task: list(probe_data[task])[:probe_n] for task in self.probes}
            self.pre_probes = self.run_probes() if pre_probes is None else {k: dict(v) for k, v in pre_probes.items()}
            log.info("pre-edit probes: %s", _fmt_probes(self.pre_probes))

    # -- measurements ------------------------------------------------------------------------------
    def _norm(self, name: str) -> float:
        return float(self.model.get_parameter(name).detach().float().norm())

    def weight_norm_growth(self) -> dict[str, float]:
        """``{name: ‖W‖_F / ‖W₀‖_F}`` for every monitored weight."""
        return {n: (self._norm(n) / base if base > 0 else float("nan")) for n, base in self.base_norms.items()}

    def perplexity(self) -> float:
        """Perplexity of the fixed WikiText probe on the model as it is now."""
        return perplexity(self.model, self.ppl_ids)

    def run_probes(self) -> dict[str, dict[str, Any]]:
        """Full :func:`~kedit.eval.probes.run_probes` results on the model as it is now."""
        if self.probe_data is None:
            raise ConfigError("HealthMonitor.run_probes: probes are off (probe_every=0).")
        return run_probes(self.model, self.tokenizer, self.probes, n=self.probe_n, data=self.probe_data,
                          batch_size=self.batch_size)

    def is_crossing(self, edits_so_far: int) -> bool:
        """True when ``edits_so_far // probe_every`` exceeds its value at the previous check."""
        return self.probe_every > 0 and edits_so_far // self.probe_every > self.last_edits // self.probe_every

    def check(self, batch_index: int, edits_so_far: int) -> dict[str, Any]:
        """Health after a batch: ``{batch, edits, weight_norm_growth, perplexity, seconds}`` (plus
        ``preservation_loss`` {layer: D(t)} with a ``preservation`` tracker) and, when the edit count
        crosses a multiple of ``probe_every``, ``probes`` ({task: {accuracy, f1, mcc, f1_new,
        invalid}}) and ``probe_mean_f1``."""
        t0 = time.perf_counter()
        result: dict[str, Any] = {"batch": batch_index, "edits": edits_so_far}
        if self.per_batch:
            result["weight_norm_growth"] = self.weight_norm_growth()
            result["perplexity"] = self.perplexity()
            if self.preservation is not None:
                result["preservation_loss"] = dict(self.preservation())
        if self.is_crossing(edits_so_far):
            full = self.last_probes = self.run_probes()
            result["probes"] = compact(full)
            result["probe_mean_f1"] = mean_f1(full)
            log.info("probes after %d edit(s): %s", edits_so_far, _fmt_probes(full))
        self.last_edits = edits_so_far
        result["seconds"] = round(time.perf_counter() - t0, 6)
        return result

    def pre_mean_f1(self) -> float | None:
        return mean_f1(self.pre_probes) if self.pre_probes else None

    def should_stop(self, result: Mapping[str, Any]) -> bool:
        """True when ``stop_below`` is set, ``result`` holds probes and their mean F1 is below
        ``stop_below ×`` the pre-edit mean F1."""
        if self.stop_below is None or "probes" not in result:
            return False
        now, pre = mean_f1(result["probes"]), self.pre_mean_f1()
        if now is None or pre is None:
            return False
        return now < self.stop_below * pre

    def summary(self) -> dict[str, Any]:
        """Pre-edit reference values (for ``summary.json``)."""
        return {"perplexity_pre": self.base_perplexity, "weight_names": list(self.weight_names),
                "ppl_tokens": len(self.ppl_ids), "probe_every": self.probe_every, "probe_n": self.probe_n,
                "stop_below": self.stop_below}


def _fmt_probes(results: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{task} acc={r['accuracy']:.2f} f1={r['f1']:.2f}" for task, r in results.items()
                     if r.get("accuracy") is not None)
