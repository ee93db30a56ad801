"""Per-family default layers, scaled from the published Llama3-8B choices (32 layers: MEMIT 4-8,
ROME 5) and checked on SmolLM2-135M by the layer sweep in docs/smollm2-layers.md."""
from __future__ import annotations

__all__ = ["default_memit_layers", "default_rome_layer", "default_unke_layer"]


def default_memit_layers(n_layers: int | None) -> list[int]:
    """Five consecutive early-middle layers (Llama3: 4-8 of 32); [1, 2] for tiny test models."""
    if not n_layers or n_layers < 8:
        return [1, 2]
    lo = round(n_layers * 4 / 32)
    return list(range(lo, lo + 5))


def default_rome_layer(n_layers: int | None) -> int:
    """Llama3: layer 5 of 32; tiny models: layer 1."""
    if not n_layers or n_layers < 8:
        return 1
    return round(n_layers * 5 / 32)


def default_unke_layer(n_layers: int | None) -> int:
    """UnKE's whole-block layer: Llama3/Qwen2.5 layer 7 of 32 (SmolLM2-135M: 7 of 30); tiny models: 1."""
    if not n_layers or n_layers < 8:
        return 1
    return round(n_layers * 7 / 32)
