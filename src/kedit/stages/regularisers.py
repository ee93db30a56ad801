"""Post-update regularisers used with sequential editing (methods.md §5): RECT and PRUNE."""
from __future__ import annotations

import torch

__all__ = ["rect_sparsify", "prune_restrain"]


def rect_sparsify(delta: torch.Tensor, W: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Keep the update entries with the largest relative change |ΔW_ij| / (|W_ij| + 1e-8); zero the rest.

    Implements RECT (Gu et al., 2024) as in the reference `memit_rect_main.py`
    (spec/methods.md §5, ``k_percent = 40`` there, i.e. ``keep_fraction = 0.4``).
    Ties at the threshold are kept.
    """
    rel = delta.abs().double() / (W.abs().double() + 1e-8)
    n_keep = max(1, int(round(keep_fraction * rel.numel())))
    threshold = torch.topk(rel.flatten(), n_keep).values.min()
    return torch.where(rel >= threshold, delta, torch.zeros_like(delta))


def prune_restrain(delta_total: torch.Tensor, W0: torch.Tensor) -> torch.Tensor:
    """ΔW′ = U diag(σ′) Vᵀ with σ′ = log σ − log σ_max + σ_max for σ > σ_max(W0), else σ.

    Implements PRUNE (Ma et al., 2024) as in the reference "MEMIT_prune" (spec/methods.md §5):
    singular values of the accumulated update above the largest singular value of the original
    weight are compressed logarithmically, bounding the update's condition-number damage.
    Args: delta_total = W_now − W0 and W0, both (d_v, d_k).
    """
    sigma_max = torch.linalg.matrix_norm(W0.double(), ord=2)
    U, S, Vh = torch.linalg.svd(delta_total.double(), full_matrices=False)
    S = torch.where(S > sigma_max, torch.log(S) - torch.log(sigma_max) + sigma_max, S)
    return (U * S) @ Vh
