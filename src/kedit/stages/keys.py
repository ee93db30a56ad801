"""Keys: rewrite-module inputs at the edit position, averaged over context templates (§1.2)."""
from __future__ import annotations

from typing import Sequence

import torch

from kedit.data.requests import EditRequest
from kedit.models.adapters import Adapter
from kedit.models.hooks import eval_mode, trace
from kedit.stages.tokens import encode_with_subject, pad_right

__all__ = ["compute_keys", "contextualise"]


def contextualise(template: str, request: EditRequest) -> str:
    """Put the request's prompt template into a context template ("prefix. {}" → "prefix. <prompt>")."""
    return template.replace("{}", request.prompt, 1)


def compute_keys(
    model,
    tokenizer,
    adapter: Adapter,
    requests: Sequence[EditRequest],
    layers: Sequence[int],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
) -> dict[int, torch.Tensor]:
    """K (d_k, n) per layer: the mean over templates of the rewrite-module input at the
    subject-last token (``fact_token=subject_last``), for each request (MEMIT ``compute_ks``)."""
    rows, owners = [], []
    for r, request in enumerate(requests):
        for template in templates:
            rows.append(encode_with_subject(tokenizer, contextualise(template, request), request.subject))
            owners.append(r)
    names = [adapter.mlp_out_name(i) for i in layers]
    sums: dict[int, torch.Tensor] = {}
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, mask = pad_right([e.ids for e in chunk], pad)
            with trace(model, names, retain_input=True, retain_output=False, stop=True) as t:
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            pos = torch.tensor([e.position for e in chunk])
            idx = torch.arange(len(chunk))
            own = torch.tensor(owners[start : start + batch_size])
            for layer, name in zip(layers, names):
                k = t[name].input[idx, pos].to(torch.float64)  # (b, d_k)
                acc = sums.setdefault(layer, torch.zeros(len(requests), k.shape[-1], dtype=torch.float64))
                acc.index_add_(0, own.cpu(), k.cpu())
    n_templates = len(templates)
    return {layer: (acc / n_templates).T.contiguous() for layer, acc in sums.items()}  # (d_k, n)
