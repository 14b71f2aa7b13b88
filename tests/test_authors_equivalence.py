"""Our converted SAVEModel must compute exactly what the authors' code computes (fp32, tiny config).

Why: ``models.convert`` maps the authors' checkpoint onto transformers CLIP/AST plus our own fusion
modules; a swapped q/k chunk, a missing transpose, a wrong LN eps or a re-ordered gated block would
still load cleanly. ``tests/authors_reference.py`` recomputes the authors' forward straight from the
authors-keyed state dict (written from save-reference.md, sharing no code with ``models``), and every
stage is compared on a random authors-keyed checkpoint whose gates are far from zero.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models import convert
from models.convert import authors_state_dict_to_model, key_rules
from models.factory import create_model
from models.save import SAVEModel

from . import authors_reference as ref

SOT, EOT = 49406, 49407
SEED = 1234
# Std of the gate projections, in units of 1/sqrt(fan_in): the tanh gates then sit around ±0.5
# (mean |gate| ≈ 0.5, few saturated), so the gated fusion really changes the frames.
GATE_SCALE = 1.0
# Keys of the authors' checkpoint that their forward never reads (§1.1, §1.2).
UNUSED_AUTHORS_KEYS = {"asr_query_tokens", "clip.audio.v.head.weight", "clip.audio.v.head.bias",
                       "clip.audio.v.head_dist.weight", "clip.audio.v.head_dist.bias"}
# Max abs difference allowed, relative to max |reference| (fp32 differences here are ~1e-7 relative).
FEATURE_TOL = 1e-5
LOGIT_TOL = 1e-5
# The "small activations" checkpoint scales these by SMALL so that the first LayerNorm of every
# transformer (and the resampler's ln_3 on the audio memory) sees a variance far below its eps:
# a wrong eps (1e-5 vs 1e-12 vs 1e-6) then changes the output by orders of magnitude, not by 1e-6.
SMALL = 1e-3
SMALL_KEYS = (
    "clip.token_embedding.weight", "clip.positional_embedding", "clip.text_projection",
    "clip.visual.conv1.weight", "clip.visual.class_embedding", "clip.visual.positional_embedding",
    "clip.visual.proj", "clip.audio.v.patch_embed.proj.weight", "clip.audio.v.patch_embed.proj.bias",
    "clip.audio.v.cls_token", "clip.audio.v.dist_token", "clip.audio.v.pos_embed", "clip.audio_projection",
    "query_tokens", "query_position_embeddings.weight", "frame_position_embeddings.weight",
)

# Tensors the authors save in fp16 (§1.3): every Linear/Conv/MHA weight and bias and the three projections in
# clip.*; LayerNorms, embeddings, AST tokens/pos_embed, logit_scale and everything outside clip.* stay fp32.
_FP16_KEY = re.compile(r"clip\..*(in_proj_|out_proj\.|c_fc\.|c_proj\.|qkv\.|attn\.proj\.|fc[12]\.|conv1\.|"
                       r"patch_embed\.|\.head(_dist)?\.|visual\.proj$|text_projection$|audio_projection$)")

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- checkpoint
def _as_function(transform: Any) -> Callable[[Tensor], Tensor]:
    """A key rule's transform as a function: rules carry either a callable or a name ("id", "T", "q", ...)
    that ``convert.apply_transform`` interprets."""
    if callable(transform):
        return transform
    return lambda tensor: convert.apply_transform(transform, tensor)


def _their_shape(our_shape: torch.Size, transforms: list[Callable[[Tensor], Tensor]]) -> tuple[int, ...]:
    """The authors' tensor shape that ``transforms`` (identity, transpose or q/k/v chunks) turn into
    ``our_shape``, checked by pushing an index tensor through them: each of their entries must feed
    exactly one of ours."""
    candidates = [tuple(our_shape), tuple(reversed(our_shape))]
    if our_shape:
        candidates.append((len(transforms) * our_shape[0], *our_shape[1:]))
    for shape in candidates:
        index = torch.arange(math.prod(shape)).reshape(shape)
        parts = [t(index) for t in transforms]
        if all(p.shape == our_shape for p in parts):
            used = torch.cat([p.reshape(-1) for p in parts]).sort().values
            if torch.equal(used, torch.arange(index.numel())):
                return shape
    raise AssertionError(f"cannot invert the key rule for a tensor of shape {tuple(our_shape)}")


def authors_key_shapes(model: SAVEModel) -> dict[str, tuple[int, ...]]:
    """Every authors' key our converter reads, with its shape, obtained by inverting ``key_rules``."""
    ours = model.state_dict()
    grouped: dict[str, list[tuple[str, Callable[[Tensor], Tensor]]]] = defaultdict(list)
    for theirs, our_key, transform in key_rules(model):
        grouped[theirs].append((our_key, _as_function(transform)))
    shapes = {}
    for theirs, items in grouped.items():
        our_shapes = {ours[k].shape for k, _ in items}
        assert len(our_shapes) == 1, f"{theirs} feeds tensors of different shapes"
        shapes[theirs] = _their_shape(our_shapes.pop(), [t for _, t in items])
    return shapes


_LN_WEIGHT = re.compile(r"(^|\.)(ln_\w+|norm\d?)\.weight$")
_PROJECTIONS = {"clip.text_projection", "clip.visual.proj", "clip.audio_projection"}  # stored [in, out]


def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """A value of a sensible scale for each kind of tensor, so that no stage is degenerate."""
    def randn(std: float) -> Tensor:
        return torch.randn(shape, generator=gen) * std

    if key == "clip.logit_scale":
        return torch.tensor(math.log(100.0))  # the trained value sits at the ln(100) cap (§5.3)
    if key.endswith(("ag_proj.weight", "fg_proj.weight")):
        return randn(GATE_SCALE / math.sqrt(shape[1]))
    if _LN_WEIGHT.search(key):
        return 1.0 + randn(0.1)
    if key.endswith("bias"):
        return randn(0.1)
    if key in _PROJECTIONS:
        return randn(1.0 / math.sqrt(shape[0]))
    if key == "query_tokens":
        return randn(1.0)
    if key == "frame_position_embeddings.weight":
        return randn(0.3)
    if "embedding" in key or key.endswith(("_token", "pos_embed")):
        return randn(0.1)
    if len(shape) >= 2:
        return randn(1.0 / math.sqrt(math.prod(shape[1:])))
    raise AssertionError(f"no random rule for {key} {shape}")


def random_authors_state_dict(seed: int = SEED, small_activations: bool = False) -> dict[str, Tensor]:
    """A random checkpoint in the authors' key layout (§1.4) for the tiny config, including the keys
    our converter must ignore (``asr_query_tokens``, the timm DeiT heads)."""
    model = create_model("tiny", pretrained=False)
    gen = torch.Generator().manual_seed(seed)
    theirs = {k: _random_tensor(k, s, gen) for k, s in authors_key_shapes(model).items()}
    if small_activations:
        for key in SMALL_KEYS:
            theirs[key] = theirs[key] * SMALL
    width, hidden = model.config.embed_dim, model.audio_encoder.hidden_size
    theirs["asr_query_tokens"] = torch.randn(width, model.config.num_audio_queries, generator=gen)
    for head in ("head", "head_dist"):
        theirs[f"clip.audio.v.{head}.weight"] = torch.randn(1000, hidden, generator=gen) * 0.02
        theirs[f"clip.audio.v.{head}.bias"] = torch.zeros(1000)
    return theirs


# ---------------------------------------------------------------------------------------------- inputs
def _ids(lengths: list[int], seq: int, gen: torch.Generator) -> Tensor:
    """CLIP-style rows: SOT, ``n`` BPE ids, EOT, zero padding; length 0 means an all-zero row."""
    rows = torch.zeros(len(lengths), seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        rows[i, 0] = SOT
        rows[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=gen)
        rows[i, n + 1] = EOT
    return rows


@dataclass
class Inputs:
    captions: Tensor  # [Nt, L]
    pixels: Tensor  # [Nv, T, 3, S, S]
    video_mask: Tensor  # [Nv, T]
    fbank: Tensor  # [Nv, 1024, 128]
    asr: Tensor  # [Nv, L]


def make_inputs(model: SAVEModel, seed: int = SEED + 1) -> Inputs:
    """Three videos: full / padded (5 zero frames) / padded; video 1 has no audio (zero fbank), video 2
    no speech (all-zero ids), as the authors' loaders produce them."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    t, size, words = cfg.num_frames, cfg.image_size, cfg.max_words
    valid = [t, t - 5, t - 2]
    mask = torch.stack([(torch.arange(t) < n).long() for n in valid])
    pixels = torch.randn(len(valid), t, 3, size, size, generator=gen) * mask[:, :, None, None, None]
    fbank = torch.randn(len(valid), 1024, 128, generator=gen) * 0.5 - 0.2
    fbank[1] = 0.0
    asr = _ids([words - 2, 6, 0], words, gen)
    captions = _ids([5, 12, words - 2, 1], words, gen)
    return Inputs(captions, pixels, mask, fbank, asr)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """These tensors are tiny: one intra-op thread is as fast on an idle machine and avoids a 7x slowdown
    from OpenMP spinning when the cores are shared; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Case:
    scenario: str
    theirs: dict[str, Tensor]
    model: SAVEModel
    inputs: Inputs
    video: ref.AuthorsVideo


@pytest.fixture(scope="module", params=["regular", "small-activations"])
def case(request: pytest.FixtureRequest) -> Case:
    """One converted checkpoint per scenario, shared by all comparisons."""
    torch.manual_seed(0)
    theirs = random_authors_state_dict(small_activations=request.param == "small-activations")
    model = authors_state_dict_to_model(theirs, "tiny")
    inputs = make_inputs(model)
    with torch.no_grad():
        video = ref.authors_video(theirs, inputs.pixels, inputs.video_mask, inputs.fbank, inputs.asr)
    return Case(request.param, theirs, model, inputs, video)


def assert_close(name: str, ours: Tensor, reference: Tensor, tol: float = FEATURE_TOL) -> float:
    """Max abs difference, bounded by ``tol`` relative to the reference's largest magnitude."""
    assert ours.shape == reference.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}"
    assert torch.isfinite(reference).all(), f"{name}: reference is not finite"
    diff = (ours.float() - reference).abs().max().item()
    bound = tol * max(1e-30, reference.abs().max().item())
    print(f"{name}: max|diff| = {diff:.3e} (bound {bound:.1e}, max|ref| = {reference.abs().max().item():.3g})")
    assert diff <= bound, f"{name}: max abs diff {diff:.3e} exceeds {bound:.1e}"
    return diff


# ---------------------------------------------------------------------------------------------- tests
def test_reference_attention_matches_torch_mha() -> None:
    """The oracle's own attention is checked against PyTorch's, so both sides are not wrong together."""
    gen = torch.Generator().manual_seed(7)
    width, heads = 32, 4
    w, b = torch.randn(3 * width, width, generator=gen) * 0.2, torch.randn(3 * width, generator=gen)
    ow, ob = torch.randn(width, width, generator=gen) * 0.2, torch.randn(width, generator=gen)
    q, kv = torch.randn(2, 5, width, generator=gen), torch.randn(2, 9, width, generator=gen)
    expected, _ = F.multi_head_attention_forward(
        q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), width, heads, w, b, None, None, False, 0.0,
        ow, ob, training=False, need_weights=False)
    assert_close("reference attention", ref.attention(q, kv, w, b, ow, ob, heads), expected.transpose(0, 1))


def test_checkpoint_converts_strictly(case: Case) -> None:
    """Every authors' key is used or explicitly ignored, and the weights arrive unchanged."""
    ours = case.model.state_dict()
    assert torch.equal(ours["query_tokens"], case.theirs["query_tokens"].t())
    assert torch.equal(ours["clip.model.logit_scale"], case.theirs["clip.logit_scale"])
    assert case.model.fusion_enabled


def test_fusion_is_not_trivial(case: Case) -> None:
    """Guard on the test itself: gates well away from 0 and fused frames far from the plain frames."""
    for gates in (case.video.av_gates, case.video.sv_gates):
        assert gates.abs().mean() > 0.2, gates
    plain = ref.l2_normalize(case.video.visual)
    assert (case.video.fused - plain).norm(dim=-1).mean() > 0.1


class _RecordingDict(dict):
    """Remembers which keys the reference forward reads."""

    def __init__(self, data: dict[str, Tensor]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.read.add(key)
        return super().__getitem__(key)


@torch.no_grad()
def test_converter_keys_are_the_authors_forward_keys(case: Case) -> None:
    """The keys ``key_rules`` demands are exactly those the authors' forward reads (plus the documented
    unused ones), so a real checkpoint cannot fail on a key name we invented."""
    recording = _RecordingDict(case.theirs)
    inp = case.inputs
    ref.authors_similarity(recording, inp.captions, inp.pixels, inp.video_mask, inp.fbank, inp.asr)
    assert set(case.theirs) - recording.read == UNUSED_AUTHORS_KEYS
    assert recording.read <= set(case.theirs)


@torch.no_grad()
def test_text_features(case: Case) -> None:
    ours = case.model.encode_text(case.inputs.captions)
    assert_close("caption EOT features", ours, ref.encode_text(case.theirs, case.inputs.captions))


@torch.no_grad()
def test_speech_tokens(case: Case) -> None:
    """All 32 positions of the ASR ids, pads and the no-speech (all-zero) row included."""
    ours = case.model.speech_tokens(case.inputs.asr)
    assert_close("speech tokens", ours, case.video.speech)


@torch.no_grad()
def test_frame_features(case: Case) -> None:
    ours = case.model.frame_features(case.inputs.pixels)
    assert_close("frame CLS features", ours, case.video.frames)


@torch.no_grad()
def test_audio_encoder_tokens(case: Case) -> None:
    """AST tokens after v.norm and audio_projection, zero fbank (no audio) included."""
    ours = case.model.audio_projection(case.model.audio_encoder(case.inputs.fbank))
    assert_close("projected AST tokens", ours, case.video.audio)


@torch.no_grad()
def test_audio_tokens_after_resampler(case: Case) -> None:
    ours = case.model.audio_tokens(case.inputs.fbank)
    assert_close("resampler output qa", ours, case.video.audio_tokens)


@torch.no_grad()
def test_fused_video(case: Case) -> None:
    inp = case.inputs
    feats = case.model.video_features(inp.pixels, inp.video_mask, inp.fbank, inp.asr)
    assert_close("V (frames + position)", feats.visual, case.video.visual)
    assert_close("audio-fusion gates", feats.audio_gates, case.video.av_gates)
    assert_close("speech-fusion gates", feats.speech_gates, case.video.sv_gates)
    assert_close("fused frames Ẑ", feats.embedding.frames, case.video.fused)
    assert_close("pooled z̄", feats.embedding.pooled, case.video.pooled)


@torch.no_grad()
def test_similarity_logits(case: Case) -> None:
    """The end-to-end score: our encode_text/encode_video/similarity vs the authors' exp-sum form."""
    inp = case.inputs
    video = case.model.encode_video(inp.pixels, inp.video_mask, inp.fbank, inp.asr)
    ours = case.model.similarity(case.model.encode_text(inp.captions), video)
    expected = ref.authors_similarity(case.theirs, inp.captions, inp.pixels, inp.video_mask, inp.fbank, inp.asr)
    assert expected.shape == (inp.captions.shape[0], inp.pixels.shape[0])
    assert_close("similarity logits", ours, expected, LOGIT_TOL)


@torch.no_grad()
def test_row_offset_mask_cancels(case: Case) -> None:
    """The authors' −1e4 cross-attention offset on padded query rows changes nothing beyond fp32
    rounding of (score − 1e4) (ulp(1e4) ≈ 1e-3), which is why our model omits it."""
    inp = case.inputs
    masked = ref.authors_video(case.theirs, inp.pixels, inp.video_mask, inp.fbank, inp.asr, row_offset_mask=True)
    assert_close("fused frames with the −1e4 row offset", masked.fused, case.video.fused, tol=1e-3)


@torch.no_grad()
def test_fp16_checkpoint_converts_to_fp32() -> None:
    """A checkpoint with the authors' mixed dtypes (fp16 CLIP/AST weights) becomes an all-fp32 model that
    computes what the authors' forward computes on the same weights widened to fp32."""
    theirs = random_authors_state_dict(seed=SEED + 2)
    mixed = {k: v.half() if _FP16_KEY.search(k) else v for k, v in theirs.items()}
    assert sum(v.dtype == torch.float16 for v in mixed.values()) > 50
    assert mixed["clip.ln_final.weight"].dtype == torch.float32
    model = authors_state_dict_to_model(mixed, "tiny")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    inp = make_inputs(model)
    video = model.encode_video(inp.pixels, inp.video_mask, inp.fbank, inp.asr)
    ours = model.similarity(model.encode_text(inp.captions), video)
    widened = {k: v.float() for k, v in mixed.items()}
    expected = ref.authors_similarity(widened, inp.captions, inp.pixels, inp.video_mask, inp.fbank, inp.asr)
    assert_close("logits, fp16 checkpoint", ours, expected, LOGIT_TOL)
