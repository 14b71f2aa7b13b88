"""Retrieval evaluation: encode each video once and each caption once, score all pairs, rank both ways."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..metrics import t2v_v2t_metrics
from ..save import SAVEModel, VideoEmbedding


class RetrievalSet(Protocol):
    """What evaluation needs: caption ids, which video each caption belongs to, and the videos."""

    def caption_ids(self) -> Tensor: ...

    def text_to_video(self) -> Tensor: ...

    def videos(self) -> Dataset: ...


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


@torch.no_grad()
def encode_texts(model: SAVEModel, ids: Tensor, batch_size: int = 256, amp: bool = True) -> Tensor:
    device = model.device
    out = []
    for start in range(0, len(ids), batch_size):
        with _autocast(device, amp):
            out.append(model.encode_text(ids[start:start + batch_size].to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def encode_videos(model: SAVEModel, videos: Dataset, batch_size: int = 32, num_workers: int = 0,
                  amp: bool = True, progress: bool = True) -> VideoEmbedding:
    device = model.device
    loader = DataLoader(videos, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    frames, masks, pooled = [], [], []
    for batch in tqdm(loader, desc="encode videos", disable=not progress, leave=False):
        with _autocast(device, amp):
            emb = model.encode_video(batch["pixel_values"].to(device), batch["video_mask"].to(device),
                                     batch["audio"].to(device), batch["speech_ids"].to(device))
        frames.append(emb.frames.float().cpu())
        masks.append(emb.mask.cpu())
        pooled.append(emb.pooled.float().cpu())
    return VideoEmbedding(torch.cat(frames), torch.cat(masks), torch.cat(pooled))


@torch.no_grad()
def similarity_matrix(model: SAVEModel, text_features: Tensor, videos: VideoEmbedding, chunk: int = 32) -> np.ndarray:
    """[N_text, N_video], texts scored in chunks against all videos (as the authors do)."""
    device = model.device
    video = videos.to(device)
    rows = [model.similarity(text_features[s:s + chunk].to(device), video).float().cpu()
            for s in range(0, len(text_features), chunk)]
    return torch.cat(rows).numpy()


def evaluate(model: SAVEModel, data: RetrievalSet, batch_size: int = 32, num_workers: int = 0, amp: bool = True,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """R@1/5/10, MdR, MnR, SumR for text->video and video->text (multi-caption aware)."""
    was_training = model.training
    model.eval()
    try:
        texts = encode_texts(model, data.caption_ids(), amp=amp)
        videos = encode_videos(model, data.videos(), batch_size, num_workers, amp, progress)
        sim = similarity_matrix(model, texts, videos)
    finally:
        model.train(was_training)
    return t2v_v2t_metrics(sim, data.text_to_video().numpy())
