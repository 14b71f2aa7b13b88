"""A controlled experiment: data where only the speech carries the caption's information.

Every video is random noise frames and silent audio; its transcript mentions an (adjective, noun) pair
inside filler words; its caption describes the same pair in other words. Nothing visual identifies the
video, so text->video retrieval on held-back videos is at chance unless the model reads the speech.
Two runs share everything (tiny architecture, seed, steps, learning rates, data) except that the
baseline's transcripts are blanked: the authors' "no speech" input, so its speech branch sees nothing.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import SAVEConfig, get_config
from ..factory import create_model
from ..preprocess import tokenize, tokenize_speech
from ..save import MAX_LOGIT_SCALE
from .evaluate import evaluate
from .loop import TrainConfig, Trainer

ADJECTIVES = ["red", "wooden", "tiny", "broken", "shiny", "frozen", "golden", "noisy", "ancient", "purple",
              "plastic", "giant"]
NOUNS = ["guitar", "volcano", "bicycle", "penguin", "kitchen", "rocket", "piano", "castle", "tractor", "dolphin",
         "lantern", "umbrella", "train", "camera", "garden", "robot"]
SPEECH_TEMPLATES = ["so today i want to show you my {a} {n} here", "well this {a} {n} is what we talk about",
                    "look at the {a} {n} everyone", "i think the {a} {n} is amazing right"]
CAPTION_TEMPLATES = ["a video about a {a} {n}", "someone talks about the {a} {n}", "a {a} {n} is discussed"]


class SpokenTopicVideos(Dataset):
    """Synthetic videos whose only identifying signal is what is said in them."""

    def __init__(self, topics: list[tuple[str, str]], seed: int, blank_speech: bool, audio_shape: tuple[int, int],
                 num_frames: int = 12, image_size: int = 224) -> None:
        rng = random.Random(seed)
        self.topics = topics
        self.seed = seed
        self.num_frames, self.image_size, self.audio_shape = num_frames, image_size, audio_shape
        transcripts = [rng.choice(SPEECH_TEMPLATES).format(a=a, n=n) for a, n in topics]
        self.captions = [rng.choice(CAPTION_TEMPLATES).format(a=a, n=n) for a, n in topics]
        self.speech_ids = tokenize_speech([None if blank_speech else t for t in transcripts])[0]
        self.caption_tokens = tokenize(self.captions)[0]

    def __len__(self) -> int:
        return len(self.topics)

    def video_item(self, index: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        pixels = torch.randn(self.num_frames, 3, self.image_size, self.image_size, generator=g)
        return {"pixel_values": pixels, "video_mask": torch.ones(self.num_frames, dtype=torch.long),
                "audio": torch.zeros(self.audio_shape), "audio_mask": torch.tensor(0.0),
                "speech_ids": self.speech_ids[index]}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {**self.video_item(index), "input_ids": self.caption_tokens[index]}

    # RetrievalSet protocol (one caption per video)
    def caption_ids(self) -> Tensor:
        return self.caption_tokens

    def text_to_video(self) -> Tensor:
        return torch.arange(len(self))

    def videos(self) -> Dataset:
        return _VideosOf(self)


class _VideosOf(Dataset):
    def __init__(self, data: SpokenTopicVideos) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.data.video_item(index)


@dataclass
class ExperimentConfig:
    steps: int = 400
    batch_size: int = 32
    train_videos: int = 2048
    heldout_videos: int = 64
    lr: float = 1e-3
    coef_lr: float = 1.0  # the tiny CLIP is random, so it trains at the same rate as the new modules
    seed: int = 0
    output_dir: str = "runs/speech-experiment"


def make_splits(cfg: ExperimentConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Held-back videos get distinct topics, so each held-back caption has exactly one right video."""
    rng = random.Random(cfg.seed)
    all_topics = [(a, n) for a in ADJECTIVES for n in NOUNS]
    heldout = rng.sample(all_topics, cfg.heldout_videos)
    train = [rng.choice(all_topics) for _ in range(cfg.train_videos)]
    return train, heldout


def experiment_model_config() -> SAVEConfig:
    """The tiny architecture with small frames and a short (silent) audio input, so a CPU run takes minutes:
    the frames and audio carry no information here, so their resolution changes nothing but the cost."""
    cfg = get_config("tiny")
    cfg.name = "tiny-speech-experiment"
    cfg.clip.vision_config.update(image_size=32, patch_size=16)
    cfg.audio.config.update(max_length=128)
    return cfg


def run_variant(cfg: ExperimentConfig, blank_speech: bool) -> dict:
    torch.manual_seed(cfg.seed)
    train_topics, heldout_topics = make_splits(cfg)
    model_cfg = experiment_model_config()
    shape = (model_cfg.audio.config["max_length"], model_cfg.audio.config["num_mel_bins"])
    train = SpokenTopicVideos(train_topics, cfg.seed + 1, blank_speech, shape, image_size=model_cfg.image_size)
    heldout = SpokenTopicVideos(heldout_topics, cfg.seed + 2, blank_speech, shape, image_size=model_cfg.image_size)
    model = create_model(model_cfg, pretrained=False)
    with torch.no_grad():  # start where pretrained CLIP is (s = 100), as the authors' runs do
        model.logit_scale.fill_(MAX_LOGIT_SCALE)
    name = "no-speech" if blank_speech else "with-speech"
    tc = TrainConfig(output_dir=str(Path(cfg.output_dir) / name), epochs=10_000, batch_size=cfg.batch_size,
                     lr=cfg.lr, coef_lr=cfg.coef_lr, num_workers=0, seed=cfg.seed, resume=False,
                     max_steps=cfg.steps, progress=True)
    start = time.perf_counter()
    Trainer(model, train, tc).fit()
    seconds = time.perf_counter() - start
    metrics = evaluate(model, heldout, batch_size=32, progress=False)
    return {"variant": name, "train_seconds": round(seconds, 1), **metrics}


def run_experiment(cfg: ExperimentConfig) -> dict:
    results = [run_variant(cfg, blank_speech=False), run_variant(cfg, blank_speech=True)]
    report = {"config": asdict(cfg), "results": results,
              "chance_R1": round(100.0 / cfg.heldout_videos, 2)}
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "results.json").write_text(json.dumps(report, indent=2))
    return report


def markdown_table(report: dict) -> str:
    lines = ["| variant | t2v R@1 | R@5 | R@10 | MdR | v2t R@1 | train s |", "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        t, v = r["t2v"], r["v2t"]
        lines.append(f"| {r['variant']} | {t['R1']:.1f} | {t['R5']:.1f} | {t['R10']:.1f} | {t['MdR']:.0f} | "
                     f"{v['R1']:.1f} | {r['train_seconds']} |")
    return "\n".join(lines)
