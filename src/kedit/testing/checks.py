"""The conformance battery every editing method passes (STYLE.md S1, S2).

Each check is a small function ``check_xxx(name, model, tok, config, *, cache_dir, corpus)`` that
raises AssertionError with a message saying what broke.  Checks test invariants, not numbers:

(a) ``check_config_roundtrip``            config ↔ dict / YAML / copy / pickle; unknown keys raise
(b) ``check_compute_leaves_model_unchanged`` ``Editor.compute`` is pure (state_dict bit for bit)
(b') ``check_global_rng_untouched``      ``Editor.compute`` does not reseed or consume torch's global RNG
(c) ``check_revert_bit_exact``            apply then revert restores every tensor bit for bit
(d) ``check_deterministic_deltas``        two fresh Editors, same seed → identical deltas
(e) ``check_invalid_requests``            empty list / subject not in prompt / empty target raise DataError
(f) ``check_nan_stats``, ``check_inf_stats`` NaN / inf in E[kkᵀ] raise NonFiniteError before any weight changes
(g) ``check_no_leftover_hooks``           no forward (pre-)hooks remain after editing
(h) ``check_flags_restored``              requires_grad, .grad and training flags are as before
(i) ``check_save_load_deltas``            deltas survive save_edit_set / load_edit_set unchanged
(j) ``check_delta_dtype_device``          delta dtype/device/shape match the weight (float32 and bfloat16)
(k) ``check_target_logprob_rises``        a cheap edit lowers the target's NLL on a tiny model
(l) ``check_value_batch_invariance``      value targets of a batch equal those computed one by one

Checks are picked by the method's tags (``deterministic``, ``needs_stats``, ``batched``, ...) and a
method's ``expected_failures`` turn into skips with their reason, never silent drops.

Example:
    >>> import tempfile
    >>> from kedit.testing.tiny import tiny_model
    >>> from kedit.testing.checks import check_method, write_tiny_corpus
    >>> tmp = tempfile.mkdtemp()
    >>> model, tok = tiny_model("llama")
    >>> corpus = write_tiny_corpus(tmp + "/corpus.txt")
    >>> results = check_method("ft", model, tok, cache_dir=tmp, corpus=corpus)  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import functools
import logging
import pickle
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from kedit.config import Config
from kedit.data.requests import EditRequest
from kedit.editor import Editor
from kedit.errors import ConfigError, DataError, NonFiniteError
from kedit.methods.registry import build_config, get_method
from kedit.models.adapters import get_adapter, num_layers

__all__ = ["check_method", "iter_checks", "CHEAP_CONFIGS", "cheap_config", "tiny_requests", "write_tiny_corpus",
           "SkipCheck", "SkippedCheckWarning", "CHECKS"]

log = logging.getLogger(__name__)

_STATS = {"token_budget": 2000, "seq_len": 64}
_TARGET = {"steps": 4, "context_templates": [[5, 1]]}
#: Per-method settings that make the battery fast on tiny models (the corpus path is added by
#: :func:`cheap_config`).  AlphaEdit uses a relative threshold: on tiny random models every
#: eigenvalue of E[kkᵀ] is below the absolute 2e-2, which would make P the identity.
CHEAP_CONFIGS: dict[str, dict[str, Any]] = {
    "memit": {"layers": [1, 2], "stats": _STATS, "target": _TARGET},
    **{name: {"layers": [1, 2], "nullspace_threshold": 1e-2, "relative_threshold": True, "l2": 1.0,
              "stats": _STATS, "target": _TARGET}
       for name in ("alphaedit", "lyaplock+alphaedit")},
    "rome": {"layer": 1, "stats": _STATS, "target": _TARGET},
    "ft": {"layer": 1, "steps": 4},
    "critical_path": {"epochs": 3, "topk": 4},
    **{name: {"target": {"steps": 8}, "fit": {"layers": [1], "steps": 8, "lr": 1e-2, "preservation_n": 4}}
       for name in ("unke", "nake")},
    **{name: {"window_size": 4, "target": {"steps": 6}, "fit": {"layers": [1], "steps": 8, "lr": 1e-2,
                                                                  "preservation_n": 4}}
       for name in ("anyedit_unke", "muke_unke")},
    **{name: {"window_size": 4, "layers": [1, 2], "target": {"steps": 6}, "stats": _STATS}
       for name in ("anyedit", "muke", "muke_vanilla")},
}


class SkipCheck(Exception):
    """Raised by a check that does not apply or is a declared expected failure."""


class SkippedCheckWarning(UserWarning):
    """Issued by :func:`check_method` for every skipped check ("Skipping check_x: reason")."""


def cheap_config(name: str, corpus: str | Path | None) -> dict[str, Any]:
    """The cheap tiny-model config dict of method ``name`` with the statistics corpus filled in.

    A method without a ``CHEAP_CONFIGS`` entry gets cheap ``stats``/``target`` sections when its
    config class has those fields (so a new preset built from the shared stages is fast too).
    """
    fields = set(get_method(name).config_cls.field_names())
    out = copy.deepcopy(CHEAP_CONFIGS.get(name, {}))
    if "stats" in fields:
        out["stats"] = {**_STATS, **out.get("stats", {}), "corpus": str(corpus) if corpus else ""}
    if "target" in fields:
        out.setdefault("target", dict(_TARGET))
    return out


def kill_at_edit(monkeypatch, call: int) -> None:
    """Make ``Editor.edit`` raise KeyboardInterrupt on its ``call``-th call (1-based), a simulated kill
    between two batches of a sequential run; ``monkeypatch.undo()`` or a new patch restores it."""
    import kedit.editor

    original, calls = kedit.editor.Editor.edit, {"n": 0}

    def edit(self, requests):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("simulated kill")
        return original(self, requests)

    monkeypatch.setattr(kedit.editor.Editor, "edit", edit)


def tiny_requests() -> list[EditRequest]:
    """Three invented facts.  The subject ends each prompt, so on a tiny random model the edited
    position directly predicts the target (edits measurably raise the target's log-prob)."""
    return [
        EditRequest(prompt="The birthplace of {}", subject="Ada Quill", target_new="Paris", target_true="Oslo",
                    rephrases=("Ada Quill was born in",), locality=(("The birthplace of Bo Lind", "Rome"),),
                    id="tiny-0"),
        EditRequest(prompt="The instrument of {}", subject="Mira Vos", target_new="violin", target_true="drums",
                    rephrases=("Mira Vos plays the",), locality=(("The instrument of Tom Ek", "flute"),),
                    id="tiny-1"),
        EditRequest(prompt="The capital city of {}", subject="Zendia", target_new="Lumen", target_true="Vorta",
                    rephrases=("Zendia is governed from",), locality=(("The capital city of Norland", "Hale"),),
                    id="tiny-2"),
    ]


_SUBJECTS = ["The old miller", "A young painter", "The river", "My neighbour", "The small town", "A tired doctor",
             "The north wind", "Our teacher", "The harbour master", "A quiet student", "The baker", "The gardener"]
_VERBS = ["walked past", "looked at", "spoke about", "remembered", "carried", "painted", "found", "waited near",
          "wrote about", "followed", "cleaned", "counted"]
_OBJECTS = ["the stone bridge", "a blue boat", "the long road", "an empty market", "the bright lamp", "a wooden box",
            "the green hills", "a letter from home", "the busy station", "an old map", "the winter garden",
            "a basket of apples"]
_ENDINGS = ["before the rain began", "in the early morning", "after a long day", "while the bells rang",
            "under a grey sky", "with great care", "for the last time", "as the sun went down"]


def write_tiny_corpus(path: str | Path, *, n_sentences: int = 60, seed: int = 0) -> Path:
    """Write ~3 KB of invented English sentences (deterministic) to ``path``; return the path."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        lines.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- helpers ----------------------------------------------------------------------------------
def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state_equal(model, snap: dict[str, torch.Tensor], what: str) -> None:
    state = model.state_dict()
    if set(state) != set(snap):
        raise AssertionError(f"{what}: state_dict keys changed: +{sorted(set(state) - set(snap))} "
                             f"-{sorted(set(snap) - set(state))}")
    differ = sorted(k for k, v in snap.items() if v.dtype != state[k].dtype or not torch.equal(v, state[k]))
    if differ:
        raise AssertionError(f"{what}: {len(differ)} tensor(s) differ bit-for-bit from before, e.g. {differ[:5]}")


def _hook_counts(model) -> dict[str, int]:
    """Module name → number of forward, forward-pre and backward hooks (modules without hooks omitted)."""
    counts = {}
    for n, m in model.named_modules():
        count = len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        if count:
            counts[n or "<root>"] = count
    return counts


def _new_hooks(model, before: dict[str, int]) -> list[str]:
    return [n for n, c in _hook_counts(model).items() if c > before.get(n, 0)]


def _editor(name, model, tok, config, cache_dir) -> Editor:
    return Editor(model, tok, name, config, cache_dir=cache_dir)


def _stats_layers(cfg, model, adapter) -> list[int]:
    if hasattr(cfg, "layers"):
        return list(cfg.layers)
    if hasattr(cfg, "layer"):
        return [cfg.layer]
    return list(range(num_layers(model, adapter)))


def _dense(delta, param) -> torch.Tensor:
    return delta if isinstance(delta, torch.Tensor) else delta.to_dense(tuple(param.shape), param.dtype)


# -- the checks ---------------------------------------------------------------------------------
def check_config_roundtrip(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(a) dict / YAML / copy / deepcopy / pickle round trips; unknown keys (top level and nested) raise."""
    adapter = get_adapter(model)
    cfg = build_config(name, config, model_type=adapter.model_type, n_layers=num_layers(model, adapter))
    cls = type(cfg)
    data = cfg.to_dict()
    again = {
        "from_dict(to_dict())": cls.from_dict(data),
        "copy.copy": copy.copy(cfg),
        "copy.deepcopy": copy.deepcopy(cfg),
        "pickle": pickle.loads(pickle.dumps(cfg)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        cfg.to_yaml(path)
        again["from_yaml(to_yaml())"] = cls.from_yaml(path)
    for how, other in again.items():
        if other != cfg or other.config_hash() != cfg.config_hash():
            raise AssertionError(f"{name}: {cls.__name__} does not survive {how}: {other!r} != {cfg!r}")
    bad = "no_such_option"
    cases = {"top level": {**data, bad: 1}}
    for key, value in data.items():
        if isinstance(getattr(cfg, key), Config):
            cases[f"nested {key!r}"] = {**data, key: {**value, bad: 1}}
    for where, broken in cases.items():
        try:
            cls.from_dict(broken)
        except ConfigError as exc:
            if bad not in str(exc):
                raise AssertionError(f"{name}: the ConfigError for an unknown {where} key does not name it: {exc}")
        else:
            raise AssertionError(f"{name}: an unknown {where} key {bad!r} was accepted by {cls.__name__}.from_dict")
    try:
        _editor(name, model, tok, {bad: 1}, cache_dir)
    except ConfigError as exc:
        if bad not in str(exc):
            raise AssertionError(f"{name}: Editor's ConfigError does not name the unknown key: {exc}")
    else:
        raise AssertionError(f"{name}: Editor accepted the unknown config key {bad!r}")


def check_compute_leaves_model_unchanged(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(b) ``Editor.compute`` returns deltas and leaves ``model.state_dict()`` bit for bit unchanged."""
    editor = _editor(name, model, tok, config, cache_dir)
    snap = _snapshot(model)
    edit_set, _ = editor.compute(tiny_requests())
    _assert_state_equal(model, snap, f"{name}: Editor.compute changed the model")
    if not edit_set.deltas:
        raise AssertionError(f"{name}: Editor.compute returned no deltas")
    if editor.ledger.history:
        raise AssertionError(f"{name}: Editor.compute recorded an edit in the ledger")


def check_global_rng_untouched(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(b') ``Editor.compute`` leaves torch's global RNG state as it was (seeding is the method's own
    business: fork the RNG, never reseed the caller's; STYLE.md §6.1 "no process-global state")."""
    editor = _editor(name, model, tok, config, cache_dir)
    state = torch.get_rng_state()
    editor.compute(tiny_requests())
    if not torch.equal(state, torch.get_rng_state()):
        torch.set_rng_state(state)
        raise AssertionError(f"{name}: Editor.compute changed torch's global RNG state (reseeded or consumed it); "
                             "use torch.random.fork_rng() around seeded work")


def check_revert_bit_exact(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(c) edit changes the weights; revert restores every tensor bit for bit (and the method state)."""
    spec = get_method(name)
    editor = _editor(name, model, tok, config, cache_dir)
    snap = _snapshot(model)
    first = editor.edit(tiny_requests())
    if not any(not torch.equal(v, model.state_dict()[k]) for k, v in snap.items()):
        raise AssertionError(f"{name}: Editor.edit did not change any tensor (deltas {sorted(first.deltas)})")
    editor.revert()
    _assert_state_equal(model, snap, f"{name}: apply + revert did not restore the model")
    if "stateful" in spec.tags:
        initial = editor.method.initial_state(editor.ctx)
        if sorted(editor.state) != sorted(initial):
            raise AssertionError(f"{name}: revert left sequential state {sorted(editor.state)} (expected "
                                 f"{sorted(initial)})")
        second = editor.edit(tiny_requests())
        params = dict(model.named_parameters())
        for key, delta in first.deltas.items():
            if not torch.equal(_dense(second.deltas[key], params[key]), _dense(delta, params[key])):
                raise AssertionError(f"{name}: after revert, re-editing gives a different delta for {key!r}; "
                                     "the sequential state was not reset")
        editor.revert()
        _assert_state_equal(model, snap, f"{name}: second apply + revert did not restore the model")


def check_deterministic_deltas(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(d) two fresh Editors with the same seed give identical deltas (torch.equal)."""
    requests = tiny_requests()
    a, _ = _editor(name, model, tok, config, cache_dir).compute(requests)
    b, _ = _editor(name, model, tok, config, cache_dir).compute(requests)
    if sorted(a.deltas) != sorted(b.deltas):
        raise AssertionError(f"{name}: two runs edit different tensors: {sorted(a.deltas)} vs {sorted(b.deltas)}")
    params = dict(model.named_parameters())
    da = {k: _dense(v, params[k]) for k, v in a.deltas.items()}
    db = {k: _dense(v, params[k]) for k, v in b.deltas.items()}
    differ = [k for k in da if not torch.equal(da[k], db[k])]
    if differ:
        worst = max(float((da[k].double() - db[k].double()).abs().max()) for k in differ)
        raise AssertionError(f"{name}: two runs with the same seed differ on {differ} (max |diff| {worst:.3g})")


def check_invalid_requests(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(e) empty request list, subject missing from the prompt, empty target → DataError with the documented text."""
    editor = _editor(name, model, tok, config, cache_dir)
    snap = _snapshot(model)
    tampered = tiny_requests()[0]  # valid at construction, emptied afterwards: Editor.edit re-validates
    object.__setattr__(tampered, "target_new", "")
    cases: list[tuple[str, str, Callable[[], Any]]] = [
        ("Editor.compute([])", "non-empty list of EditRequest", lambda: editor.compute([])),
        ("Editor.edit([])", "non-empty list of EditRequest", lambda: editor.edit([])),
        ("Editor.edit(['text'])", "must be an EditRequest", lambda: editor.edit(["Ada lives in Rome"])),
        ("Editor.edit(tampered request)", "Editor.edit: record 0: field 'target_new' must be non-empty",
         lambda: editor.edit([tampered])),
        ("subject not in prompt", "field 'subject' must occur in 'prompt'",
         lambda: EditRequest.from_text("Ada lives in", "Bob", "Rome")),
        ("prompt without '{}'", "must contain exactly one '{}'",
         lambda: EditRequest(prompt="Ada lives in", subject="Ada", target_new="Rome")),
        ("empty target", "field 'target_new' must be non-empty",
         lambda: EditRequest(prompt="{} lives in", subject="Ada", target_new="")),
        ("blank target", "field 'target_new' must be non-empty",
         lambda: EditRequest(prompt="{} lives in", subject="Ada", target_new="   ")),
    ]
    for what, message, call in cases:
        try:
            call()
        except DataError as exc:
            if message not in str(exc):
                raise AssertionError(f"{name}: {what}: DataError message {str(exc)!r} lacks {message!r}")
        else:
            raise AssertionError(f"{name}: {what} did not raise DataError")
    _assert_state_equal(model, snap, f"{name}: an invalid request changed the model")


def check_nonfinite_stats(name, model, tok, config, *, cache_dir, corpus=None, bad: float = float("nan")) -> None:
    """(f) NaN (or, with ``bad=inf``, inf) in the cached E[kkᵀ] raises NonFiniteError and leaves
    every weight unchanged.

    The statistics are corrupted after they are measured but before ``prepare`` (so quantities
    derived from them, e.g. AlphaEdit's projector, see the corruption too).
    """
    editor = _editor(name, model, tok, config, cache_dir)
    if not hasattr(editor.config, "stats"):
        raise SkipCheck(f"{type(editor.config).__name__} has no 'stats' field to corrupt")
    stats = editor.ctx.stats(editor.config.stats)
    layers = _stats_layers(editor.config, model, editor.adapter)
    stats.ensure(layers)
    for layer in layers:
        C0 = stats._memory[layer].clone()
        C0[0, 0] = bad
        stats._memory[layer] = C0
    snap, hooks = _snapshot(model), _hook_counts(model)
    try:
        editor.edit(tiny_requests())
    except NonFiniteError:
        pass
    except Exception as exc:  # noqa: BLE001  (any other type is the failure being reported)
        raise AssertionError(f"{name}: {bad} in the key statistics raised {type(exc).__name__} ({exc}), "
                             "not NonFiniteError") from exc
    else:
        editor.revert()
        raise AssertionError(f"{name}: {bad} in the key statistics of layers {layers} did not raise NonFiniteError")
    _assert_state_equal(model, snap, f"{name}: a failed edit ({bad} statistics) changed the model")
    if editor.ledger.history:
        raise AssertionError(f"{name}: a failed edit was recorded in the ledger")
    if _new_hooks(model, hooks):
        raise AssertionError(f"{name}: hooks left after a failed edit on {_new_hooks(model, hooks)[:5]}")


def check_no_leftover_hooks(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(g) no forward / forward-pre / backward hooks remain on any module after compute, edit, revert."""
    editor = _editor(name, model, tok, config, cache_dir)
    before = _hook_counts(model)
    editor.compute(tiny_requests())
    after_compute = _new_hooks(model, before)
    editor.edit(tiny_requests())
    after_edit = _new_hooks(model, before)
    editor.revert()
    for when, new in (("compute", after_compute), ("edit", after_edit)):
        if new:
            raise AssertionError(f"{name}: hooks left on {new[:5]} after {when}")


def check_flags_restored(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(h) per-parameter ``requires_grad`` and ``.grad`` and per-module ``training`` are as before.

    The model is put in a mixed state first (train mode with one eval submodule, every third
    parameter frozen) so a method that merely calls ``model.eval()`` / ``requires_grad_(True)``
    is caught; the caller's flags are restored afterwards.
    """
    params = list(model.named_parameters())
    modules = list(model.named_modules())
    original = ([p.requires_grad for _, p in params], [m.training for _, m in modules])
    editor = None
    try:
        model.train()
        modules[len(modules) // 2][1].eval()
        for i, (_, p) in enumerate(params):
            p.requires_grad_(i % 3 != 0)
        want_grad = [p.requires_grad for _, p in params]
        want_train = [m.training for _, m in modules]
        editor = _editor(name, model, tok, config, cache_dir)
        steps = (("compute", lambda: editor.compute(tiny_requests())),
                 ("edit", lambda: editor.edit(tiny_requests())), ("revert", editor.revert))
        for step, run in steps:
            run()
            bad_rg = [n for (n, p), w in zip(params, want_grad) if p.requires_grad != w]
            bad_tr = [n or "<root>" for (n, m), w in zip(modules, want_train) if m.training != w]
            bad_gr = [n for n, p in params if p.grad is not None]
            if bad_rg or bad_tr or bad_gr:
                raise AssertionError(
                    f"{name}: after {step}: requires_grad changed on {bad_rg[:5]}, training flag changed on "
                    f"{bad_tr[:5]}, .grad left set on {bad_gr[:5]}"
                )
    finally:
        if editor is not None and editor.ledger.history:
            editor.revert()
        for (_, p), flag in zip(params, original[0]):
            p.requires_grad_(flag)
            p.grad = None
        for (_, m), flag in zip(modules, original[1]):
            m.training = flag


def check_save_load_deltas(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(i) deltas, method, config and request ids survive save_edit_set / load_edit_set unchanged."""
    from kedit.ledger import load_edit_set, save_edit_set

    edit_set, _ = _editor(name, model, tok, config, cache_dir).compute(tiny_requests())
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_edit_set(save_edit_set(edit_set, Path(tmp) / "edit"))
    if sorted(loaded.deltas) != sorted(edit_set.deltas):
        raise AssertionError(f"{name}: saved {sorted(edit_set.deltas)} but loaded {sorted(loaded.deltas)}")
    params = dict(model.named_parameters())
    for key, delta in edit_set.deltas.items():
        a, b = _dense(delta, params[key]), _dense(loaded.deltas[key], params[key])
        if a.dtype != b.dtype or not torch.equal(a, b):
            raise AssertionError(f"{name}: delta {key!r} changed through save/load ({a.dtype} → {b.dtype})")
    if (loaded.method, loaded.config, loaded.request_ids(), loaded.base_fingerprint) != (
            edit_set.method, edit_set.config, edit_set.request_ids(), edit_set.base_fingerprint):
        raise AssertionError(f"{name}: method/config/request ids/fingerprint changed through save/load")


def check_delta_dtype_device(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(j) every delta has its weight's shape, dtype and device, on float32 and bfloat16 copies."""
    dtype = next(model.parameters()).dtype
    variants = [(str(dtype), model)]
    if dtype != torch.bfloat16:
        variants.append(("bfloat16", copy.deepcopy(model).to(torch.bfloat16)))
    for label, m in variants:
        editor = _editor(name, m, tok, config, cache_dir)
        edit_set, _ = editor.compute(tiny_requests())
        params = dict(m.named_parameters(remove_duplicate=False))
        for key, delta in edit_set.deltas.items():
            param = params[key]
            values = delta if isinstance(delta, torch.Tensor) else delta.values
            if isinstance(delta, torch.Tensor) and tuple(delta.shape) != tuple(param.shape):
                raise AssertionError(f"{name} ({label}): delta {key!r} has shape {tuple(delta.shape)}, "
                                     f"weight {tuple(param.shape)}")
            if values.dtype != param.dtype or values.device != param.device:
                raise AssertionError(f"{name} ({label}): delta {key!r} is {values.dtype} on {values.device}, "
                                     f"weight is {param.dtype} on {param.device}")
            if not torch.isfinite(values).all():
                raise AssertionError(f"{name} ({label}): delta {key!r} is not finite")


def check_target_logprob_rises(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(k) after a cheap edit the mean NLL of ``target_new`` (``candidate_nll``) is lower than before."""
    from kedit.eval import candidate_nll

    requests = tiny_requests()
    pairs = [(r.text, r.target_new) for r in requests]
    editor = _editor(name, model, tok, config, cache_dir)
    before = candidate_nll(model, tok, pairs)
    editor.edit(requests)
    try:
        after = candidate_nll(model, tok, pairs)
    finally:
        editor.revert()
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    if not mean_after < mean_before:
        raise AssertionError(f"{name}: the target NLL did not fall: mean {mean_before:.6f} → {mean_after:.6f} "
                             f"(per request {[round(x, 5) for x in before]} → {[round(x, 5) for x in after]})")


def check_value_batch_invariance(name, model, tok, config, *, cache_dir, corpus=None) -> None:
    """(l) value targets z of a batch of two requests equal those optimised one by one (allclose 1e-5)."""
    from kedit.stages.values import optimise_values

    editor = _editor(name, model, tok, config, cache_dir)
    cfg = editor.config
    if not hasattr(cfg, "target"):
        raise SkipCheck(f"{type(cfg).__name__} has no value targets ('target' field)")
    layer, site = (max(cfg.layers), "block") if hasattr(cfg, "layers") else (cfg.layer, "mlp")
    templates = editor.ctx.templates(cfg.target.context_templates, cfg.seed)
    requests = tiny_requests()[:2]
    run = functools.partial(optimise_values, model, tok, editor.adapter, templates=templates,
                            options=cfg.target.options(), layer=layer, site=site)
    both = run(requests)
    for i, request in enumerate(requests):
        one = run([request])
        if not torch.allclose(both.z[:, i], one.z[:, 0], rtol=1e-5, atol=1e-5):
            gap = float((both.z[:, i] - one.z[:, 0]).abs().max())
            raise AssertionError(f"{name}: the value target of request {i} depends on the batch (max |diff| {gap:.3g})")
        if both.steps[i] != one.steps[0]:
            raise AssertionError(f"{name}: request {i} took {both.steps[i]} steps in a batch, {one.steps[0]} alone")


#: check name → (function, tags it requires).
CHECKS: dict[str, tuple[Callable[..., None], frozenset[str]]] = {
    "check_config_roundtrip": (check_config_roundtrip, frozenset()),
    "check_compute_leaves_model_unchanged": (check_compute_leaves_model_unchanged, frozenset()),
    "check_global_rng_untouched": (check_global_rng_untouched, frozenset()),
    "check_revert_bit_exact": (check_revert_bit_exact, frozenset()),
    "check_deterministic_deltas": (check_deterministic_deltas, frozenset({"deterministic"})),
    "check_invalid_requests": (check_invalid_requests, frozenset()),
    "check_nan_stats": (check_nonfinite_stats, frozenset({"needs_stats"})),
    "check_inf_stats": (functools.partial(check_nonfinite_stats, bad=float("inf")), frozenset({"needs_stats"})),
    "check_no_leftover_hooks": (check_no_leftover_hooks, frozenset()),
    "check_flags_restored": (check_flags_restored, frozenset()),
    "check_save_load_deltas": (check_save_load_deltas, frozenset()),
    "check_delta_dtype_device": (check_delta_dtype_device, frozenset()),
    "check_target_logprob_rises": (check_target_logprob_rises, frozenset()),
    "check_value_batch_invariance": (check_value_batch_invariance, frozenset({"deterministic", "batched"})),
}


def _skip(reason: str, *args, **kwargs) -> None:
    raise SkipCheck(reason)


def iter_checks(method_name: str, *, only=None) -> Iterator[tuple[str, Callable[..., None]]]:
    """Yield ``(check_name, run)`` for every check that applies to ``method_name`` (by its tags).

    ``run(model, tok, *, config=None, cache_dir, corpus=None)`` runs the check (``config=None`` →
    :func:`cheap_config`).  A check listed in the method's ``expected_failures`` is yielded with a
    ``run`` that raises :class:`SkipCheck` carrying the declared reason.  ``only`` restricts the
    checks to those names.
    """
    spec = get_method(method_name)
    for check_name, (func, needs) in CHECKS.items():
        if only is not None and check_name not in only:
            continue
        if not needs <= spec.tags:
            continue
        if check_name in spec.expected_failures:
            run = functools.partial(_skip, f"{method_name}: {spec.expected_failures[check_name]}")
        else:
            def run(model, tok, *, config=None, cache_dir, corpus=None, _func=func):
                cfg = config if config is not None else cheap_config(method_name, corpus)
                _func(method_name, model, tok, cfg, cache_dir=cache_dir, corpus=corpus)
        yield check_name, run


def check_method(method_name: str, model, tokenizer, *, config=None, cache_dir, corpus=None) -> dict[str, str]:
    """Run every applicable check on ``model``; raise one AssertionError listing all failures.

    Args:
        method_name: a registered preset.
        model, tokenizer: a (tiny) supported model; it is left as it was.
        config: method config (dict or instance); None → :func:`cheap_config` with ``corpus``.
        cache_dir: statistics cache root.
        corpus: text file for key statistics (see :func:`write_tiny_corpus`).

    Returns:
        check name → "passed" or "skipped: <reason>".
    """
    results: dict[str, str] = {}
    failures = []
    for check_name, run in iter_checks(method_name):
        try:
            run(model, tokenizer, config=config, cache_dir=cache_dir, corpus=corpus)
        except SkipCheck as exc:
            results[check_name] = f"skipped: {exc}"
            log.info("Skipping %s: %s", check_name, exc)
            warnings.warn(f"Skipping {check_name}: {exc}", SkippedCheckWarning, stacklevel=2)
        except AssertionError as exc:
            results[check_name] = f"failed: {exc}"
            failures.append(f"{check_name}: {exc}")
        else:
            results[check_name] = "passed"
    if failures:
        raise AssertionError(f"{method_name}: {len(failures)} check(s) failed:\n" + "\n".join(failures))
    return results
