"""UnKE/NaKE layer-fit speed: preservation rows in length groups against one padded batch, same run.

The block fit (methods.md §7 step 2) runs the edit rows and ``preservation_n`` = 20 WikiText
passages (capped at 128 tokens) forward and backward at every one of its steps.  Right-padded as
one batch, about a third of those positions are padding; ``length_buckets`` groups the passages by
length so that far fewer are, with the same loss (sum of squared errors over all real positions).
Both variants fit the same block on the same rows; the JSON reports seconds per fit, the speed-up
ratio and how far the two deltas are apart (float rounding only).

    python bench/layer_fit_speed.py --reps 2 --out bench/results/layer_fit_speed.json
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import kedit
from kedit.methods.long_form import LayerFitConfig, corpus_passages
from kedit.models.adapters import get_adapter
from kedit.stages.chat import encode_qa
from kedit.stages.layer_fit import layer_fit_deltas
from kedit.stages.layer_io import record_block
from kedit.stages.tokens import length_buckets
from kedit.stats.corpus import default_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2, help="fits per variant (different preservation draws)")
    ap.add_argument("--steps", type=int, default=None, help="fit steps (default: the config's)")
    ap.add_argument("--out", default="bench/results/layer_fit_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = kedit.load_model()
    adapter = get_adapter(model)
    cfg = LayerFitConfig.for_model(model.config.num_hidden_layers,
                                   **({} if args.steps is None else {"steps": args.steps}))
    options, layer = cfg.options(), cfg.layers[0]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    pool = [ids[: cfg.preservation_tokens] for _, ids in corpus_passages(tok, default_corpus())]
    enc = encode_qa(tok, "Which river flows through the capital?", "The Danube flows through it.")
    rows, position = [enc.ids], [[enc.n_prompt - 1]]
    target = record_block(model, adapter, layer, rows, pad).outputs[0, enc.n_prompt - 1].double() + 0.05
    variants = {"one_padded_batch": None, "length_groups": 32}
    results = {name: [] for name in variants}
    padding = []
    for rep in range(args.reps):
        keep = random.Random(rep).sample(pool, cfg.preservation_n)
        lengths = [len(r) for r in keep]
        groups = length_buckets(lengths, 32)
        padding.append({"real": sum(lengths), "one_batch": len(keep) * max(lengths),
                        "groups": sum(len(g) * max(lengths[i] for i in g) for g in groups), "n_groups": len(groups)})
        deltas = {}
        for name, overhead in variants.items():
            start = time.perf_counter()
            deltas[name], _ = layer_fit_deltas(model, adapter, [layer], rows, position, [target[None]], keep, pad,
                                               options, bucket_overhead=overhead)
            results[name].append(time.perf_counter() - start)
        diff = max(float((deltas["length_groups"][n] - deltas["one_padded_batch"][n]).norm()
                         / deltas["one_padded_batch"][n].norm().clamp_min(1e-30)) for n in deltas["one_padded_batch"])
        padding[-1]["max_relative_delta_difference"] = diff
        print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in results.items()) + f", delta diff {diff:.2e}",
              flush=True)
    mean = {k: sum(v) / len(v) for k, v in results.items()}
    report = {"layer": layer, "steps": options.steps, "preservation_n": cfg.preservation_n,
              "preservation_tokens": cfg.preservation_tokens, "torch_threads": torch.get_num_threads(),
              "seconds_per_fit": mean, "speedup": mean["one_padded_batch"] / mean["length_groups"],
              "positions": padding}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("seconds_per_fit", "speedup")}))


if __name__ == "__main__":
    main()
