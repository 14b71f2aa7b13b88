"""Checks of models/metrics.py on hand-made matrices and against a straightforward reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.metrics import (
    metrics_from_sim_matrix_file,
    ranks_from_similarity,
    retrieval_metrics,
    t2v_v2t_metrics,
)


def _reference_ranks(sim: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Loop-based: rank = 1 + number of candidates with a strictly higher score."""
    out = []
    for i in range(sim.shape[0]):
        target = sim[i, gt[i]]
        out.append(1 + sum(1 for j in range(sim.shape[1]) if sim[i, j] > target))
    return np.array(out)


def _reference_metrics(ranks: np.ndarray) -> dict[str, float]:
    n = len(ranks)
    r1 = 100.0 * sum(1 for r in ranks if r <= 1) / n
    r5 = 100.0 * sum(1 for r in ranks if r <= 5) / n
    r10 = 100.0 * sum(1 for r in ranks if r <= 10) / n
    s = sorted(ranks)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {"R1": r1, "R5": r5, "R10": r10, "MdR": med, "MnR": sum(ranks) / n, "SumR": r1 + r5 + r10}


def test_ranks_hand_made():
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # gt 0 -> rank 1
            [0.5, 0.4, 0.6, 0.1],  # gt 1 -> 0.5, 0.6 higher -> rank 3
            [0.1, 0.2, 0.0, 0.3],  # gt 2 -> everything higher -> rank 4
            [0.2, 0.9, 0.1, 0.3],  # gt 3 -> only 0.9 higher -> rank 2
        ]
    )
    np.testing.assert_array_equal(ranks_from_similarity(sim, np.arange(4)), [1, 3, 4, 2])
    m = retrieval_metrics(np.array([1, 3, 4, 2]))
    assert m == {"R1": 25.0, "R5": 100.0, "R10": 100.0, "MdR": 2.5, "MnR": 2.5, "SumR": 225.0}


def test_identity_is_perfect():
    out = t2v_v2t_metrics(np.eye(7))
    for d in ("t2v", "v2t"):
        assert out[d]["R1"] == 100.0 and out[d]["MdR"] == 1.0 and out[d]["MnR"] == 1.0
        assert out[d]["SumR"] == 300.0


def test_reversed_order_is_worst():
    n = 12
    # the diagonal is the minimum of each row -> rank n everywhere
    sim = np.tile(np.arange(n, 0, -1, dtype=float), (n, 1))
    sim[np.arange(n), np.arange(n)] = -1.0
    ranks = ranks_from_similarity(sim, np.arange(n))
    np.testing.assert_array_equal(ranks, np.full(n, n))
    m = retrieval_metrics(ranks)
    assert m["R1"] == 0.0 and m["R10"] == 0.0 and m["MdR"] == n and m["MnR"] == n
    # every row scores columns in decreasing order 0 > 1 > ... -> query i ranks its own column at i + 1
    sim2 = np.tile(-np.arange(n, dtype=float), (n, 1))
    ranks2 = ranks_from_similarity(sim2, np.arange(n))
    np.testing.assert_array_equal(ranks2, np.arange(1, n + 1))
    m2 = retrieval_metrics(ranks2)
    assert m2["R1"] == pytest.approx(100 / 12) and m2["R5"] == pytest.approx(500 / 12)
    assert m2["R10"] == pytest.approx(1000 / 12) and m2["MdR"] == 6.5 and m2["MnR"] == 6.5


def test_ties_are_optimistic_and_deterministic():
    sim = np.array([[0.5, 0.5, 0.5], [0.7, 0.5, 0.5], [0.5, 0.5, 0.5]])
    # row 0: all tied -> rank 1; row 1: gt 0.5 tied with col 2, beaten by 0.7 -> rank 2; row 2 -> rank 1
    np.testing.assert_array_equal(ranks_from_similarity(sim, np.arange(3)), [1, 2, 1])


def test_random_matrices_match_reference():
    rng = np.random.default_rng(0)
    for trial in range(20):
        nq, nc = rng.integers(1, 40), rng.integers(1, 40)
        # rounding creates ties on purpose
        sim = np.round(rng.normal(size=(nq, nc)), 1 if trial % 2 else 6)
        gt = rng.integers(0, nc, size=nq)
        ranks = ranks_from_similarity(sim, gt)
        np.testing.assert_array_equal(ranks, _reference_ranks(sim, gt))
        got = retrieval_metrics(ranks)
        exp = _reference_metrics(ranks)
        assert got.keys() == exp.keys()
        for k in got:
            assert got[k] == pytest.approx(exp[k])


def test_chunked_ranking_matches(monkeypatch):
    import models.metrics as mm

    rng = np.random.default_rng(1)
    sim = rng.normal(size=(37, 11))
    gt = rng.integers(0, 11, size=37)
    monkeypatch.setattr(mm, "_CHUNK_ELEMS", 25)  # 2 rows per chunk
    np.testing.assert_array_equal(mm.ranks_from_similarity(sim, gt), _reference_ranks(sim, gt))


def test_torch_input_accepted():
    sim = torch.eye(4, dtype=torch.bfloat16)
    out = t2v_v2t_metrics(sim)
    assert out["t2v"]["R1"] == 100.0
    np.testing.assert_array_equal(ranks_from_similarity(torch.eye(3), torch.arange(3)), [1, 1, 1])


def test_square_v2t_is_transpose():
    rng = np.random.default_rng(2)
    sim = rng.normal(size=(30, 30))
    out = t2v_v2t_metrics(sim)
    assert out["t2v"] == retrieval_metrics(_reference_ranks(sim, np.arange(30)))
    assert out["v2t"] == retrieval_metrics(_reference_ranks(sim.T, np.arange(30)))


def test_multi_caption_grouping_hand_made():
    # 3 videos; captions 0,1 -> video 0, caption 2 -> video 1, captions 3,4,5 -> video 2 (given shuffled)
    t2v = np.array([0, 2, 1, 0, 2, 2])
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # c0 (v0): rank 1
            [0.3, 0.2, 0.1],  # c1 (v2): 0.3, 0.2 higher -> rank 3
            [0.1, 0.5, 0.6],  # c2 (v1): 0.6 higher -> rank 2
            [0.2, 0.4, 0.3],  # c3 (v0): rank 3
            [0.0, 0.1, 0.8],  # c4 (v2): rank 1
            [0.7, 0.6, 0.5],  # c5 (v2): rank 3
        ]
    )
    out = t2v_v2t_metrics(sim, t2v)
    assert out["t2v"] == retrieval_metrics(np.array([1, 3, 2, 3, 1, 3]))
    # group max matrix G[g, j] = max over captions of video g of sim[c, j]
    #   g0 = {c0, c3}: [0.9, 0.4, 0.3]; g1 = {c2}: [0.1, 0.5, 0.6]; g2 = {c1, c4, c5}: [0.7, 0.6, 0.8]
    # v2t matrix = G^T (rows videos j, cols groups g):
    #   v0: [0.9, 0.1, 0.7] -> own 0.9 rank 1
    #   v1: [0.4, 0.5, 0.6] -> own 0.5 rank 2
    #   v2: [0.3, 0.6, 0.8] -> own 0.8 rank 1
    assert out["v2t"] == retrieval_metrics(np.array([1, 2, 1]))


def test_multi_caption_random_against_brute_force():
    rng = np.random.default_rng(3)
    n_video = 15
    t2v = np.concatenate([np.arange(n_video), rng.integers(0, n_video, size=25)])
    rng.shuffle(t2v)
    sim = rng.normal(size=(len(t2v), n_video))
    out = t2v_v2t_metrics(sim, t2v)
    assert out["t2v"] == retrieval_metrics(_reference_ranks(sim, t2v))
    v2t = np.empty((n_video, n_video))
    for j in range(n_video):
        for g in range(n_video):
            v2t[j, g] = max(sim[c, j] for c in range(len(t2v)) if t2v[c] == g)
    assert out["v2t"] == retrieval_metrics(_reference_ranks(v2t, np.arange(n_video)))


def test_one_caption_per_video_mapping_equals_diagonal():
    rng = np.random.default_rng(4)
    sim = rng.normal(size=(20, 20))
    assert t2v_v2t_metrics(sim, np.arange(20)) == t2v_v2t_metrics(sim)


def test_errors():
    with pytest.raises(ValueError, match="square"):
        t2v_v2t_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        t2v_v2t_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_similarity(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="no caption"):
        t2v_v2t_metrics(np.zeros((3, 3)), np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="entries"):
        t2v_v2t_metrics(np.zeros((3, 3)), np.array([0, 1]))
    with pytest.raises(ValueError):
        t2v_v2t_metrics(np.zeros((3, 3)), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="2-D"):
        t2v_v2t_metrics(np.zeros(3))
    with pytest.raises(ValueError):
        ranks_from_similarity(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError):
        retrieval_metrics(np.array([], dtype=int))
    with pytest.raises(ValueError):
        retrieval_metrics(np.array([0, 1]))


def test_sim_matrix_file(tmp_path):
    rng = np.random.default_rng(5)
    sim = rng.normal(size=(25, 25)).astype(np.float32)
    p = tmp_path / "sim.npy"
    np.save(p, sim)
    out = metrics_from_sim_matrix_file(p)
    assert out["t2v"] == retrieval_metrics(_reference_ranks(sim, np.arange(25)))
    assert out["v2t"] == retrieval_metrics(_reference_ranks(sim.T, np.arange(25)))

    np.save(tmp_path / "rect.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="square"):
        metrics_from_sim_matrix_file(tmp_path / "rect.npy")
    np.save(tmp_path / "vec.npy", np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        metrics_from_sim_matrix_file(tmp_path / "vec.npy")
    bad = np.eye(3)
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        metrics_from_sim_matrix_file(tmp_path / "nan.npy")
