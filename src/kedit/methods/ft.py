"""FT preset: constrained fine-tuning of one MLP output projection (the usual baseline).

Loss = mean NLL of the target tokens given the prompt (EasyEdit's FT-M objective); after each
Adam step the weight is clamped to an L∞ ball of radius ``norm_constraint`` around the original
(FT-L of Zhu et al. 2020 / ROME's baseline).  Gradients flow only into that one weight.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kedit.config import Config, field
from kedit.errors import NonFiniteError
from kedit.methods.base import EditMethod
from kedit.methods.defaults import default_rome_layer
from kedit.methods.registry import register_method
from kedit.models.hooks import eval_mode, frozen
from kedit.stages.spread import restoring
from kedit.stages.tokens import pad_right, target_ids

__all__ = ["FTConfig", "FineTune"]


@dataclasses.dataclass(frozen=True)
class FTConfig(Config):
    """Constrained fine-tuning.

    Args:
        layer: the MLP layer whose output projection is trained.
        lr: Adam learning rate.
        steps: maximum optimisation steps.
        norm_constraint: L∞ radius around the original weight (0 = unconstrained).
        early_stop_loss: stop when the mean target NLL is below this.
        seed: torch seed (the optimisation is deterministic on CPU anyway).
    """

    layer: int = field(1, "MLP layer whose output projection is trained.")
    lr: float = field(5e-4, "Adam learning rate.")
    steps: int = field(25, "Maximum optimisation steps.")
    norm_constraint: float = field(5e-3, "L∞ radius around the original weight (0 = unconstrained).")
    early_stop_loss: float = field(1e-2, "Stop once the mean target NLL is below this.")
    seed: int = field(0, "Torch seed.")

    def __post_init__(self) -> None:
        self._check("layer", isinstance(self.layer, int) and self.layer >= 0, "a layer index >= 0")
        self._check("lr", self.lr > 0, "a float > 0")
        self._check("steps", self.steps >= 1, "an int >= 1")
        self._check("norm_constraint", self.norm_constraint >= 0, "a float >= 0")

    @classmethod
    def for_model(cls, model_type: str | None, n_layers: int | None) -> "FTConfig":
        return cls(layer=default_rome_layer(n_layers))


class FineTune(EditMethod):
    tags = frozenset({"deterministic", "gradient_based", "batched"})

    def compute(self, ctx, requests, state):
        cfg = self.config
        tok = ctx.tokenizer
        rows, labels = [], []
        for request in requests:
            prompt = tok(request.text)["input_ids"]
            target = target_ids(tok, request.target_new)
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids, mask = pad_right(rows, pad)
        lab, _ = pad_right(labels, -100)
        device = next(ctx.model.parameters()).device
        ids, mask, lab = ids.to(device), mask.to(device), lab.to(device)
        name = ctx.adapter.weight_name(cfg.layer)
        weight = dict(ctx.model.named_parameters())[name]
        losses = []
        with restoring(ctx.model, [name]) as saved, frozen(ctx.model, [weight]), eval_mode(ctx.model), \
                torch.random.fork_rng(devices=[]):
            original = saved[name]
            torch.manual_seed(cfg.seed)
            opt = torch.optim.Adam([weight], lr=cfg.lr)
            for step in range(cfg.steps):
                logits = ctx.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lab[:, 1:].flatten(), ignore_index=-100)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"FT loss became non-finite at step {step}; lower lr (got {cfg.lr})")
                losses.append(float(loss.detach()))
                if loss.item() < cfg.early_stop_loss:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                if cfg.norm_constraint > 0:
                    with torch.no_grad():
                        weight.copy_(torch.clamp(weight, original - cfg.norm_constraint, original + cfg.norm_constraint))
            delta = (weight.detach() - original).clone()
            weight.grad = None
        return {name: delta}, state, {"ft_loss": losses}


register_method("ft", FTConfig, FineTune, summary="Constrained fine-tuning of one MLP output projection (baseline).",
                tags=FineTune.tags)
