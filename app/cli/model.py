"""Model commands: configs, checkpoint conversion, transcription, training, MSR-VTT evaluation, experiments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import app, experiment_app, fail, setup_logging


@app.command("models")
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the model configs shipped with the package and where their weights come from."""
    from models.config import get_config, list_configs

    rows = []
    for name in list_configs():
        cfg = get_config(name)
        rows.append({"name": name, "clip": cfg.clip.source, "audio": f"{cfg.audio.type}:{cfg.audio.source}",
                     "embed_dim": cfg.embed_dim, "description": cfg.description})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['name']:<22} clip={r['clip']}  audio={r['audio']}\n{'':<22} {r['description']}")


@app.command("convert-checkpoint")
def convert_checkpoint(
    source: Annotated[Path, typer.Argument(help="pytorch_model.bin written by the authors' SAVE training code.")],
    output: Annotated[Path, typer.Argument(help="Folder for our checkpoint (config.json, model.safetensors).")],
    config: Annotated[str | None, typer.Option(help="Model config; default: inferred (save-b32 or save-b16).")] = None,
) -> None:
    """Convert a checkpoint of the authors' code into ours, strictly (every key used or explicitly ignored)."""
    from models.convert import CheckpointMismatchError, load_authors_checkpoint
    from models.factory import save_checkpoint

    if not source.is_file():
        fail(f"{source} does not exist")
    try:
        model = load_authors_checkpoint(source, config=config)
    except CheckpointMismatchError as exc:
        fail(str(exc))
    folder = save_checkpoint(model, output, extra={"converted_from": str(source.resolve())})
    typer.echo(f"converted {source} -> {folder} (config {model.config.name}, mode {model.info.mode})")


@app.command("transcribe")
def transcribe(
    paths: Annotated[list[Path], typer.Argument(help="Video/audio files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output JSON in the authors' format: [{key, text}].")],
    model: Annotated[str, typer.Option(help="faster-whisper model: bundled:whisper-base, large-v3, a folder.")] = (
        "bundled:whisper-base"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    language: Annotated[str | None, typer.Option(help="Force a language (e.g. en).")] = None,
) -> None:
    """Transcribe a dataset's videos with our ASR (the transcripts file `train`/`evaluate` read)."""
    from indexer.inference.asr import Transcriber
    from models.train.data import VIDEO_EXTENSIONS, write_transcripts

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS + (".wav", ".flac"))
        elif p.is_file():
            files.append(p)
        else:
            fail(f"{p} does not exist")
    transcriber = Transcriber(model, device=device, language=language)
    results: dict[str, str] = {}
    failures = 0
    from tqdm import tqdm

    for f in tqdm(files, desc="transcribe"):
        try:
            results[f.stem] = transcriber.transcribe(f).text
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the dataset
            failures += 1
            results[f.stem] = ""
            typer.secho(f"warning: {f}: {exc} (written as no speech)", fg=typer.colors.YELLOW, err=True)
    write_transcripts(out, results)
    typer.echo(f"wrote {len(results)} transcripts to {out} ({failures} failed)")


@app.command("train")
def train(
    data_root: Annotated[Path, typer.Option(help="MSR-VTT folder (see README, Training).")],
    output_dir: Annotated[Path, typer.Option(help="Checkpoints, logs and the best model go here.")],
    config: Annotated[str, typer.Option(help="Model config name or JSON path.")] = "save-b32",
    split: Annotated[str, typer.Option(help="Training split: 9k or 7k.")] = "9k",
    val_videos: Annotated[int, typer.Option(help="Training videos held out for model selection.")] = 500,
    clip_source: Annotated[str | None, typer.Option(help="Override the CLIP weights (hub id or folder).")] = None,
    audio_source: Annotated[str | None, typer.Option(help="Override the audio encoder weights.")] = None,
    init: Annotated[Path | None, typer.Option(help="Start from a checkpoint (ours or the authors').")] = None,
    videos_dir: Annotated[Path | None, typer.Option(help="Default: DATA_ROOT/videos.")] = None,
    transcripts: Annotated[Path | None, typer.Option(help="Default: DATA_ROOT/transcripts.json.")] = None,
    teacher_dir: Annotated[Path | None, typer.Option(
        help="Soft-ALBEF teacher features (AudioFeature/, VideoFeature/); default DATA_ROOT/teacher if present.",
    )] = None,
    epochs: int = 5,
    batch_size: Annotated[int, typer.Option(help="Global batch (split over GPUs under torchrun).")] = 128,
    lr: float = 1e-4,
    coef_lr: float = 1e-3,
    num_workers: int = 8,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    seed: int = 42,
    no_amp: Annotated[bool, typer.Option("--no-amp", help="Disable fp16 autocast on GPU.")] = False,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start over even if OUTPUT_DIR has a run.")] = False,
) -> None:
    """Train SAVE on MSR-VTT (multi-GPU: `torchrun --nproc_per_node N $(which save-search) train ...`)."""
    setup_logging()
    from models.factory import create_model, load_model
    from models.train.data import MSRVTT, DatasetError, VideoTextDataset, one_caption_per_video, split_validation
    from models.train.loop import TrainConfig, Trainer

    try:
        data = MSRVTT(data_root, videos_dir, transcripts, teacher_dir)
        train_ids, val_ids = split_validation(data.train_video_ids(split), val_videos, seed)
        model = load_model(init) if init else create_model(config, clip_source=clip_source, audio_source=audio_source)
        kind, size = model.audio_input_kind, model.config.image_size
        use_teacher = data.teacher_dir is not None
        train_set = VideoTextDataset(data, data.train_pairs(train_ids), kind, size, use_teacher=use_teacher)
        val_set = VideoTextDataset(data, one_caption_per_video(data.train_pairs(val_ids)), kind, size)
    except (DatasetError, FileNotFoundError) as exc:
        fail(str(exc))
    cfg = TrainConfig(output_dir=str(output_dir), epochs=epochs, batch_size=batch_size, lr=lr, coef_lr=coef_lr,
                      num_workers=num_workers, max_steps=max_steps, seed=seed, amp=not no_amp, resume=not no_resume)
    best = Trainer(model, train_set, cfg, val_set=val_set).fit()
    typer.echo(f"best checkpoint (by validation R@1): {best}")


@app.command("evaluate")
def evaluate(
    sim_matrix: Annotated[Path | None, typer.Option(help=".npy similarity matrix: rows queries, columns videos, "
                                                         "ground truth on the diagonal.")] = None,
    model: Annotated[str | None, typer.Option(help="Checkpoint folder, authors' .bin, or config name.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="MSR-VTT folder.")] = None,
    split: Annotated[str, typer.Option(help="test (1k-A) or val:N (N held-out training videos, seed 42).")] = "test",
    batch_size: int = 32,
    num_workers: int = 4,
) -> None:
    """Print R@1/5/10, MdR, MnR, SumR for text->video and video->text as JSON."""
    from models.metrics import metrics_from_sim_matrix_file

    if sim_matrix is not None:
        try:
            typer.echo(json.dumps(metrics_from_sim_matrix_file(sim_matrix), indent=2))
        except (ValueError, OSError) as exc:
            fail(str(exc))
        return
    if model is None or data_root is None:
        fail("give --sim-matrix FILE.npy, or --model and --data-root")
    setup_logging()
    from indexer.inference.base import resolve_device
    from models.factory import load_model
    from models.train.data import MSRVTT, DatasetError, VideoTextDataset, one_caption_per_video, split_validation
    from models.train.evaluate import evaluate as run_evaluation

    try:
        data = MSRVTT(data_root)
        if split == "test":
            pairs = data.test_pairs()
        elif split.startswith("val:"):
            _, val_ids = split_validation(data.train_video_ids("9k"), int(split[4:]), 42)
            pairs = one_caption_per_video(data.train_pairs(val_ids))
        else:
            fail(f"unknown split {split!r}")
        m = load_model(model, device=resolve_device("auto"))
        dataset = VideoTextDataset(data, pairs, m.audio_input_kind, m.config.image_size)
    except (DatasetError, FileNotFoundError) as exc:
        fail(str(exc))
    metrics = run_evaluation(m, dataset, batch_size, num_workers)
    typer.echo(json.dumps({"model": m.info.to_dict(), **metrics}, indent=2))


@experiment_app.command("speech")
def speech_experiment(
    steps: Annotated[int, typer.Option(help="Training steps per variant.")] = 400,
    seed: int = 0,
    output_dir: Annotated[Path, typer.Option(help="Where runs and results.json go.")] = Path("runs/speech-experiment"),
    report: Annotated[Path | None, typer.Option(help="Append the result table to this markdown file.")] = None,
) -> None:
    """Train SAVE with and without speech on data where only speech identifies the video; compare."""
    from models.train.speech_experiment import ExperimentConfig, markdown_table, run_experiment

    cfg = ExperimentConfig(steps=steps, seed=seed, output_dir=str(output_dir))
    result = run_experiment(cfg)
    table = markdown_table(result)
    typer.echo(table)
    typer.echo(f"chance R@1: {result['chance_R1']}%")
    if report is not None:
        _append_report(report, cfg, table, result["chance_R1"])


def _append_report(path: Path, cfg, table: str, chance: float) -> None:
    import datetime
    import os
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    machine = (f"{cpu} ({platform.machine()}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
               f"torch {torch.__version__}")
    command = f"save-search experiment speech --steps {cfg.steps} --seed {cfg.seed}"
    text = (f"\n### Speech-only retrieval experiment ({datetime.date.today().isoformat()})\n\n"
            f"Machine: {machine}. Command: `{command}`.\n"
            f"{cfg.heldout_videos} held-back videos (chance R@1 {chance}%), {cfg.train_videos} training videos, "
            f"batch {cfg.batch_size}, lr {cfg.lr}.\n\n{table}\n")
    with path.open("a") as f:
        f.write(text)


