"""MSR-VTT in the layout the authors' code reads, as PyTorch datasets.

Folder layout (``--data-root``)::

    MSRVTT_data.json            {"sentences": [{"video_id": "video0", "caption": "..."}, ...], ...}
    MSRVTT_train.9k.csv         column video_id (MSRVTT_train.7k.csv for the 7k split)
    MSRVTT_JSFUSION_test.csv    columns key,vid_key,video_id,sentence (1k-A)
    videos/{video_id}.mp4
    transcripts.json            [{"key": "video0.mp4", "text": "..."}] - written by ``save-search transcribe``
    teacher/AudioFeature/{video_id}.pt, teacher/VideoFeature/{video_id}.pt   (optional, Soft-ALBEF)
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..inputs import load_video_inputs
from ..preprocess import MAX_WORDS, tokenize

TRAIN_CSV = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class DatasetError(ValueError):
    """The dataset folder is incomplete or inconsistent; the message says what is missing."""


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Transcripts by video id. Accepts the authors' list format ({"key": "<id>.<ext>", "text"}; the id is
    key[:-4]) and a plain {video_id: text} mapping."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        return {str(k): str(v or "") for k, v in data.items()}
    if isinstance(data, list):
        return {str(item["key"])[:-4]: str(item.get("text") or "") for item in data}
    raise DatasetError(f"{path}: expected a JSON list of {{key, text}} or an object of video_id -> text")


def write_transcripts(path: str | Path, transcripts: dict[str, str], extension: str = ".mp4") -> None:
    """Write the authors' format so their code can read our ASR output too."""
    items = [{"key": f"{vid}{extension}", "text": text} for vid, text in sorted(transcripts.items())]
    Path(path).write_text(json.dumps(items, ensure_ascii=False, indent=1))


def _csv_column(path: Path, column: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"missing {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and column not in rows[0]:
        raise DatasetError(f"{path} has no column {column!r}")
    return [row[column] for row in rows]


@dataclass
class MSRVTT:
    """Paths of an MSR-VTT folder and the caption pairs of each split."""

    root: Path
    videos_dir: Path | None = None
    transcripts_path: Path | None = None
    teacher_dir: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.videos_dir = Path(self.videos_dir) if self.videos_dir else self.root / "videos"
        self.transcripts_path = Path(self.transcripts_path) if self.transcripts_path else self.root / "transcripts.json"
        if self.teacher_dir is None and (self.root / "teacher").is_dir():
            self.teacher_dir = self.root / "teacher"

    def sentences(self) -> dict[str, list[str]]:
        path = self.root / "MSRVTT_data.json"
        if not path.is_file():
            raise DatasetError(f"missing {path}")
        by_video: dict[str, list[str]] = {}
        for s in json.loads(path.read_text())["sentences"]:
            by_video.setdefault(s["video_id"], []).append(s["caption"])
        return by_video

    def train_video_ids(self, split: str = "9k") -> list[str]:
        if split not in TRAIN_CSV:
            raise DatasetError(f"unknown train split {split!r}; use one of {sorted(TRAIN_CSV)}")
        return _csv_column(self.root / TRAIN_CSV[split], "video_id")

    def train_pairs(self, video_ids: Sequence[str]) -> list[tuple[str, str]]:
        """Every (video, caption) pair of the given videos: the authors' --expand_msrvtt_sentences."""
        sentences = self.sentences()
        missing = [v for v in video_ids if v not in sentences]
        if missing:
            raise DatasetError(
                f"{len(missing)} training videos have no caption in MSRVTT_data.json, e.g. {missing[:3]}")
        return [(v, c) for v in video_ids for c in sentences[v]]

    def test_pairs(self) -> list[tuple[str, str]]:
        """1k-A: one caption per video, read from the JSFusion csv."""
        path = self.root / TEST_CSV
        return list(zip(_csv_column(path, "video_id"), _csv_column(path, "sentence"), strict=True))

    def video_path(self, video_id: str) -> Path:
        assert self.videos_dir is not None  # set by __post_init__
        for ext in VIDEO_EXTENSIONS:
            candidate = self.videos_dir / f"{video_id}{ext}"
            if candidate.is_file():
                return candidate
        raise DatasetError(f"no video file for {video_id!r} in {self.videos_dir}")

    def transcripts(self, video_ids: Sequence[str]) -> dict[str, str]:
        assert self.transcripts_path is not None  # set by __post_init__
        if not self.transcripts_path.is_file():
            raise DatasetError(f"missing {self.transcripts_path}: run `save-search transcribe {self.videos_dir} "
                               f"--out {self.transcripts_path}` first")
        transcripts = read_transcripts(self.transcripts_path)
        missing = sorted(set(video_ids) - set(transcripts))
        if missing:
            # The authors' loader raises KeyError here too: a missing transcript is a data bug, not "no speech".
            raise DatasetError(f"{len(missing)} videos have no transcript in {self.transcripts_path}, "
                               f"e.g. {missing[:3]}")
        return transcripts


def split_validation(video_ids: Sequence[str], val_videos: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out ``val_videos`` training videos for model selection (never the test split)."""
    if not 0 < val_videos < len(video_ids):
        raise DatasetError(f"val_videos must be between 1 and {len(video_ids) - 1}")
    shuffled = list(video_ids)
    random.Random(seed).shuffle(shuffled)
    val = set(shuffled[:val_videos])
    return [v for v in video_ids if v not in val], [v for v in video_ids if v in val]


def one_caption_per_video(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """First caption of each video, for a compact validation set."""
    seen: dict[str, str] = {}
    for v, c in pairs:
        seen.setdefault(v, c)
    return list(seen.items())


class VideoTextDataset(Dataset):
    """(video, caption) samples with the video's frames, audio, transcript and optional teacher features."""

    def __init__(
        self,
        data: MSRVTT,
        pairs: Sequence[tuple[str, str]],
        audio_kind: str = "fbank",
        image_size: int = 224,
        max_words: int = MAX_WORDS,
        use_teacher: bool = False,
    ) -> None:
        self.data = data
        self.pairs = list(pairs)
        self.video_ids = sorted({v for v, _ in self.pairs})
        self.video_index = {v: i for i, v in enumerate(self.video_ids)}
        self.transcripts = data.transcripts(self.video_ids)
        self.audio_kind = audio_kind
        self.image_size = image_size
        self.max_words = max_words
        self.use_teacher = use_teacher
        if use_teacher and data.teacher_dir is None:
            raise DatasetError("Soft-ALBEF needs teacher features: pass --teacher-dir (AudioFeature/, VideoFeature/)")

    def __len__(self) -> int:
        return len(self.pairs)

    def text_to_video(self) -> Tensor:
        return torch.tensor([self.video_index[v] for v, _ in self.pairs])

    def caption_ids(self) -> Tensor:
        return tokenize([c for _, c in self.pairs], max_words=self.max_words)[0]

    def videos(self) -> Dataset:
        return VideosOnly(self)

    def teacher(self, video_id: str) -> tuple[Tensor, Tensor]:
        root = self.data.teacher_dir
        assert root is not None
        video = torch.load(root / "VideoFeature" / f"{video_id}.pt", map_location="cpu", weights_only=True)
        audio = torch.load(root / "AudioFeature" / f"{video_id}.pt", map_location="cpu", weights_only=True)
        return video.float().flatten(), audio.float().flatten()

    def video_item(self, video_id: str) -> dict[str, Tensor]:
        inputs = load_video_inputs(self.data.video_path(video_id), self.transcripts.get(video_id),
                                   self.audio_kind, self.image_size)
        return {"pixel_values": inputs.pixel_values, "video_mask": inputs.video_mask, "audio": inputs.audio,
                "audio_mask": torch.tensor(float(inputs.has_audio)), "speech_ids": inputs.speech_ids,
                "video_index": torch.tensor(self.video_index[video_id])}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        video_id, caption = self.pairs[index]
        item = self.video_item(video_id)
        item["input_ids"] = tokenize([caption], max_words=self.max_words)[0][0]
        if self.use_teacher:
            item["teacher_video"], item["teacher_audio"] = self.teacher(video_id)
        return item


class VideosOnly(Dataset):
    """Each video of a VideoTextDataset once (evaluation encodes every video a single time)."""

    def __init__(self, dataset: VideoTextDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.video_ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.dataset.video_item(self.dataset.video_ids[index])
