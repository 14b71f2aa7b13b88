"""SAVE training losses: symmetric InfoNCE with AVIGATE's adaptive margin, and Soft-ALBEF distillation.

Pure torch on purpose (no model imports), so the formulas can be unit-tested on hand-made tensors.
Every function follows the authors' code (save-reference.md section 3); deviations are named in the
docstrings: a graph-connected zero instead of NaN when fewer than two samples have audio, and a guard
for a constant softmax row in the Pearson term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SAVELoss",
    "adaptive_margin",
    "audio_visual_similarity",
    "pearson_rows",
    "soft_albef_loss",
    "symmetric_infonce",
]


def _check_square(x: Tensor, name: str) -> None:
    if x.dim() != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a square [B, B] matrix, got shape {tuple(x.shape)}")


def adaptive_margin(
    text_feats: Tensor, video_global: Tensor, beta: float = 0.2, delta: float = 0.1
) -> Tensor:
    """AVIGATE adaptive margin M[i, j] = min(beta * (1 - (c_t + c_v) / 2), delta), diagonal 0.

    c_t is the text-text cosine matrix of the caption EOT features, c_v the video-video cosine matrix of
    the (un-fused) masked-mean frame features. The inputs are expected L2-normalised already; they are
    normalised again defensively (a no-op for unit vectors). Computed under ``no_grad``: the result is
    detached, as in the authors' code.

    There is no lower clamp, like the authors' code: since cosines lie in [-1, 1], the raw value is
    already in [0, 2 * beta], so a clamp at 0 could only remove float rounding noise.
    """
    if text_feats.dim() != 2 or video_global.dim() != 2 or text_feats.shape != video_global.shape:
        raise ValueError(
            "text_feats and video_global must both be [B, D] with the same shape, got "
            f"{tuple(text_feats.shape)} and {tuple(video_global.shape)}"
        )
    with torch.no_grad():
        t = F.normalize(text_feats.detach(), dim=-1)
        v = F.normalize(video_global.detach().to(t.dtype), dim=-1)
        c_t = t @ t.t()
        c_v = v @ v.t()
        margin = (beta * (1.0 - (c_t + c_v) / 2.0)).clamp(max=delta)
        margin.fill_diagonal_(0.0)
    return margin


def symmetric_infonce(
    logits: Tensor, margin: Tensor | None = None, logit_scale: Tensor | float = 1.0
) -> Tensor:
    """Symmetric InfoNCE (CrossEn of the authors' code) with diagonal positives.

    L' = logits + logit_scale * margin; loss = (CrossEn(L') + CrossEn(L'^T)) / 2 with
    CrossEn(X) = mean_i -log_softmax(X_i)_i. ``logits`` already carry the logit scale (rows = texts,
    cols = videos), so the margin, which is in cosine units, is multiplied by the same scale s = exp(.)
    to be in logit units. ``logit_scale`` is not detached here (the authors do not detach it either).
    """
    _check_square(logits, "logits")
    if margin is not None:
        if margin.shape != logits.shape:
            raise ValueError(f"margin shape {tuple(margin.shape)} != logits shape {tuple(logits.shape)}")
        logits = logits + logit_scale * margin.to(logits.dtype)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2.0


def audio_visual_similarity(audio_tokens: Tensor, frame_feats: Tensor) -> Tensor:
    """Student video-audio cosine matrix v2a [B, B] (rows = videos, cols = audio), as the authors compute it.

    Audio: normalise each of the Q resampler tokens, average, normalise. Video: normalise each frame,
    average over ALL T frames with no padding mask (the authors include padded frames), normalise.
    No logit scale; not detached (the distillation trains both sides).
    """
    if audio_tokens.dim() != 3 or frame_feats.dim() != 3:
        raise ValueError(
            f"audio_tokens must be [B, Q, D] and frame_feats [B, T, D], got {tuple(audio_tokens.shape)} "
            f"and {tuple(frame_feats.shape)}"
        )
    if audio_tokens.shape[0] != frame_feats.shape[0] or audio_tokens.shape[2] != frame_feats.shape[2]:
        raise ValueError(
            f"batch/feature sizes disagree: {tuple(audio_tokens.shape)} vs {tuple(frame_feats.shape)}"
        )
    a = F.normalize(F.normalize(audio_tokens, dim=-1).mean(dim=1), dim=-1)
    v = F.normalize(F.normalize(frame_feats, dim=-1).mean(dim=1), dim=-1)
    return v @ a.to(v.dtype).t()


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` -> [N].

    Guard (not in the authors' code): a row whose centred norm is <= eps times its uncentred norm is
    treated as constant (e.g. the softmax of identical scores, where only float rounding of the mean is
    left), and its correlation is defined as 0 with zero gradient instead of NaN or rounding noise.
    The ``where`` uses a safe denominator so no NaN leaks into the backward pass.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"a and b must be [N, K] with the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a_c = a - a.mean(dim=-1, keepdim=True)
    b_c = b - b.mean(dim=-1, keepdim=True)
    num = (a_c * b_c).sum(dim=-1)
    na = torch.linalg.vector_norm(a_c, dim=-1)
    nb = torch.linalg.vector_norm(b_c, dim=-1)
    with torch.no_grad():
        valid = na > eps * torch.linalg.vector_norm(a, dim=-1)
        valid &= nb > eps * torch.linalg.vector_norm(b, dim=-1)
        valid &= (na * nb) > 0
    den = na * nb
    safe_den = torch.where(valid, den, torch.ones_like(den))
    return torch.where(valid, num / safe_den, torch.zeros_like(num))


def soft_albef_loss(
    student_v2a: Tensor,
    teacher_video: Tensor,
    teacher_audio: Tensor,
    audio_mask: Tensor,
    scale: float = 5.0,
) -> Tensor:
    """Soft-ALBEF Pearson distillation of the teacher's video-audio similarity structure into the student.

    Q = normalise(teacher_video) @ normalise(teacher_audio)^T * scale (no_grad; the normalisation also
    removes ImageBind's x20 audio scaling). Rows AND columns of samples without audio are dropped from
    both matrices, P = student[mask][:, mask] * scale, and
    loss = mean_i (1 - pearson(softmax(P_i), softmax(Q_i)))
         + mean_j (1 - pearson(softmax(P^T_j), softmax(Q^T_j))),
    the two directions summed (not averaged), as in the authors' code.

    Deliberate deviation: with fewer than 2 audio-bearing samples the authors' code returns NaN (empty
    mean / 0-by-0 Pearson); here it returns ``student_v2a.sum() * 0``, a zero still connected to the graph
    so that backward() and DDP gradient bookkeeping work. Constant rows are guarded in ``pearson_rows``.
    """
    _check_square(student_v2a, "student_v2a")
    b = student_v2a.shape[0]
    if teacher_video.dim() != 2 or teacher_video.shape != teacher_audio.shape or teacher_video.shape[0] != b:
        raise ValueError(
            f"teacher_video/teacher_audio must both be [B={b}, E], got {tuple(teacher_video.shape)} and "
            f"{tuple(teacher_audio.shape)}"
        )
    if audio_mask.dim() != 1 or audio_mask.shape[0] != b:
        raise ValueError(f"audio_mask must be [B={b}], got {tuple(audio_mask.shape)}")
    mask = audio_mask.to(device=student_v2a.device) != 0
    if int(mask.sum()) < 2:
        return student_v2a.sum() * 0.0

    # softmax/Pearson in at least fp32 (a half-precision student is upcast; fp64 stays fp64)
    dtype = torch.promote_types(student_v2a.dtype, torch.float32)
    with torch.no_grad():
        tv = F.normalize(teacher_video.detach().to(student_v2a.device, dtype), dim=-1)
        ta = F.normalize(teacher_audio.detach().to(student_v2a.device, dtype), dim=-1)
        q = ((tv @ ta.t()) * scale)[mask][:, mask]
    p = student_v2a.to(dtype)[mask][:, mask] * scale

    row = 1.0 - pearson_rows(p.softmax(dim=-1), q.softmax(dim=-1))
    col = 1.0 - pearson_rows(p.t().softmax(dim=-1), q.t().softmax(dim=-1))
    return row.mean() + col.mean()


class SAVELoss(nn.Module):
    """Total SAVE training loss: L_nce (with adaptive margin) + distill_weight * L_kd (Soft-ALBEF).

    ``forward`` expects the logits already scaled (rows = texts, cols = videos) and ``logit_scale`` as
    s = exp(clip.logit_scale), i.e. the multiplier, not the log. Distillation is skipped (reported as 0)
    when either teacher input is None; ``audio_mask`` defaults to "every sample has audio".
    """

    def __init__(
        self, beta: float = 0.2, delta: float = 0.1, distill_weight: float = 1.0, distill_scale: float = 5.0
    ) -> None:
        super().__init__()
        self.beta = beta
        self.delta = delta
        self.distill_weight = distill_weight
        self.distill_scale = distill_scale

    def forward(
        self,
        logits: Tensor,
        logit_scale: Tensor | float,
        text_feats: Tensor,
        video_global: Tensor,
        audio_tokens: Tensor | None = None,
        frame_feats: Tensor | None = None,
        teacher_video: Tensor | None = None,
        teacher_audio: Tensor | None = None,
        audio_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        margin = adaptive_margin(text_feats, video_global, self.beta, self.delta)
        nce = symmetric_infonce(logits, margin, logit_scale)
        if teacher_video is None or teacher_audio is None:
            distill = nce.new_zeros(())
        else:
            if audio_tokens is None or frame_feats is None:
                raise ValueError(
                    "distillation needs audio_tokens and frame_feats when teacher inputs are given"
                )
            v2a = audio_visual_similarity(audio_tokens, frame_feats)
            if audio_mask is None:
                audio_mask = torch.ones(v2a.shape[0], device=v2a.device)
            distill = soft_albef_loss(v2a, teacher_video, teacher_audio, audio_mask, self.distill_scale)
        loss = nce + self.distill_weight * distill
        return {"loss": loss, "nce": nce, "distill": distill}
