"""Training pieces: freezing and parameter groups, BertAdam and its schedule, the MSR-VTT layout, the loop with
checkpoints and resume, and evaluation from a model."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from models.factory import create_model, is_checkpoint, load_checkpoint
from models.train.data import MSRVTT, DatasetError, VideoTextDataset, read_transcripts, split_validation
from models.train.evaluate import evaluate
from models.train.loop import TrainConfig, Trainer
from models.train.optim import BertAdam, LearningRates, apply_freezing, parameter_groups, warmup_cosine

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"


def test_warmup_cosine_matches_bertadam_schedule():
    assert warmup_cosine(0.0) == 0.0
    assert warmup_cosine(0.05) == pytest.approx(0.5)
    # no re-normalisation after warmup: the factor drops from ~1 to 0.5*(1+cos(0.1*pi)) ~ 0.976
    assert warmup_cosine(0.1) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi)))
    assert warmup_cosine(1.0) == pytest.approx(0.0, abs=1e-12)


def test_parameter_groups_follow_the_paper():
    model = create_model("tiny", pretrained=False)
    apply_freezing(model)
    groups = {g["name"]: g for g in parameter_groups(model, LearningRates())}
    assert groups["backbone"]["lr"] == pytest.approx(1e-7) and groups["backbone"]["weight_decay"] == 0.2
    assert groups["backbone-no-decay"]["weight_decay"] == 0.0
    assert groups["projection"]["lr"] == pytest.approx(1e-4)
    assert groups["new"]["lr"] == pytest.approx(1e-4)
    assert groups["queries"]["lr"] == pytest.approx(1e-2)
    names = {id(p): n for n, p in model.named_parameters()}
    queries = [names[id(p)] for p in groups["queries"]["params"]]
    assert queries == ["query_tokens"]
    # LayerNorm weights decay (only names containing "bias" are exempt), as in the authors' code
    decayed = {names[id(p)] for p in groups["new"]["params"]}
    assert "audio_fusion.resblocks.0.ln_1.weight" in decayed
    assert "frame_position_embeddings.weight" in decayed
    assert "query_position_embeddings.weight" in decayed
    grouped = {names[id(p)] for g in groups.values() for p in g["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grouped == trainable


def test_bertadam_step_matches_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = BertAdam([p], lr=0.1, warmup=0.1, t_total=10, weight_decay=0.2, max_grad_norm=-1)
    p.grad = torch.tensor([0.5, 0.5])
    opt.step()  # step 0: scheduled lr is 0
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.5])
    opt.step()  # step 1: progress 0.1 is past warmup -> lr 0.1 * 0.5 * (1 + cos(0.1 pi)); no bias correction
    m = 0.9 * 0.05 + 0.1 * 0.5
    v = 0.98 * 0.02 * 0.25 + 0.02 * 0.25
    update = m / (math.sqrt(v) + 1e-6) + 0.2 * torch.tensor([1.0, -2.0])
    lr = 0.1 * 0.5 * (1 + math.cos(0.1 * math.pi))
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0]) - lr * update)


def test_bertadam_clips_each_parameter_gradient():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = BertAdam([p], lr=1.0, t_total=-1, weight_decay=0.0, max_grad_norm=1.0)
    p.grad = torch.tensor([30.0, 40.0])
    opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.1 * torch.tensor([0.6, 0.8]))


# ------------------------------------------------------------------------------------- MSR-VTT layout
def make_msrvtt(root: Path) -> Path:
    """A miniature MSR-VTT folder from the real clips in shared/data/media/video."""
    clips = sorted((MEDIA / "video").glob("*.mp4"))
    if len(clips) < 6:
        pytest.skip(f"real test media not found in {MEDIA}")
    (root / "videos").mkdir(parents=True)
    sentences, transcripts = [], {}
    for i, clip in enumerate(clips[:6]):
        vid = f"video{i}"
        shutil.copy(clip, root / "videos" / f"{vid}.mp4")
        name = clip.stem.replace("_", " ")
        sentences += [{"video_id": vid, "caption": f"a clip of {name}", "sen_id": 2 * i},
                      {"video_id": vid, "caption": f"{name} in a short video", "sen_id": 2 * i + 1}]
        transcripts[vid] = f"someone says something about {name}" if i % 2 else ""
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    with (root / "MSRVTT_train.9k.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id"])
        w.writerows([[f"video{i}"] for i in range(4)])
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerows([[f"ret{i}", f"msr{i}", f"video{i}", f"a clip of {clips[i].stem}"] for i in (4, 5)])
    (root / "transcripts.json").write_text(json.dumps([{"key": f"{k}.mp4", "text": v} for k, v in transcripts.items()]))
    return root


def test_msrvtt_layout_and_clear_errors(tmp_path):
    root = make_msrvtt(tmp_path / "msrvtt")
    data = MSRVTT(root)
    assert data.train_video_ids("9k") == ["video0", "video1", "video2", "video3"]
    assert len(data.train_pairs(["video0", "video1"])) == 4
    assert [v for v, _ in data.test_pairs()] == ["video4", "video5"]
    assert read_transcripts(root / "transcripts.json")["video1"].startswith("someone says")
    train, val = split_validation(data.train_video_ids(), 1, seed=0)
    assert len(train) == 3 and len(val) == 1 and not set(train) & set(val)
    with pytest.raises(DatasetError, match="unknown train split"):
        data.train_video_ids("5k")
    with pytest.raises(DatasetError, match="MSRVTT_train.7k.csv"):
        data.train_video_ids("7k")
    (root / "transcripts.json").write_text(json.dumps([{"key": "video0.mp4", "text": "hi"}]))
    with pytest.raises(DatasetError, match="have no transcript"):
        VideoTextDataset(data, data.train_pairs(["video0", "video1"]))


@pytest.mark.slow
def test_training_loop_checkpoints_resumes_and_evaluates(tmp_path):
    torch.manual_seed(0)
    data = MSRVTT(make_msrvtt(tmp_path / "msrvtt"))
    train_set = VideoTextDataset(data, data.train_pairs(["video0", "video1", "video2"]))
    val_set = VideoTextDataset(data, data.test_pairs())
    item = train_set[0]
    assert item["pixel_values"].shape == (12, 3, 224, 224) and item["audio"].shape == (1024, 128)
    assert item["input_ids"][0] == 49406 and item["speech_ids"].sum() == 0  # video0: no speech

    out = tmp_path / "run"
    cfg = TrainConfig(output_dir=str(out), epochs=1, batch_size=2, num_workers=0, max_steps=2, progress=False)
    model = create_model("tiny", pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    best = Trainer(model, train_set, cfg, val_set=val_set).fit()
    assert is_checkpoint(best) and (out / "latest").read_text() == "step-2"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("audio_fusion.") for k in changed)
    assert not any(k.startswith("audio_encoder.model.layers.") for k in changed)  # frozen AST
    assert load_checkpoint(best).fusion_enabled

    # resume: a longer run continues from step 2 instead of starting over
    cfg.max_steps = 3
    trainer = Trainer(create_model("tiny", pretrained=False), train_set, cfg, val_set=val_set)
    assert trainer.try_resume() and trainer.step == 2
    trainer.fit()
    assert trainer.step == 3 and (out / "latest").read_text() == "step-3"

    metrics = evaluate(load_checkpoint(out / "step-3"), val_set, batch_size=2, progress=False)
    assert set(metrics) == {"t2v", "v2t"}
    assert set(metrics["t2v"]) == {"R1", "R5", "R10", "MdR", "MnR", "SumR"}


@pytest.mark.slow
def test_speech_branch_beats_no_speech_when_only_speech_identifies_videos(tmp_path):
    """The README/BENCHMARKS experiment, end to end: same model, data, seed and steps; only the speech differs."""
    from models.train.speech_experiment import ExperimentConfig, run_experiment

    report = run_experiment(ExperimentConfig(steps=400, output_dir=str(tmp_path)))
    with_speech, no_speech = (r["t2v"] for r in report["results"])
    assert no_speech["R1"] < 10  # chance is 1.6%: without speech nothing identifies a held-back video
    assert with_speech["R1"] >= 15
    assert with_speech["SumR"] > no_speech["SumR"] + 60
