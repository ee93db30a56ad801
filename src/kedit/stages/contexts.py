"""Context templates: short sampled prefixes that make keys and targets robust (methods.md §1.1)."""
from __future__ import annotations

import torch

from kedit.models.hooks import eval_mode

__all__ = ["generate_context_templates"]

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


def generate_context_templates(model, tokenizer, spec: list[list[int]], *, seed: int) -> list[str]:
    """``["{}"]`` plus, for each ``[length, count]`` in ``spec``, ``count`` sampled prefixes.

    Prefixes come from top-5 sampling starting at the seed words (cycled), ``length`` tokens
    long; braces are replaced by spaces and ``". {}"`` is appended.  The RNG is forked, so the
    caller's global torch RNG state is untouched; the same seed gives the same templates.
    """
    templates = ["{}"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]), torch.no_grad(), eval_mode(model):
        torch.manual_seed(seed)
        for length, count in spec:
            for i in range(count):
                word = SEED_WORDS[i % len(SEED_WORDS)]
                enc = tokenizer(word, return_tensors="pt")
                out = model.generate(
                    **enc, do_sample=True, top_k=5, max_new_tokens=max(1, length - enc["input_ids"].shape[1]),
                    pad_token_id=pad, use_cache=True,
                )
                text = tokenizer.decode(out[0], skip_special_tokens=True)
                text = text.replace("{", " ").replace("}", " ").replace("\n", " ").strip()
                templates.append(text + ". {}")
    return templates
