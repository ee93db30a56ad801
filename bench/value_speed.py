"""Value optimisation speed: kedit's path against a reference-style loop, in the same run.

The reference toolkits optimise one request at a time with a full forward pass from layer 0
at every step (an editing hook at the target layer).  kedit optimises all requests of a batch
together and starts each step's forward pass after the edit layer (the prefix does not depend
on δ).  Both run the same objective here, so the targets agree; the JSON reports seconds per
request and the speed-up ratios (never absolute-second asserts).

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

    def one_by_one(adp):
        return [optimise_values(model, tok, adp, [r], templates, options, layer=layer) for r in requests]

    batched, t_batched = timed(lambda: optimise_values(model, tok, adapter, requests, templates, options, layer=layer))
    singles, t_single = timed(lambda: one_by_one(adapter))
    reference, t_reference = timed(lambda: one_by_one(reference_adapter))
    z_ref = torch.cat([r.z for r in reference], 1)
    z_single = torch.cat([r.z for r in singles], 1)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    result = {
        "n": args.n,
        "layer": layer,
        "seconds_per_request": {"kedit_batched": t_batched / args.n, "kedit_one_by_one": t_single / args.n,
                                "reference_style": t_reference / args.n},
        "speedup_vs_reference": {"kedit_batched": t_reference / t_batched, "kedit_one_by_one": t_reference / t_single},
        "relative_z_difference": {"batched_vs_reference": rel(batched.z, z_ref), "one_by_one_vs_reference": rel(z_single, z_ref)},
        "steps": {"batched": batched.steps, "reference": [r.steps[0] for r in reference]},
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
