"""Tiny random-weight models of every supported family, built from configs (no download).

Used by kedit's own tests and by third parties running :func:`kedit.testing.check_method`.
The tokenizer is character level so any ASCII text round-trips exactly.
"""
from __future__ import annotations

import string

import torch

__all__ = ["TINY_FAMILIES", "tiny_tokenizer", "tiny_model"]

TINY_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gptj", "gpt_neox")

_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def tiny_tokenizer():
    """A character-level fast tokenizer over printable ASCII (pad/bos/eos/unk specials)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    return tok


def tiny_model(family: str, *, seed: int = 0, n_layers: int = 4, hidden: int = 32, intermediate: int = 64):
    """A randomly initialised causal LM of ``family`` with ``n_layers`` layers, in eval mode."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        GPTJConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    tok = tiny_tokenizer()
    vocab = len(tok)
    common_llama = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if family == "llama":
        config = LlamaConfig(**common_llama)
    elif family == "mistral":
        config = MistralConfig(**common_llama, sliding_window=None)
    elif family == "qwen2":
        config = Qwen2Config(**common_llama, use_sliding_window=False)
    elif family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_inner=intermediate, n_layer=n_layers, n_head=4,
            n_positions=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    elif family == "gptj":
        config = GPTJConfig(
            vocab_size=vocab, n_embd=hidden, n_inner=intermediate, n_layer=n_layers, n_head=4,
            rotary_dim=4, n_positions=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            tie_word_embeddings=False,
        )
    elif family == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=n_layers,
            num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, tie_word_embeddings=False,
        )
    else:
        raise ValueError(f"Unknown tiny family {family!r}; choose from {TINY_FAMILIES}.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model, tok
