"""Text-video similarity on precomputed, query-independent video features (so an index can serve them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean_pool(frames: Tensor, mask: Tensor) -> Tensor:
    """L2-normalised mean of the valid frames; the denominator is clamped to 1 as in the authors' code."""
    weights = mask.to(frames.dtype).unsqueeze(-1)
    pooled = (frames * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return F.normalize(pooled, dim=-1)


def save_similarity(
    text: Tensor,
    frames: Tensor,
    mask: Tensor,
    pooled: Tensor,
    logit_scale: Tensor | float,
    temperature: float = 1.0,
) -> Tensor:
    """SAVE's score: s * (LSE over frames + global mean term) / 2 (reference §2.7).

    text: [Nt, D] (normalised here); frames: [Nv, T, D] L2-normalised fused frames; mask: [Nv, T];
    pooled: [Nv, D] normalised masked mean. The LSE uses a stable logsumexp over the valid frames
    only, which equals the authors' masked exp-sum (including its +log(n_valid) offset).
    """
    text = F.normalize(text.float(), dim=-1)
    scale = logit_scale if isinstance(logit_scale, Tensor) else torch.tensor(logit_scale)
    scale = scale.to(text.device, torch.float32)
    cos = torch.einsum("td,vfd->tvf", text, frames.float())
    scaled = temperature * scale * cos
    scaled = scaled.masked_fill(~mask.bool().unsqueeze(0), float("-inf"))
    local = torch.logsumexp(scaled, dim=-1) / temperature
    global_term = scale * text @ pooled.float().T
    return (local + global_term) / 2


def zero_shot_similarity(text: Tensor, pooled: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Plain zero-shot CLIP video scoring: s * cos(text, normalised mean of normalised frame features).

    This is CLIP4Clip's mean-pooling zero-shot protocol, used when no trained SAVE checkpoint is loaded.
    """
    text = F.normalize(text.float(), dim=-1)
    scale = logit_scale if isinstance(logit_scale, Tensor) else torch.tensor(logit_scale)
    return scale.to(text.device, torch.float32) * text @ pooled.float().T
