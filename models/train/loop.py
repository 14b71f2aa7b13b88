"""The training loop: the paper's recipe (margin InfoNCE + Soft-ALBEF, BertAdam warmup-cosine, grad clip,
logit-scale clamp), AMP on GPU, multi-GPU with torchrun, checkpoints, resume and progress bars."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..factory import load_checkpoint, save_checkpoint
from ..loss import SAVELoss
from ..save import SAVEModel, VideoEmbedding
from ..similarity import masked_mean_pool
from .evaluate import RetrievalSet, evaluate
from .optim import LearningRates, apply_freezing, build_optimizer

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"


@dataclass
class TrainConfig:
    output_dir: str
    epochs: int = 5
    batch_size: int = 128  # global, as the paper
    lr: float = 1e-4
    coef_lr: float = 1e-3
    query_lr_multiplier: float = 100.0
    weight_decay: float = 0.2
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    beta: float = 0.2
    delta: float = 0.1
    distill_weight: float = 1.0
    num_workers: int = 4
    val_batch_size: int = 32
    amp: bool = True  # fp16 autocast on CUDA; ignored on CPU
    seed: int = 42
    resume: bool = True
    max_steps: int | None = None  # stop early (smoke runs, experiments)
    eval_every_steps: int | None = None  # default: after every epoch
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- distributed helpers
def distributed_setup() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


class _AllGather(torch.autograd.Function):
    """All-gather whose backward returns only the local slice of the gradient, like the authors' AllGather:
    every rank computes the loss on the full global batch (reference §3.1)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rank, ctx.batch = dist.get_rank(), tensor.shape[0]
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def gather(tensor: Tensor) -> Tensor:
    return _AllGather.apply(tensor) if dist.is_initialized() and dist.get_world_size() > 1 else tensor


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- the loop
class Trainer:
    """Trains a SAVEModel on any dataset yielding the batch keys of ``VideoTextDataset``."""

    def __init__(self, model: SAVEModel, train_set: Dataset, config: TrainConfig,
                 val_set: RetrievalSet | None = None, on_eval: Callable[[int, dict], None] | None = None) -> None:
        self.config = config
        self.rank, self.world, self.device = distributed_setup()
        _seed_everything(config.seed + self.rank)
        self.model = model.to(self.device)
        self.model.fusion_enabled = True  # training always uses (and trains) the fusion
        apply_freezing(self.model)
        self.train_set, self.val_set, self.on_eval = train_set, val_set, on_eval
        per_device = max(1, config.batch_size // self.world)
        self.sampler: DistributedSampler | None = (DistributedSampler(train_set, shuffle=True, seed=0, drop_last=True)
                                                    if self.world > 1 else None)
        generator = torch.Generator().manual_seed(config.seed)
        self.loader = DataLoader(train_set, batch_size=per_device, shuffle=self.sampler is None,
                                 sampler=self.sampler, drop_last=True, num_workers=config.num_workers,
                                 generator=generator, pin_memory=self.device.type == "cuda")
        if len(self.loader) == 0:
            raise ValueError(f"the training set ({len(cast(Sized, train_set))} samples) is smaller than one batch "
                             f"({per_device})")
        steps = len(self.loader) * config.epochs
        self.total_steps = min(steps, config.max_steps) if config.max_steps else steps
        rates = LearningRates(config.lr, config.coef_lr, config.query_lr_multiplier, config.weight_decay)
        self.optimizer = build_optimizer(self.model, rates, self.total_steps, config.warmup, config.max_grad_norm)
        if self.world > 1:  # same starting weights everywhere; gradients are averaged by hand in train_step
            for p in self.model.state_dict().values():
                dist.broadcast(p, src=0)
        self.criterion = SAVELoss(config.beta, config.delta, config.distill_weight)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp and self.device.type == "cuda")
        self.output = Path(config.output_dir)
        self.step, self.epoch, self.best_r1 = 0, 0, float("-inf")
        self.history: list[dict[str, Any]] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ state
    def _save(self, name: str, latest: bool = True) -> Path:
        folder = save_checkpoint(self.model, self.output / name, extra={"step": self.step, "epoch": self.epoch})
        torch.save({"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                    "step": self.step, "epoch": self.epoch, "best_r1": self.best_r1, "history": self.history,
                    "torch_rng": torch.get_rng_state(), "config": asdict(self.config)},
                   folder / TRAINER_STATE)
        if latest:
            (self.output / "latest").write_text(name)
        return folder

    def try_resume(self) -> bool:
        latest = self.output / "latest"
        if not (self.config.resume and latest.is_file()):
            return False
        folder = self.output / latest.read_text().strip()
        restored = load_checkpoint(folder, device=self.device)
        self.model.load_state_dict(restored.state_dict())
        state = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.best_r1 = state["step"], state["epoch"], state["best_r1"]
        self.history = state["history"]
        torch.set_rng_state(state["torch_rng"])
        if self.is_main:
            log.info("resumed from %s at step %d (epoch %d)", folder, self.step, self.epoch)
        return True

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        model = self.model
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.scaler.is_enabled()):
            text = model.encode_text(b["input_ids"])
            feats = model.video_features(b["pixel_values"], b["video_mask"], b["audio"], b["speech_ids"])
        emb = feats.embedding
        text, visual = gather(text.float()), gather(feats.visual.float())
        frames, pooled = gather(emb.frames.float()), gather(emb.pooled.float())
        video_mask = gather(b["video_mask"])
        logits = model.similarity(text, VideoEmbedding(frames, video_mask, pooled))
        visual_norm = torch.nn.functional.normalize(visual, dim=-1)
        kwargs: dict[str, Tensor] = {}
        if "teacher_video" in b and feats.audio_tokens is not None:
            kwargs = {"audio_tokens": gather(feats.audio_tokens.float()), "frame_feats": visual_norm,
                      "teacher_video": gather(b["teacher_video"]), "teacher_audio": gather(b["teacher_audio"]),
                      "audio_mask": gather(b["audio_mask"])}
        return self.criterion(logits, model.logit_scale.exp(), torch.nn.functional.normalize(text, dim=-1),
                              masked_mean_pool(visual_norm, video_mask), **kwargs)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        self.model.train()
        losses = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        if self.world > 1:  # the authors average gradients over ranks (DDP semantics)
            for p in self.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.clamp_logit_scale()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    # ------------------------------------------------------------------ evaluation & selection
    def validate(self) -> dict | None:
        if self.val_set is None or not self.is_main:
            return None
        metrics = evaluate(self.model, self.val_set, self.config.val_batch_size, self.config.num_workers,
                           self.config.amp, self.config.progress)
        record = {"step": self.step, "epoch": self.epoch, **{f"val_{d}_{k}": v for d, m in metrics.items()
                                                             for k, v in m.items()}}
        self.history.append(record)
        if self.on_eval:
            self.on_eval(self.step, metrics)
        r1 = metrics["t2v"]["R1"]
        if r1 > self.best_r1:
            self.best_r1 = r1
            best = self.output / "best"
            tmp = self._save("best.tmp", latest=False)
            shutil.rmtree(best, ignore_errors=True)
            tmp.rename(best)
        return metrics

    def _latest_name(self) -> str:
        return f"step-{self.step}"

    def fit(self) -> Path:
        """Train; returns the folder of the best checkpoint on the validation split (or the last one)."""
        self.output.mkdir(parents=True, exist_ok=True)
        self.try_resume()
        cfg = self.config
        if self.is_main:
            (self.output / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (cfg.progress and self.is_main))
        done = self.step >= self.total_steps
        while not done:
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
            skip = self.step - self.epoch * len(self.loader)  # batches already seen in a resumed epoch
            for i, batch in enumerate(self.loader):
                if i < skip:
                    continue
                losses = self.train_step(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.4f}", nce=f"{losses['nce']:.4f}")
                if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
                    self.validate()
                if self.step >= self.total_steps:
                    done = True
                    break
            else:
                self.epoch += 1
                if not cfg.eval_every_steps:
                    self.validate()
            if self.is_main:
                self._save(self._latest_name())
        bar.close()
        best = self.output / "best"
        return best if best.is_dir() else self.output / self._latest_name()
