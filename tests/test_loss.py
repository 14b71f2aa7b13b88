"""Checks of models/loss.py against hand-written / brute-force computations of each formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.loss import (
    SAVELoss,
    adaptive_margin,
    audio_visual_similarity,
    pearson_rows,
    soft_albef_loss,
    symmetric_infonce,
)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ----------------------------------------------------------------------------- adaptive margin


def test_margin_matches_brute_force_and_is_detached():
    t = _unit(6, 8, seed=1).requires_grad_(True)
    v = _unit(6, 8, seed=2).requires_grad_(True)
    beta, delta = 0.2, 0.1
    m = adaptive_margin(t, v, beta, delta)
    assert not m.requires_grad
    t, v = t.detach(), v.detach()
    for i in range(6):
        for j in range(6):
            if i == j:
                expected = 0.0
            else:
                ct = float(t[i] @ t[j])
                cv = float(v[i] @ v[j])
                expected = min(beta * (1 - (ct + cv) / 2), delta)
            assert m[i, j].item() == pytest.approx(expected, abs=1e-12)
    # Symmetric up to rounding: t @ t.T is not bitwise symmetric with every BLAS kernel (AMD vs Intel MKL paths).
    assert torch.allclose(m, m.T, rtol=0.0, atol=1e-12)


def test_margin_cap_and_diagonal():
    # Opposite directions: cosine -1 -> raw beta * 2 = 0.4, capped at delta.
    t = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    v = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    m = adaptive_margin(t, v, beta=0.2, delta=0.1)
    assert torch.allclose(m, torch.tensor([[0.0, 0.1], [0.1, 0.0]]))
    # Identical samples off the diagonal: cosine 1 -> margin 0 (no lower clamp needed).
    m2 = adaptive_margin(torch.ones(3, 4), torch.ones(3, 4))
    assert torch.allclose(m2, torch.zeros(3, 3), atol=1e-7)
    # Below the cap: orthogonal texts and videos -> beta * (1 - 0) = 0.2 < delta = 0.3.
    e = torch.eye(2)
    assert adaptive_margin(e, e, beta=0.2, delta=0.3)[0, 1].item() == pytest.approx(0.2)


def test_margin_normalises_defensively():
    t = _unit(4, 5, seed=3)
    v = _unit(4, 5, seed=4)
    scale = torch.tensor([[2.0], [0.5], [7.0], [3.0]], dtype=torch.float64)
    assert torch.allclose(adaptive_margin(t * scale, v / scale), adaptive_margin(t, v))


def test_margin_shape_error():
    with pytest.raises(ValueError):
        adaptive_margin(torch.zeros(3, 4), torch.zeros(2, 4))


# ----------------------------------------------------------------------------- InfoNCE


def _manual_crossen(x: list[list[float]]) -> float:
    total = 0.0
    for i, row in enumerate(x):
        lse = math.log(sum(math.exp(v) for v in row))
        total += lse - row[i]
    return total / len(x)


def test_infonce_matches_manual_3x3():
    logits = [[2.0, 0.5, -1.0], [0.3, 1.5, 0.2], [-0.5, 0.7, 3.0]]
    x = torch.tensor(logits, dtype=torch.float64)
    expected = (_manual_crossen(logits) + _manual_crossen([list(r) for r in zip(*logits, strict=True)])) / 2
    assert symmetric_infonce(x).item() == pytest.approx(expected, rel=1e-12)


def test_infonce_margin_shifts_only_off_diagonal():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.5, 0.2], [-0.5, 0.7, 3.0]], dtype=torch.float64)
    margin = torch.tensor([[0.0, 0.1, 0.05], [0.1, 0.0, 0.07], [0.05, 0.07, 0.0]], dtype=torch.float64)
    s = 10.0
    shifted = (logits + s * margin).tolist()
    # diagonal untouched
    assert torch.equal(torch.tensor(shifted).diagonal(), logits.diagonal())
    expected = (_manual_crossen(shifted) + _manual_crossen([list(r) for r in zip(*shifted, strict=True)])) / 2
    assert symmetric_infonce(logits, margin, s).item() == pytest.approx(expected, rel=1e-12)
    # A positive margin on negatives makes the task harder -> larger loss.
    assert symmetric_infonce(logits, margin, s) > symmetric_infonce(logits)
    # Tensor logit_scale works the same and receives gradient.
    s_t = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    out = symmetric_infonce(logits, margin, s_t)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    out.backward()
    assert s_t.grad is not None and s_t.grad.item() > 0


def test_infonce_errors():
    with pytest.raises(ValueError):
        symmetric_infonce(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        symmetric_infonce(torch.zeros(3, 3), torch.zeros(2, 2))


# ----------------------------------------------------------------------------- student v2a


def test_audio_visual_similarity_brute_force():
    g = torch.Generator().manual_seed(5)
    audio = torch.randn(3, 4, 6, generator=g, dtype=torch.float64) * 3
    frames = torch.randn(3, 5, 6, generator=g, dtype=torch.float64) * 2
    v2a = audio_visual_similarity(audio, frames)
    assert v2a.shape == (3, 3)
    for i in range(3):
        v = sum(frames[i, f] / frames[i, f].norm() for f in range(5)) / 5
        v = v / v.norm()
        for j in range(3):
            a = sum(audio[j, q] / audio[j, q].norm() for q in range(4)) / 4
            a = a / a.norm()
            assert v2a[i, j].item() == pytest.approx(float(v @ a), abs=1e-12)


def test_audio_visual_similarity_uses_all_frames_unmasked():
    g = torch.Generator().manual_seed(6)
    audio = torch.randn(2, 3, 4, generator=g)
    frames = torch.randn(2, 5, 4, generator=g)
    changed = frames.clone()
    changed[:, -1] = torch.randn(2, 4, generator=g)  # a "padded" last frame still counts
    assert not torch.allclose(audio_visual_similarity(audio, frames), audio_visual_similarity(audio, changed))


# ----------------------------------------------------------------------------- Pearson


def test_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 9))
    b = rng.normal(size=(5, 9)) + 0.5 * a
    got = pearson_rows(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_pearson_constant_row_guard():
    a = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    b = torch.tensor([[0.1, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.1]])
    r = pearson_rows(a, b)
    assert r[0].item() == 0.0
    assert r[1].item() == pytest.approx(-1.0, abs=1e-6)
    r.sum().backward()
    assert torch.isfinite(a.grad).all()
    assert torch.equal(a.grad[0], torch.zeros(4))
    # softmax of identical scores of a length whose mean is not exact in float32
    row = torch.full((1, 100), 0.3).softmax(dim=-1)
    assert pearson_rows(row, torch.rand(1, 100)).item() == 0.0


# ----------------------------------------------------------------------------- Soft-ALBEF


def _reference_soft_albef(student, tv, ta, mask, scale=5.0):
    idx = [i for i in range(len(mask)) if mask[i]]
    p = student.detach().numpy()[np.ix_(idx, idx)] * scale
    tvn = tv.numpy() / np.linalg.norm(tv.numpy(), axis=1, keepdims=True)
    tan = ta.numpy() / np.linalg.norm(ta.numpy(), axis=1, keepdims=True)
    q = (tvn @ tan.T)[np.ix_(idx, idx)] * scale

    def sm(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def term(x, y):
        sx, sy = sm(x), sm(y)
        return float(np.mean([1 - np.corrcoef(sx[i], sy[i])[0, 1] for i in range(len(idx))]))

    return term(p, q) + term(p.T, q.T)


def _albef_inputs(b=5, e=7, seed=8):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, b, generator=g, dtype=torch.float64).tanh().requires_grad_(True)
    tv = torch.randn(b, e, generator=g, dtype=torch.float64).requires_grad_(True)
    ta = (torch.randn(b, e, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    return student, tv, ta


def test_soft_albef_matches_reference_and_sums_directions():
    student, tv, ta = _albef_inputs()
    mask = torch.tensor([1, 1, 0, 1, 1])
    got = soft_albef_loss(student, tv, ta, mask)
    expected = _reference_soft_albef(student, tv.detach(), ta.detach(), mask.tolist())
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # all-ones mask too
    ones = torch.ones(5)
    assert soft_albef_loss(student, tv, ta, ones).item() == pytest.approx(
        _reference_soft_albef(student, tv.detach(), ta.detach(), [1] * 5), rel=1e-10
    )


def test_soft_albef_masks_rows_and_columns():
    student, tv, ta = _albef_inputs()
    mask = torch.tensor([1, 0, 1, 1, 0])
    base = soft_albef_loss(student, tv, ta, mask)
    s2 = student.detach().clone()
    s2[1, :] = 9.0  # masked sample's row
    s2[:, 4] = -9.0  # masked sample's column
    tv2, ta2 = tv.detach().clone(), ta.detach().clone()
    tv2[1] = torch.randn(7, dtype=torch.float64)
    ta2[4] = torch.randn(7, dtype=torch.float64)
    assert soft_albef_loss(s2, tv2, ta2, mask).item() == pytest.approx(base.item(), abs=1e-12)
    # while changing a kept sample does change it
    s3 = student.detach().clone()
    s3[0, 2] += 1.0
    assert soft_albef_loss(s3, tv, ta, mask).item() != pytest.approx(base.item(), abs=1e-9)


@pytest.mark.parametrize("mask", [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0]])
def test_soft_albef_zero_with_fewer_than_two_audio_samples(mask):
    student, tv, ta = _albef_inputs()
    out = soft_albef_loss(student, tv, ta, torch.tensor(mask))
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))


def test_soft_albef_gradient_into_student_not_teacher():
    student, tv, ta = _albef_inputs()
    out = soft_albef_loss(student, tv, ta, torch.tensor([1, 1, 1, 0, 1]))
    out.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.isfinite(student.grad).all()
    assert student.grad[3].abs().sum() == 0 and student.grad[:, 3].abs().sum() == 0
    assert tv.grad is None and ta.grad is None


def test_soft_albef_perfect_student_is_zero():
    tv = _unit(4, 6, seed=9)
    ta = _unit(4, 6, seed=10)
    student = tv @ ta.T
    assert soft_albef_loss(student, tv, ta * 20, torch.ones(4)).item() == pytest.approx(0.0, abs=1e-10)


def test_soft_albef_shape_errors():
    student, tv, ta = _albef_inputs()
    with pytest.raises(ValueError):
        soft_albef_loss(student, tv[:4], ta[:4], torch.ones(5))
    with pytest.raises(ValueError):
        soft_albef_loss(student, tv, ta, torch.ones(4))


# ----------------------------------------------------------------------------- SAVELoss


def test_save_loss_combines_terms():
    b, d = 4, 8
    g = torch.Generator().manual_seed(11)
    text = _unit(b, d, seed=12)
    vglob = _unit(b, d, seed=13)
    logits = (torch.randn(b, b, generator=g, dtype=torch.float64) * 5).requires_grad_(True)
    audio = torch.randn(b, 3, d, generator=g, dtype=torch.float64, requires_grad=True)
    frames = torch.randn(b, 5, d, generator=g, dtype=torch.float64, requires_grad=True)
    tv = torch.randn(b, 10, generator=g, dtype=torch.float64)
    ta = torch.randn(b, 10, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 1, 0, 1])
    s = 50.0

    crit = SAVELoss(beta=0.2, delta=0.1, distill_weight=0.5, distill_scale=5.0)
    out = crit(logits, s, text, vglob, audio, frames, tv, ta, mask)
    nce = symmetric_infonce(logits, adaptive_margin(text, vglob), s)
    kd = soft_albef_loss(audio_visual_similarity(audio, frames), tv, ta, mask, 5.0)
    assert out["nce"].item() == pytest.approx(nce.item(), rel=1e-12)
    assert out["distill"].item() == pytest.approx(kd.item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx(nce.item() + 0.5 * kd.item(), rel=1e-12)
    out["loss"].backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    assert frames.grad is not None and logits.grad is not None


def test_save_loss_without_teacher_skips_distillation():
    b, d = 3, 4
    logits = torch.randn(b, b, requires_grad=True)
    out = SAVELoss()(logits, 1.0, _unit(b, d).float(), _unit(b, d, seed=1).float())
    assert out["distill"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["nce"].item())
    out["loss"].backward()
    assert logits.grad is not None


def test_save_loss_teacher_without_student_inputs_errors():
    b, d = 3, 4
    with pytest.raises(ValueError):
        SAVELoss()(
            torch.randn(b, b), 1.0, _unit(b, d), _unit(b, d, seed=1),
            teacher_video=torch.randn(b, 5), teacher_audio=torch.randn(b, 5),
        )


def test_soft_albef_half_precision_student_is_upcast():
    student, tv, ta = _albef_inputs()
    mask = torch.tensor([1, 1, 0, 1, 1])
    ref = soft_albef_loss(student.detach().float(), tv.float(), ta.float(), mask)
    half = soft_albef_loss(student.detach().to(torch.bfloat16), tv.half(), ta.half(), mask)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ref.item(), abs=2e-2)


def test_soft_albef_identical_audio_is_finite():
    # Every audio embedding identical -> each student row is constant -> guarded Pearson (no NaN).
    audio = torch.ones(4, 3, 6, requires_grad=True)
    frames = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(14), requires_grad=True)
    v2a = audio_visual_similarity(audio, frames)
    out = soft_albef_loss(v2a, torch.randn(4, 8), torch.randn(4, 8), torch.ones(4))
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(frames.grad).all() and torch.isfinite(audio.grad).all()
