"""The ``save-search`` command line: one thin module over the library's functions."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="save-search",
    help="Text-to-video search that understands what is said: the SAVE model, its training and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
experiment_app = typer.Typer(help="Reproducible experiments.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "alembic", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


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
        _fail(f"{source} does not exist")
    try:
        model = load_authors_checkpoint(source, config=config)
    except CheckpointMismatchError as exc:
        _fail(str(exc))
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
    from indexer.asr import Transcriber
    from models.train.data import VIDEO_EXTENSIONS, write_transcripts

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS + (".wav", ".flac"))
        elif p.is_file():
            files.append(p)
        else:
            _fail(f"{p} does not exist")
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
    _setup_logging()
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
        _fail(str(exc))
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
            _fail(str(exc))
        return
    if model is None or data_root is None:
        _fail("give --sim-matrix FILE.npy, or --model and --data-root")
    _setup_logging()
    import torch

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
            _fail(f"unknown split {split!r}")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        m = load_model(model, device=device)
        dataset = VideoTextDataset(data, pairs, m.audio_input_kind, m.config.image_size)
    except (DatasetError, FileNotFoundError) as exc:
        _fail(str(exc))
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


# ----------------------------------------------------------------------------------------------- ingest & search
def _settings(database_url: str | None = None, model: str | None = None):
    from indexer.settings import Settings

    return Settings.from_env(database_url=database_url, model=model)


def _services(settings):
    from indexer.worker import Services

    services = Services(settings)
    status = services.encoder.status()
    typer.secho(f"model mode: {status.mode} - {status.reason}", err=True,
                fg=typer.colors.YELLOW if status.mode != "save-fused" else typer.colors.GREEN)
    return services


DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="Default: $SAVE_SEARCH_DATABASE_URL or "
                                                                       "SQLite under $SAVE_SEARCH_HOME.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Config name, checkpoint folder or authors' .bin "
                                                             "(default: $SAVE_SEARCH_MODEL or save-b32).")]


@app.command("worker")
def worker(
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    worker_id: Annotated[str | None, typer.Option(help="A fixed id (default: unique per process); a worker "
                                                       "restarted under it takes back its items at once.")] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False,
    verbose: bool = False,
) -> None:
    """Run the ingest worker loop (any number of workers can share one database)."""
    _setup_logging(verbose)
    import signal
    import threading

    from indexer.worker import Worker

    services = _services(_settings(database_url, model))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then exit (docker stop, Ctrl-C)
        signal.signal(sig, lambda *_: stop.set())
    Worker(services, owner=worker_id).run(stop=stop, exit_when_idle=exit_when_idle)


@app.command("ingest")
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Video files and/or folders.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    wait: Annotated[bool, typer.Option(help="Process the job in this process and wait for the outcome.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input (path, video_id, status, "
                                                         "error).")] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Enqueue files/folders (a bulk job); with --wait, ingest them now and report every input's outcome."""
    from indexer.jobs import JobQueue, expand_paths

    settings = _settings(database_url, model)
    files = expand_paths(paths, recursive, settings.allowed_roots or None)
    if not files:
        _fail("no media files found in the given paths")
    if not wait:
        from indexer.db import make_engine, session_factory
        from indexer.migrate import init_db

        init_db(settings.db_url)
        queue = JobQueue(session_factory(make_engine(settings.db_url)))
        job_id = queue.enqueue("bulk", files, settings.allowed_roots or None)
        summary = queue.summary(job_id)
        if as_json:
            for item in summary.items:
                typer.echo(json.dumps({"path": item.path, "video_id": item.video_id, "status": item.status,
                                       "error": item.error, "job_id": job_id}))
        else:
            typer.echo(f"job {job_id}: {summary.total} file(s) queued; run `save-search worker` to process them")
        return
    _setup_logging()
    logging.getLogger().setLevel(logging.WARNING)
    import threading

    from tqdm import tqdm

    from indexer.jobs import FINISHED_JOB_STATUSES
    from indexer.worker import Worker

    services = _services(settings)
    w = Worker(services)
    job_id = w.queue.enqueue("bulk", files, settings.allowed_roots or None)
    w.startup()
    bar = tqdm(total=len(files), desc="ingest", unit="video", disable=as_json)
    stop = threading.Event()
    while True:
        summary = w.queue.summary(job_id)
        bar.n = summary.done + summary.failed
        bar.refresh()
        if summary.status in FINISHED_JOB_STATUSES:
            break
        if w.run_once() == 0:
            stop.wait(0.5)
    w.shutdown()
    bar.close()
    for item in summary.items:
        row = {"path": item.path, "video_id": item.video_id, "status": item.status, "error": item.error}
        if as_json:
            typer.echo(json.dumps(row))
        else:
            mark = "ok  " if item.status == "done" else "FAIL"
            typer.echo(f"{mark} {item.path}" + (f" -> video {item.video_id}" if item.video_id else "")
                       + (f": {item.error}" if item.error else ""))
    if not as_json:
        typer.echo(f"job {job_id}: {summary.done} indexed, {summary.failed} failed")


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain language.")],
    k: Annotated[int, typer.Option("--k", help="Number of results.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Search the indexed videos from the command line (the same service the API uses)."""
    from indexer.search import SearchService

    services = _services(_settings(database_url, model))
    try:
        page = SearchService(services).search(query, k=k)
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"mode": page.mode, "results": [r.to_dict() for r in page.results]}, indent=2))
        return
    if not page.results:
        typer.echo("no results")
    for rank, r in enumerate(page.results, 1):
        moment = f" [{r.segment.start:.1f}-{r.segment.end:.1f}s] {r.segment.text}" if r.segment else ""
        typer.echo(f"{rank:>2}. {r.filename} (video {r.video_id}) score {r.score:.3f}{moment}")


@app.command("evaluate-search")
def evaluate_search(
    queries: Annotated[Path, typer.Argument(help="TSV: query, expected file name or video id, optional start, end "
                                                 "(seconds) and kind; '#' comments.")],
    k: Annotated[int, typer.Option(help="Results looked at per query (ranks beyond count as not found).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    fit_calibration: Annotated[bool, typer.Option(
        "--fit-calibration", help="Also fit the speech (and visual) score maps on these queries and print them "
                                  "as SAVE_SEARCH_*_CALIBRATION values.")] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Search quality on your own labelled queries: R@1, R@5, MRR and moment accuracy on the running collection."""
    _setup_logging()
    from indexer import evaluation
    from indexer.search import SearchService

    try:
        labelled = evaluation.read_queries(queries)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    service = SearchService(_services(_settings(database_url, model)))
    try:
        report = evaluation.evaluate(service, labelled, k=k)
    except ValueError as exc:
        _fail(str(exc))
    fits = {}
    if fit_calibration:
        for channel in ("speech", "visual"):
            pairs = evaluation.calibration_pairs(report.outcomes, channel)
            try:
                fits[channel] = evaluation.fit_calibration(pairs)
            except ValueError as exc:
                fits[channel] = str(exc)
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "calibration": fits}, indent=2))
        return
    typer.echo(evaluation.format_report(report))
    for channel, fit in fits.items():
        value = f"SAVE_SEARCH_{channel.upper()}_CALIBRATION={fit[0]:.3f},{fit[1]:.3f}" if isinstance(fit, tuple) \
            else f"not fitted: {fit}"
        typer.echo(f"{channel} calibration: {value}")


@app.command("reindex")
def reindex(
    rebuild_only: Annotated[bool, typer.Option(help="Only rebuild the index files from stored features.")] = False,
    text: Annotated[bool, typer.Option(
        "--text", help="Also recompute normalised full text and passage embeddings from the stored transcripts "
                       "(after an upgrade that changed them; no audio is decoded).")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Only compare the database with the indexes (ids per model version, both ways) and "
                         "repair the differences; nothing is re-encoded or rebuilt.")] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Re-encode videos made with another model (never mixing embedding spaces), then rebuild the indexes."""
    _setup_logging()
    from indexer.reindex import copy_shard_features, rebuild_indexes, reencode_stale, reindex_text, verify_indexes

    services = _services(_settings(database_url, model))
    if verify:
        for name, report in verify_indexes(services).items():
            missing = f", {report.missing} without frame features (run `save-search reindex`)" * bool(report.missing)
            typer.echo(f"{name}: {report.count} in the database, {report.added} added, {report.removed} removed"
                       f"{missing}")
        return
    if text:
        typer.echo(f"recomputed the text data of {reindex_text(services)} video(s)")
    if not rebuild_only:
        done, failed = reencode_stale(services)
        typer.echo(f"re-encoded {done} video(s), {failed} failed")
    copied = copy_shard_features(services)
    if copied:
        typer.echo(f"copied the frame features of {copied} video(s) from the shard files into Milvus")
    counts = rebuild_indexes(services)
    typer.echo(f"indexes rebuilt: {counts}")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    no_worker: Annotated[bool, typer.Option(
        "--no-worker", help="API only; run `save-search worker` separately (API replicas can share one database).",
    )] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Start the search API and web page (with an embedded ingest worker unless --no-worker)."""
    _setup_logging()
    import signal

    import uvicorn

    from app.admission import limit_api_threads
    from app.main import create_app

    settings = _settings(database_url, model)
    if no_worker:
        limit_api_threads(settings)
    # SIGTERM (docker stop, Kubernetes, systemd) is a normal shutdown: exit 0. uvicorn shuts down gracefully
    # on it, then restores the handler it found and raises the signal again; with Python's default handler
    # that kills the process by SIGTERM (exit 143 under an init), which reads as a failure.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(create_app(settings, embedded_worker=not no_worker), host=host, port=port, log_level="info")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


api_key_app = typer.Typer(help="API keys (stored hashed in the database).", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
def api_key_create(name: Annotated[str, typer.Argument(help="Who or what uses the key.")],
                   database_url: DatabaseOpt = None) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from app.deps import hash_key, new_key
    from indexer.db import ApiKey, make_engine, session_factory
    from indexer.migrate import init_db

    settings = _settings(database_url)
    init_db(settings.db_url)
    key = new_key()
    with session_factory(make_engine(settings.db_url)).begin() as s:
        s.add(ApiKey(name=name, key_hash=hash_key(key)))
    typer.echo(key)


@api_key_app.command("list")
def api_key_list(database_url: DatabaseOpt = None) -> None:
    """List keys (names and ids; the keys themselves are not stored)."""
    from sqlalchemy import select

    from indexer.db import ApiKey, make_engine, session_factory
    from indexer.migrate import init_db

    settings = _settings(database_url)
    init_db(settings.db_url)
    with session_factory(make_engine(settings.db_url))() as s:
        for k in s.scalars(select(ApiKey).order_by(ApiKey.id)):
            typer.echo(f"{k.id}\t{k.name}\t{'revoked' if k.revoked else 'active'}\t{k.created_at:%Y-%m-%d %H:%M}")


@api_key_app.command("revoke")
def api_key_revoke(key_id: int, database_url: DatabaseOpt = None) -> None:
    """Revoke a key by id."""
    from indexer.db import ApiKey, make_engine, session_factory
    from indexer.migrate import init_db

    settings = _settings(database_url)
    init_db(settings.db_url)
    with session_factory(make_engine(settings.db_url)).begin() as s:
        key = s.get(ApiKey, key_id)
        if key is None:
            _fail(f"no API key with id {key_id}")
        key.revoked = True
    typer.echo(f"revoked key {key_id}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
