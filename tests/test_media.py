"""PyAV decoding helpers on the real shared media files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import media
from models.media import MediaError
from models.preprocess import sample_frame_indices, waveform_to_fbank

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
VIDEO = MEDIA / "video"
JFK = MEDIA / "speech" / "jfk.flac"

pytestmark = pytest.mark.skipif(not VIDEO.is_dir(), reason=f"shared test media not found at {MEDIA}")


def test_probe_uses_stream_frame_count() -> None:
    assert media.probe_video_frames(VIDEO / "dog_barking.mp4") == (170, 24.0)
    count, fps = media.probe_video_frames(VIDEO / "silence_girl.mp4")
    assert (count, fps) == (293, 25.0)


def test_probe_falls_back_to_duration_times_fps() -> None:
    # IronMan.mp4 stores no frame count: round(8.074741 s * 29.97) = 242, as OpenCV would report.
    count, fps = media.probe_video_frames(VIDEO / "IronMan.mp4")
    assert fps == pytest.approx(29.97)
    assert count == 242


def test_read_frames_shapes_and_selection() -> None:
    path = VIDEO / "dog_barking.mp4"
    frames = media.read_frames(path)
    # 170 frames at 24 fps: ceil(170/24) = 8 -> secs 0..8, index 192 is past the end -> 8 frames.
    assert len(frames) == len(sample_frame_indices(170, 24.0)) == 8
    for f in frames:
        assert f.shape == (480, 854, 3) and f.dtype == np.uint8
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])


@pytest.mark.parametrize("name", sorted(p.name for p in VIDEO.iterdir()) if VIDEO.is_dir() else [])
def test_read_frames_selects_the_same_frames_as_full_decode(name: str) -> None:
    """Found by time (only the groups of pictures that hold them decoded) or frame by frame: the frames at the
    chosen indices of a full decode, on every real clip (mp4, avi, one with a decoder that reorders)."""
    import av

    path = VIDEO / name
    wanted = set(sample_frame_indices(*media.probe_video_frames(path)))
    with av.open(str(path)) as c:
        full = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in wanted]
    got = media.read_frames(path)
    assert len(got) == len(full) > 0
    for a, b in zip(got, full, strict=True):
        np.testing.assert_array_equal(a, b)


def test_long_video_frames_decode_a_few_groups_of_pictures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four minutes at 25 fps with a key frame every 2 s: the twelve frames the model sees cost about twelve groups
    of pictures, not the 6,000 frames, and are the ones at their indices."""
    import av

    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "50", "bf": "2"}
        for i in range(25 * 240):
            img = np.full((48, 64, 3), (i * 7) % 256, np.uint8)
            img[:, : (i % 64)] = 255 - img[:, : (i % 64)]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    decoded: list[int] = []
    real = media.frames_at
    monkeypatch.setattr(media, "frames_at", lambda *args: real(*args[:4], decoded.append))
    got = media.read_frames(path)
    assert len(got) == 12 and sum(decoded) < 12 * 60
    wanted = set(sample_frame_indices(*media.probe_video_frames(path)))
    with av.open(str(path)) as c:
        full = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in wanted]
    for a, b in zip(got, full, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_frames_caps_at_max_frames() -> None:
    frames = media.read_frames(VIDEO / "vtest.avi", max_frames=12)  # 795 frames at 10 fps -> 80 -> 12
    assert len(frames) == 12
    assert len(media.read_frames(VIDEO / "vtest.avi", max_frames=4)) == 4


def test_read_frames_recovers_when_metadata_overstates(monkeypatch: pytest.MonkeyPatch) -> None:
    path = VIDEO / "dog_barking.mp4"
    monkeypatch.setattr(media, "probe_video_frames", lambda p: (170 * 3, 24.0))
    frames = media.read_frames(path)
    assert len(frames) == 8  # re-sampled from the 170 frames that really exist


def test_read_audio_present_and_absent() -> None:
    wav = media.read_audio(VIDEO / "dog_barking.mp4")
    assert wav is not None and wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / 16000 - 7.2) < 0.1
    assert 0.01 < np.abs(wav).max() <= 1.0
    # s16 samples scaled by 1/32768, like torchaudio.load of the authors' wav files
    np.testing.assert_array_equal(wav * 32768, np.round(wav * 32768))
    assert media.read_audio(VIDEO / "silence_girl.mp4") is None
    fbank, has_audio = waveform_to_fbank(media.read_audio(VIDEO / "silence_girl.mp4"))
    assert not has_audio and fbank.abs().sum() == 0


@pytest.mark.skipif(not JFK.is_file(), reason=f"shared test media not found at {JFK}")
def test_read_audio_flac_and_other_rate() -> None:
    wav = media.read_audio(JFK)
    assert wav is not None and wav.shape == (176000,)  # 11.0 s at 16 kHz
    wav8 = media.read_audio(JFK, sample_rate=8000)
    assert wav8 is not None and wav8.shape == (88000,)
    with pytest.raises(MediaError, match="no video stream"):
        media.read_frames(JFK)


def test_not_media_raises_media_error(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (fake, empty, tmp_path / "missing.mp4"):
        for fn in (media.read_frames, media.read_audio, media.probe_video_frames):
            with pytest.raises(MediaError) as info:
                fn(path)
            assert str(path) in str(info.value)
            assert isinstance(info.value, ValueError)


def test_truncated_video_raises_or_degrades(tmp_path: Path) -> None:
    # The first 4 KiB of an mp4: header only or garbage -> a MediaError, never another exception type.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((VIDEO / "dog_barking.mp4").read_bytes()[:4096])
    with pytest.raises(MediaError):
        media.read_frames(cut)
