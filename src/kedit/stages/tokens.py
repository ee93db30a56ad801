"""Token bookkeeping shared by keys and value targets: prompt encoding and edit positions."""
from __future__ import annotations

import dataclasses

import torch

from kedit.errors import DataError

__all__ = ["Encoded", "encode_with_subject", "target_ids", "pad_right"]


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: list[int]
    position: int  # index of the edit position (subject-last token, or last prompt token)


def _prefix_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def encode_with_subject(tokenizer, template: str, subject: str | None) -> Encoded:
    """Encode ``template`` with the subject filled in; position = the subject's last token.

    The position is found by encoding the text up to the end of the subject (as ROME's
    ``find_token_range`` does); with ``subject=None`` it is the last token of the text.
    """
    if subject is None:
        ids = _prefix_ids(tokenizer, template)
        return Encoded(ids, len(ids) - 1)
    at = template.index("{}")
    head = template[:at] + subject
    full = template.replace("{}", subject, 1)
    ids = _prefix_ids(tokenizer, full)
    position = len(_prefix_ids(tokenizer, head)) - 1
    if not 0 <= position < len(ids):
        raise DataError(f"subject {subject!r} position {position} is outside the encoded prompt {full!r}")
    return Encoded(ids, position)


def target_ids(tokenizer, target: str) -> list[int]:
    """Token ids of the target with a leading space and no special tokens (§1.3)."""
    text = target if target.startswith(" ") else " " + target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"target {target!r} encodes to no tokens")
    return ids


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
