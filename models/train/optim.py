"""The paper's optimisation: what is frozen, the nine parameter groups, BertAdam and warmup-cosine
(save-reference.md §5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from ..save import SAVEModel

# Our names of the CLIP parameters the authors keep trainable (§5.1), mapped from theirs:
# ln_final, text_projection, logit_scale, visual.ln_post, visual.proj, audio_projection, audio.v.norm,
# every text layer and every ViT layer. Everything else in CLIP/AST is frozen.
_TRAINABLE_CLIP_PREFIXES = (
    "clip.model.text_model.final_layer_norm.",
    "clip.model.text_projection.",
    "clip.model.logit_scale",
    "clip.model.vision_model.post_layernorm.",
    "clip.model.visual_projection.",
    "clip.model.text_model.encoder.layers.",
    "clip.model.vision_model.encoder.layers.",
    "audio_encoder.model.layernorm.",  # AST v.norm
    "audio_encoder.model.layer_norm.",  # Whisper encoder's final LayerNorm (SAVE-2)
)


def _is_backbone(name: str) -> bool:
    return name.startswith("clip.") or name.startswith("audio_encoder.")


def apply_freezing(model: SAVEModel) -> None:
    """Freeze patch/token/position embeddings, ln_pre and the whole audio backbone but its final LN."""
    for name, param in model.named_parameters():
        if _is_backbone(name):
            param.requires_grad = name.startswith(_TRAINABLE_CLIP_PREFIXES)
        else:
            param.requires_grad = True


@dataclass
class LearningRates:
    lr: float = 1e-4  # new modules and the audio projection
    coef_lr: float = 1e-3  # CLIP and audio backbone: lr * coef_lr = 1e-7
    query_lr_multiplier: float = 100.0  # learnable query tokens: 1e-2
    weight_decay: float = 0.2


def parameter_groups(model: SAVEModel, rates: LearningRates) -> list[dict]:
    """The authors' groups (§5.2): decay unless the name contains 'bias' (so LayerNorm weights, embeddings
    and query tokens do decay, as theirs); backbone at lr*coef_lr; audio_projection and new modules at lr;
    query tokens at 100x lr. Frozen parameters are left out."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("audio_projection."):
            kind = "projection"
        elif _is_backbone(name):
            kind = "backbone"
        elif "query_tokens" in name:
            kind = "queries"
        else:
            kind = "new"
        groups.setdefault((kind, "bias" in name), []).append(param)
    lrs = {"backbone": rates.lr * rates.coef_lr, "projection": rates.lr, "new": rates.lr,
           "queries": rates.lr * rates.query_lr_multiplier}
    return [
        {"params": params, "lr": lrs[kind], "weight_decay": 0.0 if no_decay else rates.weight_decay,
         "name": f"{kind}{'-no-decay' if no_decay else ''}"}
        for (kind, no_decay), params in sorted(groups.items())
    ]


def warmup_cosine(progress: float, warmup: float = 0.1) -> float:
    """BertAdam's schedule: linear warmup then 0.5*(1+cos(pi*x)) with no re-normalisation (so the factor
    drops from 1 to ~0.976 at the end of warmup, and the first step has lr 0), as in CLIP4Clip."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class BertAdam(Optimizer):
    """CLIP4Clip's BertAdam: Adam without bias correction, decoupled weight decay, per-parameter grad-norm
    clipping and a built-in warmup-cosine schedule (§5.3). ``t_total`` steps in all."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        warmup: float = 0.1,
        t_total: int = -1,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.2,
        max_grad_norm: float = 1.0,
        schedule: Callable[[float, float], float] = warmup_cosine,
    ) -> None:
        defaults = dict(lr=lr, warmup=warmup, t_total=t_total, betas=betas, eps=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)
        self._schedule = schedule

    def scheduled_lr(self, group: dict, step: int) -> float:
        if group["t_total"] <= 0:
            return group["lr"]
        return group["lr"] * self._schedule(step / group["t_total"], group["warmup"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                    grad = p.grad
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-self.scheduled_lr(group, state["step"]))
                state["step"] += 1
        return loss


def build_optimizer(model: SAVEModel, rates: LearningRates, total_steps: int, warmup: float = 0.1,
                    max_grad_norm: float = 1.0) -> BertAdam:
    return BertAdam(parameter_groups(model, rates), lr=rates.lr, warmup=warmup, t_total=total_steps,
                    weight_decay=rates.weight_decay, max_grad_norm=max_grad_norm)
