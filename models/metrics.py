"""Retrieval metrics (R@1/5/10, MdR, MnR, SumR) for text->video and video->text, as SAVE reports them.

Numpy only; torch tensors are accepted and converted. Conventions:

* Ranks are 1-based and tie-optimistic: rank = 1 + number of candidates with a STRICTLY higher score than
  the ground truth. This is deterministic (no dependence on sort order) and equals what CLIP4Clip's
  ``compute_metrics`` (sort, then first position matching the diagonal) gives; argsort-based code breaks
  ties arbitrarily instead. Ties only matter for exactly equal float scores.
* Multi-caption v2t follows the authors' protocol (save-reference.md 4.6): for each video j and each
  caption group g (the captions of video g), score(j, g) = max over captions of g of sim[caption, j];
  the rank of video j's own group g = j among all groups is its v2t rank.
* NaN scores raise ValueError: NaN comparisons are always False, which would silently give rank 1.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = [
    "metrics_from_sim_matrix_file",
    "ranks_from_similarity",
    "retrieval_metrics",
    "t2v_v2t_metrics",
]

_CHUNK_ELEMS = 1 << 24  # rows are ranked in chunks so a [Nq, Nc] boolean temp stays ~16 MB


def _to_numpy(x: Any) -> np.ndarray:
    """Convert numpy arrays, lists and torch tensors (any device/dtype, incl. bf16) to numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_sim(sim: np.ndarray, name: str = "sim") -> np.ndarray:
    if sim.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {sim.shape}")
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"{name} is empty, shape {sim.shape}")
    if not np.issubdtype(sim.dtype, np.number) or np.issubdtype(sim.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real numeric matrix, got dtype {sim.dtype}")
    if np.issubdtype(sim.dtype, np.floating) and np.isnan(sim).any():
        n_bad = int(np.isnan(sim).sum())
        raise ValueError(f"{name} contains {n_bad} NaN value(s); ranks would be meaningless")
    return sim


def ranks_from_similarity(sim: Any, gt: Any) -> np.ndarray:
    """1-based rank of the ground-truth column of each row: 1 + #(scores strictly greater than it).

    Strictly-greater counting makes ties optimistic and deterministic (see module docstring).
    """
    sim = _check_sim(_to_numpy(sim))
    gt = _to_numpy(gt)
    n_q, n_c = sim.shape
    if gt.ndim != 1 or gt.shape[0] != n_q:
        raise ValueError(f"gt must be 1-D with {n_q} entries (one per row of sim), got shape {gt.shape}")
    if not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(f"gt must hold integer column indices, got dtype {gt.dtype}")
    if (gt < 0).any() or (gt >= n_c).any():
        raise ValueError(f"gt column indices must lie in [0, {n_c}), got range [{gt.min()}, {gt.max()}]")
    gt_scores = sim[np.arange(n_q), gt]
    ranks = np.empty(n_q, dtype=np.int64)
    step = max(1, _CHUNK_ELEMS // n_c)
    for s in range(0, n_q, step):
        e = min(s + step, n_q)
        ranks[s:e] = 1 + (sim[s:e] > gt_scores[s:e, None]).sum(axis=1)
    return ranks


def retrieval_metrics(ranks: Any) -> dict[str, float]:
    """R1/R5/R10 (percent of queries with rank <= k), MdR (median), MnR (mean), SumR = R1 + R5 + R10."""
    ranks = _to_numpy(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based; got a rank < 1")
    r1, r5, r10 = (float(np.mean(ranks <= k) * 100.0) for k in (1, 5, 10))
    return {
        "R1": r1,
        "R5": r5,
        "R10": r10,
        "MdR": float(np.median(ranks)),
        "MnR": float(np.mean(ranks)),
        "SumR": r1 + r5 + r10,
    }


def t2v_v2t_metrics(sim: Any, text_to_video: Any | None = None) -> dict[str, dict[str, float]]:
    """Text->video and video->text metrics from a [N_text, N_video] score matrix (rows texts, cols videos).

    ``text_to_video[c]`` is the video column of caption c; None means one caption per video with the
    ground truth on the diagonal (square matrix). t2v ranks each caption's own video among all videos.
    v2t follows the authors: the caption scores are max-pooled per video's caption group into a
    [N_video, N_video] matrix (rows videos, cols caption groups), and each video's own group is ranked.
    """
    sim = _check_sim(_to_numpy(sim))
    n_text, n_video = sim.shape
    if text_to_video is None:
        if n_text != n_video:
            raise ValueError(
                f"without text_to_video, sim must be square (one caption per video), got {sim.shape}"
            )
        diag = np.arange(n_video)
        return {
            "t2v": retrieval_metrics(ranks_from_similarity(sim, diag)),
            "v2t": retrieval_metrics(ranks_from_similarity(sim.T, diag)),
        }

    t2v_idx = _to_numpy(text_to_video)
    if t2v_idx.ndim != 1 or t2v_idx.shape[0] != n_text:
        raise ValueError(
            f"text_to_video must be 1-D with {n_text} entries (one per row of sim), got shape {t2v_idx.shape}"
        )
    if not np.issubdtype(t2v_idx.dtype, np.integer):
        raise ValueError(f"text_to_video must hold integer video indices, got dtype {t2v_idx.dtype}")
    if (t2v_idx < 0).any() or (t2v_idx >= n_video).any():
        raise ValueError(f"text_to_video entries must lie in [0, {n_video})")
    counts = np.bincount(t2v_idx, minlength=n_video)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(
            f"{missing.size} video(s) have no caption (first: {missing[:5].tolist()}); "
            "v2t ranks would be undefined"
        )

    t2v_ranks = ranks_from_similarity(sim, t2v_idx)

    # group_max[g, j] = max over captions c of video g of sim[c, j]; stable sort keeps it deterministic.
    order = np.argsort(t2v_idx, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    group_max = np.maximum.reduceat(sim[order], starts, axis=0)
    v2t_ranks = ranks_from_similarity(group_max.T, np.arange(n_video))

    return {"t2v": retrieval_metrics(t2v_ranks), "v2t": retrieval_metrics(v2t_ranks)}


def metrics_from_sim_matrix_file(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Metrics from a saved .npy score matrix (rows queries/texts, cols videos, ground truth on the diagonal).

    t2v ranks along rows; v2t ranks along the transpose.
    """
    sim = np.load(path, allow_pickle=False)
    if sim.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D similarity matrix, got shape {sim.shape}")
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(f"{path}: expected a square matrix (ground truth on the diagonal), got {sim.shape}")
    try:
        _check_sim(sim)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return t2v_v2t_metrics(sim)
