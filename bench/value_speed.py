"""Value optimisation speed: kedit's path against a reference-style loop, in the same run.

The reference toolkits optimise one request at a time with a full forward pass from layer 0
at every step (an editing hook at the target layer).  kedit optimises all requests of a batch
together, starts each step's forward pass after the edit layer, and runs only each prompt's
suffix from the edit token on, with the earlier positions' keys/values cached (none of them
depends on δ), in groups of similar suffix length (``kedit_batched_one_padded_batch``: one group).  All variants run the same objective, so the targets agree (``kedit_batched_bfloat16``,
the ``compute_dtype`` option, up to bfloat16 rounding); the JSON reports seconds per request,
speed-up ratios (never absolute-second asserts) and each request's final target NLL.

    python bench/value_speed.py --n 10 --out bench/results/value_speed.json
    python bench/value_speed.py --n 10 --only kedit_batched_bfloat16 --out bench/results/value_bf16.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import types
from pathlib import Path

import torch

import kedit
from kedit.data import load_counterfact
from kedit.methods.base import EditContext
from kedit.methods.memit import MemitConfig
from kedit.models.adapters import get_adapter
from kedit.models.fingerprint import weights_fingerprint
from kedit.paths import data_dir
from kedit.stages.values import optimise_values


def reference_compute_z(model, tok, adapter, request, templates, options, layer):
    """The reference toolkits' loop, written out: one request, a full forward pass from layer 0
    at every step with a hook adding δ at the layer output, logits over the whole vocabulary at
    every position, then the same NLL + KL + decay objective, Adam, early stop and clamp."""
    import torch.nn.functional as F

    from kedit.models.hooks import frozen, trace
    from kedit.stages.values import _build_rows

    rows = _build_rows(tok, [request], templates, options.kl_prompt)
    name = adapter.layer(layer)
    idx = torch.arange(len(rows.position))
    with torch.no_grad(), trace(model, [name]) as t:
        init_logits = model(input_ids=rows.ids, attention_mask=rows.mask).logits
    h_init = t[name].output[rows.first_row[0], rows.position[rows.first_row[0]]]
    kl_rows = idx[rows.is_kl]
    init_lp = F.log_softmax(init_logits[kl_rows, rows.position[kl_rows]], -1)
    delta = torch.zeros_like(h_init, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=options.lr)

    def add(_name, out):
        out = out.clone()
        out[idx, rows.position] = out[idx, rows.position] + delta
        return out

    steps = 0
    with frozen(model):
        for it in range(options.steps):
            steps = it + 1
            with trace(model, [name], retain_output=False, edit_output=add):
                logits = model(input_ids=rows.ids, attention_mask=rows.mask).logits  # (rows, T, vocab)
            log_probs = F.log_softmax(logits, -1)
            tok_lp = log_probs[rows.tgt_row, rows.tgt_pos, rows.tgt_tok]
            per_row = torch.zeros(len(idx)).index_add(0, rows.tgt_row, tok_lp)
            count = torch.zeros(len(idx)).index_add(0, rows.tgt_row, torch.ones_like(tok_lp))
            nll = -(per_row[~rows.is_kl] / count[~rows.is_kl]).mean()
            cur = log_probs[kl_rows, rows.position[kl_rows]]
            kl = (cur.exp() * (cur - init_lp)).sum(-1).sum()
            loss = nll + options.kl_factor * kl + options.weight_decay * delta.norm() / h_init.norm() ** 2
            if loss.item() < options.early_stop_loss or it == options.steps - 1:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                max_norm = options.clamp_norm_factor * h_init.norm()
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return (h_init + delta.detach()).double()[:, None], steps


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--out", default="bench/results/value_speed.json")
    ap.add_argument("--only", nargs="*", help="run only these variants (plus kedit_batched, then the reference)")
    args = ap.parse_args()
    model, tok = kedit.load_model()
    adapter = get_adapter(model)
    config = MemitConfig.for_model(adapter.model_type, model.config.num_hidden_layers)
    ctx = EditContext(model, tok, adapter, weights_fingerprint(model))
    templates = ctx.templates(config.target.context_templates, config.seed)
    options = config.target.options()
    layer = max(config.layers)
    requests = load_counterfact(data_dir() / "counterfact" / "counterfact-edit.json", n=args.n)
    reference_adapter = dataclasses.replace(adapter, residual_inputs_embeds=False)  # full forward + hook

    no_cache = dataclasses.replace(options, prefix_cache=False)
    bf16 = dataclasses.replace(options, compute_dtype="bfloat16")
    one_batch = dataclasses.replace(options, bucket_overhead=None)

    def one_by_one(adp, opts):
        return [optimise_values(model, tok, adp, [r], templates, opts, layer=layer) for r in requests]

    runs = {
        "kedit_batched": lambda: [optimise_values(model, tok, adapter, requests, templates, options, layer=layer)],
        "kedit_batched_bfloat16": lambda: [optimise_values(model, tok, adapter, requests, templates, bf16,
                                                           layer=layer)],
        "kedit_batched_one_padded_batch": lambda: [optimise_values(model, tok, adapter, requests, templates,
                                                                   one_batch, layer=layer)],
        "kedit_batched_no_prefix_cache": lambda: [optimise_values(model, tok, adapter, requests, templates, no_cache,
                                                                  layer=layer)],
        "kedit_one_by_one": lambda: one_by_one(adapter, options),
        "reference_style": lambda: one_by_one(reference_adapter, no_cache),
        "reference_code_loop": lambda: [types.SimpleNamespace(z=reference_compute_z(model, tok, adapter, r, templates,
                                                                                    options, layer)[0])
                                        for r in requests],
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only or k == "kedit_batched"}
    seconds, z, nll = {}, {}, {}
    for name, fn in runs.items():
        results, seconds[name] = timed(fn)
        z[name] = torch.cat([r.z for r in results], 1)
        nll[name] = [x for r in results for x in getattr(r, "nll", [])] or None
        print(name, round(seconds[name] / args.n, 2), "s/request", flush=True)
    ref_name = "reference_code_loop" if "reference_code_loop" in seconds else "kedit_batched"
    ref = seconds[ref_name]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    result = {
        "n": args.n,
        "layer": layer,
        "seconds_per_request": {k: v / args.n for k, v in seconds.items()},
        "reference": ref_name,
        "speedup_vs_reference": {k: ref / v for k, v in seconds.items()},
        "relative_z_difference_vs_reference": {k: rel(v, z[ref_name]) for k, v in z.items()},
        "final_target_nll": nll,
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
