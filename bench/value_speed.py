"""Value optimisation speed: kedit's path against a reference-style loop, in the same run.

The reference toolkits optimise one request at a time with a full forward pass from layer 0
at every step (an editing hook at the target layer).  kedit optimises all requests of a batch
together, starts each step's forward pass after the edit layer, and runs only each prompt's
suffix from the edit token on, with the earlier positions' keys/values cached (none of them
depends on δ).  All variants run the same objective, so the targets agree; the JSON reports
seconds per request and speed-up ratios (never absolute-second asserts).

    python bench/value_speed.py --n 10 --out bench/results/value_speed.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
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


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--out", default="bench/results/value_speed.json")
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

    def one_by_one(adp, opts):
        return [optimise_values(model, tok, adp, [r], templates, opts, layer=layer) for r in requests]

    runs = {
        "kedit_batched": lambda: [optimise_values(model, tok, adapter, requests, templates, options, layer=layer)],
        "kedit_batched_no_prefix_cache": lambda: [optimise_values(model, tok, adapter, requests, templates, no_cache,
                                                                  layer=layer)],
        "kedit_one_by_one": lambda: one_by_one(adapter, options),
        "reference_style": lambda: one_by_one(reference_adapter, no_cache),
    }
    seconds, z = {}, {}
    for name, fn in runs.items():
        results, seconds[name] = timed(fn)
        z[name] = torch.cat([r.z for r in results], 1)
        print(name, round(seconds[name] / args.n, 2), "s/request", flush=True)
    ref = seconds["reference_style"]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    result = {
        "n": args.n,
        "layer": layer,
        "seconds_per_request": {k: v / args.n for k, v in seconds.items()},
        "speedup_vs_reference": {k: ref / v for k, v in seconds.items()},
        "relative_z_difference_vs_reference": {k: rel(v, z["reference_style"]) for k, v in z.items()},
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
