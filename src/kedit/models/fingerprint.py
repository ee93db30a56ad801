"""A content fingerprint of model weights: the key that ties caches and ledgers to a base model."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["weights_fingerprint"]


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer name, dtype, shape and bytes (tied tensors once).

    Two models with bit-identical weights get the same fingerprint whatever their path or name;
    any edit changes it.
    """
    h = hashlib.sha256()
    seen: set[int] = set()
    for name, tensor in list(model.state_dict(keep_vars=False).items()):
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue
        seen.add(key)
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]
