"""Probe/validate and decode stages of the ingest worker: every bad-input class fails with its own kind and a
readable reason, good files pass, and decoding keeps memory bounded while matching the model's preprocessing."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from indexer.errors import AccessError, BadInputError, IngestError
from indexer.ingest import access as access_mod
from indexer.ingest import probe as probe_mod
from indexer.ingest.access import check_access, within_roots
from indexer.ingest.decode import DecodedVideo, decode, decode_audio_to_pcm, fbank_from_pcm, pcm_memmap, save_thumbnail
from indexer.ingest.probe import ProbeResult, probe
from models.media import read_audio, read_frames
from models.preprocess import waveform_to_fbank

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
VIDEO = MEDIA / "video"
JFK = MEDIA / "speech" / "jfk.flac"
HOTWORDS = MEDIA / "speech" / "hotwords.mp3"

needs_media = pytest.mark.skipif(not VIDEO.is_dir(), reason=f"shared test media not found at {MEDIA}")
needs_jfk = pytest.mark.skipif(not JFK.is_file(), reason=f"shared test media not found at {JFK}")

LIMITS = {"max_duration_s": 4 * 3600.0, "max_size_bytes": 20 * 1024**3}


# --- fixtures generated with PyAV (no ffmpeg CLI needed) ------------------------------------------------------
def _write_video(path: Path, seconds: float = 3.0, fps: int = 25, audio: str | None = "aac",
                 container_format: str | None = None, size: tuple[int, int] = (64, 48)) -> Path:
    """A small moving-pattern video (mpeg4, FFmpeg's own encoder) with an optional 440 Hz tone track."""
    width, height = size
    with av.open(str(path), "w", format=container_format) as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = None
        if audio:
            aus = out.add_stream(audio, rate=44100)
            aus.layout = "mono"
        for i in range(int(seconds * fps)):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (i * 9) % 256
            x = (i * 3) % (width - 8)
            img[8:24, x : x + 8] = 255
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            n, chunk = int(seconds * 44100), aus.codec_context.frame_size or 1024
            for t in range(0, n, chunk):
                tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(t, t + chunk) / 44100)
                frame = av.AudioFrame.from_ndarray((tone * 32767).astype(np.int16)[None], format="s16",
                                                   layout="mono")
                frame.sample_rate, frame.pts = 44100, t
                for packet in aus.encode(frame):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
    return path


def _write_wav(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w") as out:
        st = out.add_stream("pcm_s16le", rate=16000)
        st.layout = "mono"
        samples = (0.2 * np.sin(np.arange(int(seconds * 16000)) / 5) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in st.encode(frame):
            out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


def _patch_avi_fourcc(data: bytes, new: bytes = b"ZZZZ") -> bytes:
    """Replace the video FourCC in an AVI's stream header and BITMAPINFOHEADER, so no decoder matches."""
    out = bytearray(data)
    vids = data.find(b"vids", data.find(b"strh"))
    out[vids + 4 : vids + 8] = new  # strh fccHandler
    strf = data.find(b"strf", vids)
    out[strf + 8 + 16 : strf + 8 + 20] = new  # BITMAPINFOHEADER biCompression
    return bytes(out)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("generated")
    return {
        "mp4_aac": _write_video(d / "tone.mp4"),
        "mp4_silent": _write_video(d / "silent.mp4", audio=None),
        "mkv": _write_video(d / "clip.mkv", seconds=4.0),
        "avi": _write_video(d / "clip.avi", audio=None),
        "wav": _write_wav(d / "speech.wav"),
    }


def _expect(exc: type[IngestError], kind: str, *words: str):
    """Context manager: raises ``exc`` with ``kind``; the reason mentions each word (case-insensitive)."""

    class _Check:
        def __enter__(self) -> None:
            self._raises = pytest.raises(exc)
            self.info = self._raises.__enter__()

        def __exit__(self, *args: object) -> bool:
            if not self._raises.__exit__(*args):
                return False  # another exception type: let it propagate as it is
            err = self.info.value
            assert err.kind == kind, f"kind {err.kind!r} != {kind!r}: {err.reason}"
            assert err.permanent
            for w in words:
                assert w.lower() in err.reason.lower(), f"{w!r} not in reason {err.reason!r}"
            assert str(err) == err.reason  # prints as the sentence, for logs and the job table
            return True

    return _Check()


# --- check_access ------------------------------------------------------------------------------------------
def test_access_ok_resolves_symlinks_inside_roots(tmp_path: Path) -> None:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    target = root / "sub" / "a.mp4"
    target.write_bytes(b"x")
    link = root / "link.mp4"
    link.symlink_to(target)
    assert check_access(link, [root]) == target.resolve()
    assert check_access(str(target), None) == target.resolve()
    assert check_access(target, []) == target.resolve()  # no roots configured: anything readable
    root_link = tmp_path / "media-link"
    root_link.symlink_to(root)  # a root given through a symlink still contains its files
    assert check_access(target, [root_link]) == target.resolve()


def test_access_missing_and_broken_symlink(tmp_path: Path) -> None:
    with _expect(AccessError, "not_found", "does not exist"):
        check_access(tmp_path / "nope.mp4", None)
    link = tmp_path / "dangling.mp4"
    link.symlink_to(tmp_path / "gone.mp4")
    with _expect(AccessError, "not_found", "broken symlink"):
        check_access(link, [tmp_path])


def test_access_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").symlink_to(tmp_path / "b.mp4")
    (tmp_path / "b.mp4").symlink_to(tmp_path / "a.mp4")
    with _expect(AccessError, "not_found", "symbolic links"):
        check_access(tmp_path / "a.mp4", [tmp_path])


def test_access_directory_and_fifo_are_not_files(tmp_path: Path) -> None:
    with _expect(AccessError, "not_a_file", "directory"):
        check_access(tmp_path, None)
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with _expect(AccessError, "not_a_file", "not a regular file"):
        check_access(fifo, None)  # must not block trying to open it


def test_access_unreadable_by_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "locked.mp4"
    f.write_bytes(b"data")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):  # running as root: permissions do not block reads, simulate them
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == f else real_access(p, mode))
        with _expect(AccessError, "unreadable", "permission denied"):
            check_access(f, None)
    finally:
        f.chmod(0o644)


def test_access_unreadable_when_open_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.access can say yes while the read fails (ACLs, root-squashed NFS, SELinux): the real open decides."""
    f = tmp_path / "nfs.mp4"
    f.write_bytes(b"data")

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(access_mod, "open", deny, raising=False)
    with _expect(AccessError, "unreadable", "permission denied"):
        check_access(f, None)


def test_access_outside_allowed_roots(tmp_path: Path) -> None:
    root, outside, sibling = tmp_path / "media", tmp_path / "private", tmp_path / "media2"
    for d in (root, outside, sibling):
        d.mkdir()
    secret = outside / "secret.mp4"
    secret.write_bytes(b"x")
    (sibling / "b.mp4").write_bytes(b"x")
    escape = root / "innocent.mp4"
    escape.symlink_to(secret)  # inside the root by name, outside once resolved
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    cases = [secret, escape, root / "dirlink" / "secret.mp4", root / ".." / "private" / "secret.mp4",
             sibling / "b.mp4"]  # media2 is not below media although the string starts the same
    for path in cases:
        with _expect(AccessError, "outside_allowed_roots", "outside the allowed roots", str(root)):
            check_access(path, [root])
    # Outside the roots, a missing file is reported as outside (nothing is revealed about other places).
    with _expect(AccessError, "outside_allowed_roots"):
        check_access(outside / "missing.mp4", [root])
    # A link out of the roots is refused without saying where it points (issue 12: no target revealed).
    with pytest.raises(AccessError) as refused:
        check_access(escape, [root])
    assert refused.value.kind == "outside_allowed_roots" and str(secret) not in str(refused.value)
    assert str(outside) not in str(refused.value)



def test_within_roots_resolves_the_path_and_the_roots(tmp_path: Path) -> None:
    """The one containment rule (bulk listing and the access check): symlinks resolved on both sides."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    clip = real / "sub" / "a.mp4"
    clip.write_bytes(b"x")
    root_link = tmp_path / "root-link"
    root_link.symlink_to(real, target_is_directory=True)
    assert within_roots(clip, [root_link])  # a root named through a link still holds its files
    assert within_roots(root_link / "sub" / "a.mp4", [real])
    assert within_roots(real, [real])
    assert not within_roots(tmp_path / "real2" / "a.mp4", [real])  # a sibling whose name starts the same
    (real / "out").symlink_to(tmp_path, target_is_directory=True)
    assert not within_roots(real / "out" / "secret.mp4", [real])  # a link inside that leads out
    assert not within_roots(real / ".." / "secret.mp4", [real])
    assert check_access(clip, [root_link]) == clip.resolve()

# --- probe: bad inputs -------------------------------------------------------------------------------------
def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.mp4"
    f.write_bytes(b"")
    with _expect(BadInputError, "empty_file", "empty", "0 bytes"):
        probe(f, **LIMITS)


def test_too_large_is_checked_before_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big.mp4"
    f.write_bytes(b"not even a video" * 100)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file must not be opened")

    monkeypatch.setattr(probe_mod.av, "open", no_open)
    with _expect(BadInputError, "too_large", "too large", "1600 bytes", "1000 bytes"):
        probe(f, max_duration_s=3600, max_size_bytes=1000)


def test_text_file_named_mp4_is_not_media(tmp_path: Path) -> None:
    f = tmp_path / "notes.mp4"
    f.write_text("this is not a video, just some notes\n" * 40)
    with _expect(BadInputError, "not_media", "not a media file"):
        probe(f, **LIMITS)


def test_still_image_is_not_a_video(tmp_path: Path) -> None:
    f = tmp_path / "photo.mp4"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(f, format="PNG")
    with _expect(BadInputError, "not_media", "still image"):
        probe(f, **LIMITS)


@needs_jfk
def test_audio_only_flac_and_mp3() -> None:
    with _expect(BadInputError, "no_video_stream", "no video stream", "only audio", "flac"):
        probe(JFK, **LIMITS)
    if HOTWORDS.is_file():
        with _expect(BadInputError, "no_video_stream", "only audio", "mp3"):
            probe(HOTWORDS, **LIMITS)


def test_audio_only_wav(gen: dict[str, Path]) -> None:
    with _expect(BadInputError, "no_video_stream", "no video stream", "pcm_s16le"):
        probe(gen["wav"], **LIMITS)


def test_mp3_with_cover_art_is_audio_only(tmp_path: Path) -> None:
    """Cover art shows up as a one-picture 'video' stream (attached_pic): still an audio file."""
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this FFmpeg build has no MP3 encoder")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, format="JPEG")
    f = tmp_path / "song.mp3"
    with av.open(str(f), "w") as out:
        aus = out.add_stream("libmp3lame", rate=44100)
        aus.layout = "mono"
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        pic = av.Packet(buf.getvalue())
        pic.stream, pic.pts, pic.dts = cover, 0, 0
        out.mux(pic)
        for t in range(0, 44100, 1152):
            tone = (0.3 * np.sin(np.arange(t, t + 1152) / 10) * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 44100, t
            for packet in aus.encode(frame):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    with _expect(BadInputError, "no_video_stream", "only audio"):
        probe(f, **LIMITS)


def test_unsupported_codec_generated_avi(gen: dict[str, Path], tmp_path: Path) -> None:
    f = tmp_path / "alien.avi"
    f.write_bytes(_patch_avi_fourcc(gen["avi"].read_bytes()))
    with _expect(BadInputError, "unsupported_codec", "codec", "cannot decode"):
        probe(f, **LIMITS)
    with _expect(BadInputError, "decode_failed", "cannot be decoded"):
        decode(f, tmp_path / "work")


@needs_media
def test_unsupported_codec_real_avi(tmp_path: Path) -> None:
    for name in ("Megamind.avi", "vtest.avi"):
        f = tmp_path / name
        f.write_bytes(_patch_avi_fourcc((VIDEO / name).read_bytes()))
        with _expect(BadInputError, "unsupported_codec", "codec", "cannot decode"):
            probe(f, **LIMITS)


@needs_media
def test_too_long() -> None:
    with _expect(BadInputError, "too_long", "too long", "7.2 s", "5 s"):
        probe(VIDEO / "dog_barking.mp4", max_duration_s=5, max_size_bytes=10**9)


def test_too_long_generated(gen: dict[str, Path]) -> None:
    with _expect(BadInputError, "too_long", "too long"):
        probe(gen["mp4_aac"], max_duration_s=2.0, max_size_bytes=10**9)


def _cut(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


@needs_media
def test_truncated_mp4_cut_in_half(tmp_path: Path) -> None:
    """moov at the end (bigbuckbunny): FFmpeg cannot even open half of it; moov first (dog_barking) and
    fragmented (IronMan): it opens and claims the full duration. All are an interrupted copy and must say so."""
    for name in ("bigbuckbunny.mp4", "dog_barking.mp4", "IronMan.mp4"):
        src = VIDEO / name
        f = _cut(src, tmp_path / name, src.stat().st_size // 2)
        with _expect(BadInputError, "truncated", "truncated", "bytes"):
            probe(f, **LIMITS)


@needs_media
def test_truncated_header_intact_data_cut(tmp_path: Path) -> None:
    """The whole moov index survives, the media data stops 2 KiB in: nothing the index points to is there."""
    src = VIDEO / "dog_barking.mp4"
    data = src.read_bytes()
    mdat = data.index(b"mdat") - 4
    f = _cut(src, tmp_path / "head.mp4", mdat + 8 + 2048)
    with _expect(BadInputError, "truncated", "'mdat' box", "truncated"):
        probe(f, **LIMITS)


@needs_media
def test_truncated_avi(tmp_path: Path) -> None:
    """FFmpeg quietly reports the shorter duration of a cut AVI; the RIFF size field tells the truth."""
    src = VIDEO / "Megamind.avi"
    f = _cut(src, tmp_path / "cut.avi", int(src.stat().st_size * 0.7))
    with _expect(BadInputError, "truncated", "avi header declares", "truncated"):
        probe(f, **LIMITS)


def test_truncated_generated_mp4_and_mkv(gen: dict[str, Path], tmp_path: Path) -> None:
    mp4 = _cut(gen["mp4_aac"], tmp_path / "cut.mp4", gen["mp4_aac"].stat().st_size // 2)
    with _expect(BadInputError, "truncated", "truncated"):
        probe(mp4, **LIMITS)
    # Matroska has no size check here: the tail read finds the data ending at half the declared duration.
    mkv = _cut(gen["mkv"], tmp_path / "cut.mkv", gen["mkv"].stat().st_size // 2)
    with _expect(BadInputError, "truncated", "declares 4.0 s", "data stops at"):
        probe(mkv, **LIMITS)


@needs_media
def test_truncation_found_by_the_tail_read_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the size-field check, seeking near the declared end still finds the missing data."""
    monkeypatch.setattr(probe_mod, "_declared_size_problem", lambda path, size: None)
    src = VIDEO / "dog_barking.mp4"
    f = _cut(src, tmp_path / "half.mp4", src.stat().st_size // 2)
    with _expect(BadInputError, "truncated", "declares 7.2 s", "data stops at"):
        probe(f, **LIMITS)


@needs_media
def test_data_zeroed_near_the_end(tmp_path: Path) -> None:
    """Full size, valid index, but the last 40 % is zeros (an interrupted pre-allocated download)."""
    data = bytearray((VIDEO / "silence_girl.mp4").read_bytes())
    start = int(len(data) * 0.6)
    data[start:] = bytes(len(data) - start)
    f = tmp_path / "zeroed.mp4"
    f.write_bytes(bytes(data))
    with _expect(BadInputError, "truncated", "cannot be decoded", "near the end"):
        probe(f, **LIMITS)


# --- probe: good inputs ------------------------------------------------------------------------------------
def test_probe_generated_with_and_without_audio(gen: dict[str, Path]) -> None:
    r = probe(gen["mp4_aac"], **LIMITS)
    assert isinstance(r, ProbeResult)
    assert r.has_video and r.has_audio and (r.video_codec, r.audio_codec) == ("mpeg4", "aac")
    assert (r.width, r.height, r.fps, r.frame_count) == (64, 48, 25.0, 75)
    assert r.duration_s == pytest.approx(3.0, abs=0.1)
    assert r.size_bytes == gen["mp4_aac"].stat().st_size and r.container.startswith("mov,mp4")
    silent = probe(gen["mp4_silent"], **LIMITS)
    assert silent.has_video and not silent.has_audio and silent.audio_codec is None
    mkv = probe(gen["mkv"], **LIMITS)
    assert mkv.container.startswith("matroska") and mkv.duration_s == pytest.approx(4.0, abs=0.1)
    assert probe(gen["avi"], **LIMITS).container == "avi"


@needs_media
def test_video_without_audio_is_fine() -> None:
    r = probe(VIDEO / "silence_girl.mp4", **LIMITS)
    assert r.has_video and not r.has_audio and r.audio_codec is None
    assert (r.video_codec, r.width, r.height, r.fps, r.frame_count) == ("h264", 596, 336, 25.0, 293)
    assert r.duration_s == pytest.approx(11.72)


@needs_media
def test_all_real_videos_pass() -> None:
    """No false alarms on real files: plain, moov-at-end and fragmented mp4, AVI with and without audio."""
    expected = {"dog_barking.mp4": (7.2, True), "bigbuckbunny.mp4": (5.3, True), "IronMan.mp4": (8.1, True),
                "skateboarding_dog.mp4": (14.1, True), "birthday.mp4": (16.7, False),
                "Megamind.avi": (11.3, True), "vtest.avi": (79.5, False)}
    for path in sorted(VIDEO.iterdir()):
        r = probe(path, **LIMITS)
        assert r.frame_count > 0 and r.fps > 0 and r.width > 0, path.name
        if path.name in expected:
            duration, has_audio = expected[path.name]
            assert (round(r.duration_s, 1), r.has_audio) == (duration, has_audio), path.name


# --- decode --------------------------------------------------------------------------------------------------
@needs_media
def test_decode_real_video(tmp_path: Path) -> None:
    path = VIDEO / "dog_barking.mp4"
    out = decode(path, tmp_path / "work")
    assert isinstance(out, DecodedVideo) and out.audio_error is None
    assert 1 <= len(out.frames) <= 12
    want = read_frames(path)
    assert len(out.frames) == len(want) == 8
    for a, b in zip(out.frames, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(out.thumbnail is f for f in out.frames[2:4])  # about a third of the way in
    # PCM: the same samples as models.media.read_audio, ~duration x 16 kHz
    assert out.audio_path is not None and out.audio_path.parent == tmp_path / "work"
    pcm = pcm_memmap(out.audio_path)
    assert out.audio_samples == len(pcm) and abs(len(pcm) - 7.198 * 16000) < 0.02 * 16000
    ref = read_audio(path)
    assert ref is not None
    np.testing.assert_array_equal(pcm.astype(np.float32), ref * 32768)
    thumb = save_thumbnail(out.thumbnail, tmp_path / "thumbs" / "dog.jpg")
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and max(img.size) == 320 and img.size == (320, 180)
    assert sorted(p.name for p in thumb.parent.iterdir()) == ["dog.jpg"]  # no temp files left behind


@needs_media
def test_decode_caps_frames_and_handles_no_audio(tmp_path: Path) -> None:
    out = decode(VIDEO / "vtest.avi", tmp_path)  # 79.5 s -> 80 one-per-second frames -> 12
    assert len(out.frames) == 12 and out.audio_path is None and out.audio_samples == 0
    assert out.thumbnail is out.frames[4]
    assert not any(tmp_path.iterdir())  # no audio file for a video without audio


def test_decode_generated(gen: dict[str, Path], tmp_path: Path) -> None:
    out = decode(gen["mp4_aac"], tmp_path / "a")
    assert len(out.frames) == 3 and out.frames[0].shape == (48, 64, 3) and out.frames[0].dtype == np.uint8
    assert out.audio_path is not None and abs(out.audio_samples - 3 * 16000) < 0.05 * 3 * 16000
    pcm = pcm_memmap(out.audio_path)
    assert pcm.dtype == np.int16 and len(pcm) == out.audio_samples and np.abs(pcm).max() > 5000  # the tone
    silent = decode(gen["mp4_silent"], tmp_path / "b")
    assert silent.audio_path is None and silent.audio_samples == 0 and len(silent.frames) == 3


def test_decode_audio_to_pcm_none_without_audio(gen: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a.s16le"
    assert decode_audio_to_pcm(gen["mp4_silent"], out) is None
    assert not out.exists() and not any(tmp_path.iterdir())
    n = decode_audio_to_pcm(gen["wav"], out)
    assert n == 16000 and out.stat().st_size == 2 * n
    assert decode_audio_to_pcm(gen["wav"], tmp_path / "8k.s16le", sample_rate=8000) == 8000


def test_decode_audio_to_pcm_leaves_nothing_on_failure(gen: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def __init__(self, **kwargs: object) -> None:
            pass

        def resample(self, frame: object) -> list:
            raise RuntimeError("disk full")

    out = tmp_path / "a.s16le"
    out.write_bytes(b"old")
    import models.media

    monkeypatch.setattr(models.media.av, "AudioResampler", Broken)  # the one audio decoding loop lives there
    with pytest.raises(RuntimeError):
        decode_audio_to_pcm(gen["mp4_aac"], out)
    assert out.read_bytes() == b"old"  # the previous complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["a.s16le"]  # and the partial one is gone


def test_pcm_memmap_empty_and_int16(tmp_path: Path) -> None:
    empty = tmp_path / "e.s16le"
    empty.write_bytes(b"")
    assert len(pcm_memmap(empty)) == 0 and pcm_memmap(empty).dtype == np.int16
    f = tmp_path / "x.s16le"
    np.array([1, -2, 32767, -32768], dtype="<i2").tofile(f)
    m = pcm_memmap(f)
    assert isinstance(m, np.memmap) and m.tolist() == [1, -2, 32767, -32768]
    assert fbank_from_pcm(pcm_memmap(empty))[1] is False


def test_save_thumbnail_small_and_portrait(tmp_path: Path) -> None:
    frame = np.zeros((600, 200, 3), np.uint8)
    frame[:, :, 2] = 255
    out = save_thumbnail(frame, tmp_path / "t.jpg", max_side=300)
    with Image.open(out) as img:
        assert img.size == (100, 300) and img.mode == "RGB"
        assert np.asarray(img)[150, 50, 2] > 200
    small = save_thumbnail(np.full((20, 30, 3), 128, np.uint8), tmp_path / "s.jpg")
    with Image.open(small) as img:
        assert img.size == (30, 20)  # never upscaled


# --- fbank from PCM ------------------------------------------------------------------------------------------
def _reference(pcm: np.ndarray) -> tuple[torch.Tensor, bool]:
    return waveform_to_fbank(np.asarray(pcm).astype(np.float32) / 32768)


@needs_jfk
def test_fbank_from_pcm_equals_reference_on_speech(tmp_path: Path) -> None:
    path = tmp_path / "jfk.s16le"
    assert decode_audio_to_pcm(JFK, path) == 176000
    pcm = pcm_memmap(path)
    got, has = fbank_from_pcm(pcm)
    want, want_has = _reference(pcm)
    assert has and want_has and got.shape == (1024, 128) and got.dtype == torch.float32
    assert (got - want).abs().max().item() < 1e-4


def _noise(n: int, seed: int) -> np.ndarray:
    """Noise + a tone + a DC offset + a silent stretch: the global mean matters, some windows are near the floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = rng.normal(300.0, 1500.0, n) + 4000 * np.sin(2 * np.pi * 440 * t / 16000)
    x[n // 3 : n // 3 + n // 10] = 300.0
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("n", [0, 1, 399, 400, 401, 1023, 1024, 5000, 409_599, 409_600, 409_601, 500_000])
def test_fbank_from_pcm_equals_reference_edge_lengths(n: int) -> None:
    """Around one window (400), 1024 samples (shift 0 -> 1) and 409600 (windows stop overlapping)."""
    pcm = _noise(n, seed=n)
    got, has = fbank_from_pcm(pcm)
    want, want_has = _reference(pcm)
    assert has == want_has == (n >= 400)
    assert (got - want).abs().max().item() < 1e-4


def test_fbank_from_pcm_equals_reference_long(tmp_path: Path) -> None:
    """10 minutes: shift 9375 samples, windows far apart."""
    path = tmp_path / "long.s16le"
    _noise(16000 * 600 + 123, seed=7).tofile(path)
    pcm = pcm_memmap(path)
    got, has = fbank_from_pcm(pcm)
    want, _ = _reference(pcm)
    assert has and (got - want).abs().max().item() < 1e-4


class _CountingPCM:
    """Wraps an int16 array and records every slice read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.reads = data, []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: slice) -> np.ndarray:
        assert isinstance(key, slice), "only slices may be read"
        chunk = self.data[key]
        self.reads.append(len(chunk))
        return chunk


def test_fbank_from_pcm_memory_is_bounded(tmp_path: Path) -> None:
    """30 minutes of 16 kHz PCM (57.6 MB on disk): bounded reads, small peak allocation, same result."""
    n = 30 * 60 * 16000
    path = tmp_path / "long.s16le"
    rng = np.random.default_rng(3)
    with open(path, "wb") as f:
        for _ in range(0, n, 1 << 22):
            f.write(rng.integers(-3000, 3000, 1 << 22, dtype=np.int16).astype("<i2").tobytes())
    pcm = pcm_memmap(path)[:n]
    counting = _CountingPCM(pcm)
    tracemalloc.start()
    try:
        got, has = fbank_from_pcm(counting)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert has and got.shape == (1024, 128)
    assert peak < 8 * 1024**2, f"peak traced allocation {peak} bytes for a {path.stat().st_size} byte file"
    # one streaming pass for the mean (chunks of <= 1 M samples) + the 1024 windows of 400 samples
    chunks = [r for r in counting.reads if r != 400]
    windows = [r for r in counting.reads if r == 400]
    assert max(counting.reads) <= 1 << 20 and sum(chunks) == n
    assert len(windows) == 1024 and sum(windows) == 1024 * 400
    want, _ = _reference(pcm)
    assert (got - want).abs().max().item() < 1e-4
