"""Ingest benchmark: the real worker over the real clips with the full-size SAVE architecture, then the same
model stages measured alone on the same inputs.

    .venv/bin/python -m bench.ingest_bench                  # CPU, 2 torch threads, batch 8; to BENCHMARKS.md
    .venv/bin/python -m bench.ingest_bench --variants       # also 1 vs 2 threads, batch 1 vs 8, overlapped stages
    .venv/bin/python -m bench.ingest_bench --quick --no-append   # 3 clips, a smoke run
    .venv/bin/python -m bench.ingest_bench --workers 2 --backends faiss,milvus --threads 1 --whisper-threads 1 \
        --batch 2                                            # two worker processes per index backend

With ``--workers N`` the same clips are ingested by N worker processes at once on each backend in ``--backends``
(PostgreSQL, one scratch database per backend; FAISS: the workers share one home, as on one host, and publish
index snapshots under its lock; Milvus: one home per worker and a milvus-lite 2.5 gRPC server started here):
videos/s and CPU seconds per video of the whole pipeline (decode, ASR, encoders, commit, index write).

Why random weights: ``create_model("save-b32", pretrained=False)`` has exactly the compute of the real
CLIP ViT-B/32 + AST + fusion (no CLIP/AST weights are available offline), and ``fusion_enabled=True`` makes it
run the fused path a trained SAVE checkpoint runs. Whisper is the real bundled base model.

The goal checked here (the issue): the whole pipeline at >= 0.8x the throughput implied by the sum of its model
stages measured alone, i.e. ``sum(model stages alone) / pipeline wall time >= 0.8``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.harness import (
    MEDIA,
    WARMUP_CLIP,
    WORK,
    Captured,
    Stopwatch,
    build_model,
    collect,
    command_line,
    connect_milvus,
    entry,
    free_port,
    make_clips,
    make_clips_warmup,
    make_services,
    md_table,
    milvus_lite_server,
    model_version,
    prepopulate,
    proc_cpu_s,
    publish,
    run_pipeline,
    scratch_database,
    set_omp_wait_policy,
    wait_for_quiet,
)

VARIANT_CLIPS = 6  # the variants rerun the model stages several times: a subset keeps the run under 15 minutes


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure_model_stages(model, captured: Sequence[Captured], batch: int, device: str = "cpu",
                         fp16: bool = False, whole: bool = True, stages: bool = True) -> Stopwatch:
    """Each SAVE stage run alone over the captured inputs, in batches like the worker's encode."""
    import torch

    from models.inputs import collate_video_inputs

    sw = Stopwatch()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=fp16)
    with torch.no_grad(), autocast:
        for start in range(0, len(captured), batch):
            items = [c.inputs for c in captured[start:start + batch]]
            b = {k: v.to(device) for k, v in collate_video_inputs(items).items()}
            _sync(device)
            if not stages:
                with sw("encode_video (whole)"):
                    model.encode_video(b["pixel_values"], b["video_mask"], b["audio"], b["speech_ids"])
                    _sync(device)
                continue
            with sw("vision"):
                clip_frames = model.frame_features(b["pixel_values"])
                _sync(device)
            with sw("audio"):
                qa = model.audio_tokens(b["audio"])
                _sync(device)
            with sw("speech-text"):
                speech = model.speech_tokens(b["speech_ids"])
                _sync(device)
            positions = torch.arange(clip_frames.shape[1], device=clip_frames.device)
            visual = clip_frames + model.frame_position_embeddings(positions)
            with sw("fusion"):
                model.audio_fusion(visual, qa)
                model.speech_fusion(visual, speech)
                _sync(device)
            if whole:
                with sw("encode_video (whole)"):
                    model.encode_video(b["pixel_values"], b["video_mask"], b["audio"], b["speech_ids"])
                    _sync(device)
    return sw


def measure_asr(transcriber, captured: Sequence[Captured]) -> Stopwatch:
    """Whisper on the same audio: bare faster-whisper (the worker's options) and our Transcriber around it."""
    sw = Stopwatch()
    for c in captured:
        if c.pcm is None or not len(c.pcm):
            continue
        audio = c.pcm.astype("float32") / 32768.0
        with sw("asr"):
            segments, _ = transcriber.model.transcribe(audio, vad_filter=transcriber.vad,
                                                       beam_size=transcriber.beam_size,
                                                       condition_on_previous_text=False)
            list(segments)
        with sw("asr (Transcriber)"):
            transcriber.transcribe(c.pcm)
    return sw


def measure_sentences(sentences, captured: Sequence[Captured]) -> Stopwatch:
    sw = Stopwatch()
    for c in captured:
        if c.segment_texts:
            with sw("sentences"):
                sentences.encode(c.segment_texts)
    return sw


def measure_overlap(model, captured: Sequence[Captured], batch: int, whisper_dir: str) -> dict[str, float]:
    """Would overlapping help on this CPU? ASR (faster-whisper, 1 thread) in one thread while the SAVE encoders
    (torch, 1 thread) run in another, against both run one after the other with 2 threads each."""
    import torch
    from faster_whisper import WhisperModel

    whisper1 = WhisperModel(whisper_dir, device="cpu", cpu_threads=1)
    whisper2 = WhisperModel(whisper_dir, device="cpu", cpu_threads=2)

    def asr(wm) -> None:
        for c in captured:
            if c.pcm is not None and len(c.pcm):
                segments, _ = wm.transcribe(c.pcm.astype("float32") / 32768.0, vad_filter=True, beam_size=5,
                                            condition_on_previous_text=False)
                list(segments)

    def encode() -> None:
        measure_model_stages(model, captured, batch, stages=False)

    out: dict[str, float] = {}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        start = time.perf_counter()
        asr(whisper2)
        encode()
        out["ASR then encoders, 2 threads each"] = time.perf_counter() - start
        torch.set_num_threads(1)
        start = time.perf_counter()
        t = threading.Thread(target=asr, args=(whisper1,))
        t.start()
        encode()
        t.join()
        out["ASR and encoders overlapped, 1 thread each"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(old)
    return out


def resolve_whisper_dir(name: str) -> str:
    from models.bundled import resolve_whisper_model

    return resolve_whisper_model(name)


def report(worker, wall: float, cpu: float, alone: Stopwatch, asr: Stopwatch, sentences: Stopwatch,
           variants: dict[str, dict[str, float]] | None, args: argparse.Namespace, clips: Sequence[Path],
           whisper: str) -> tuple[str, dict[str, float]]:
    stats = dict(worker.stats)
    video_s = stats.get("video_seconds", 0.0)
    videos = int(stats.get("videos", 0))
    stage_names = ("probe", "decode", "asr", "inputs", "sentences", "encode", "commit", "index")
    accounted = sum(stats.get(s, 0.0) for s in stage_names)
    rows = [[s, stats.get(s, 0.0), 100 * stats.get(s, 0.0) / wall] for s in stage_names]
    rows.append(["other (claims, leases, hashing outside stages)", wall - accounted, 100 * (wall - accounted) / wall])
    rows.append(["**total wall**", wall, 100.0])
    rows.append(["(process CPU seconds, all threads)", cpu, float("nan")])
    pipeline_table = md_table(["pipeline stage (worker.stats)", "seconds", "% of wall"], rows)

    model_stages = ("vision", "audio", "speech-text", "fusion", "asr")
    wall_alone = {k: alone.seconds.get(k, asr.seconds.get(k, 0.0)) for k in model_stages}
    cpu_alone = {k: alone.cpu.get(k, asr.cpu.get(k, 0.0)) for k in model_stages}
    model_sum, model_cpu = sum(wall_alone.values()), sum(cpu_alone.values())
    throughput = video_s / wall if wall else float("nan")
    implied = video_s / model_sum if model_sum else float("nan")
    ratio = model_sum / wall if wall else float("nan")  # = pipeline throughput / implied throughput
    ratio_cpu = model_cpu / cpu if cpu else float("nan")
    alone_rows = [[("ASR (faster-whisper alone)" if k == "asr" else k), wall_alone[k], cpu_alone[k]]
                  for k in model_stages]
    alone_rows += [["**sum of model stages**", model_sum, model_cpu],
                   [f"(encode_video whole, alone; pipeline `encode` was {stats.get('encode', 0.0):.1f} s)",
                    alone.seconds.get("encode_video (whole)", 0.0), alone.cpu.get("encode_video (whole)", 0.0)],
                   [f"(ASR via our Transcriber alone; pipeline `asr` was {stats.get('asr', 0.0):.1f} s)",
                    asr.seconds.get("asr (Transcriber)", 0.0), asr.cpu.get("asr (Transcriber)", 0.0)],
                   [f"(MiniLM sentence embeddings alone; pipeline `sentences` was {stats.get('sentences', 0.0):.2f} s)",
                    sentences.seconds.get("sentences", 0.0), sentences.cpu.get("sentences", 0.0)]]
    alone_table = md_table(["model stage alone, same inputs", "wall s", "CPU s"], alone_rows)
    asr_alone = wall_alone["asr"]
    summary_rows = [
        ["videos / seconds of video", f"{videos} / {video_s:.1f}"],
        ["pipeline throughput (s of video per s)", throughput],
        ["throughput implied by the sum of model stages alone", implied],
        ["**pipeline / implied, wall time (goal >= 0.8)**", f"{ratio:.2f} ({'met' if ratio >= 0.8 else 'missed'})"],
        ["same ratio on CPU seconds (less sensitive to other load)", f"{ratio_cpu:.2f}"],
        ["ASR in the pipeline vs faster-whisper alone (wall s)",
         f"{stats.get('asr', 0.0):.1f} vs {asr_alone:.1f} ({stats.get('asr', 0.0) / max(asr_alone, 1e-9):.2f}x)"],
        ["encode batches (videos per batch)", ", ".join(str(b) for b in worker.batches)],
    ]
    summary_table = md_table(["summary", "value"], summary_rows)
    fp = "fp16 autocast" if args.device.startswith("cuda") else "fp32"
    parts = [
        f"Ingest with the real worker (`indexer.ingest.worker.Worker`, one process) on {args.device}: "
        f"SAVE `{args.config}` (full-size CLIP ViT-B/32 + AST + gated fusion with random weights, fused path, "
        f"{fp}), Whisper "
        f"`{whisper}` (faster-whisper, compute type {args.whisper_compute_type}, VAD, beam 5), MiniLM, SQLite, "
        f"FAISS. {len(clips)} clips: {', '.join(p.name for p in clips)}. torch threads {args.threads}, encode batch "
        f"{args.batch}, faster-whisper cpu_threads {args.whisper_threads}. A 4 s clip was ingested first to load and "
        "warm every model (not counted). Model stages alone ran right after, on the inputs the pipeline built.",
        "",
        pipeline_table,
        "",
        alone_table,
        "",
        summary_table,
    ]
    if variants:
        vrows = [[name, k, v] for name, secs in variants.items() for k, v in secs.items()]
        names = ", ".join(c.name for c in variant_subset(worker.captured))
        parts += ["", f"Variants (model stages alone on {VARIANT_CLIPS} of the clips: {names}):", "",
                  md_table(["variant", "measure", "wall s"], vrows)]
    numbers = {"wall": wall, "video_seconds": video_s, "throughput": throughput, "implied": implied,
               "ratio": ratio, "model_sum": model_sum, **{f"stage:{k}": v for k, v in stats.items()}}
    return "\n".join(parts), numbers


def run_variants(model, captured: Sequence[Captured], whisper_dir: str) -> dict[str, dict[str, float]]:
    """Cheap alternatives, on the model stages alone: torch threads 1 vs 2, encode batch 1 vs 8, Whisper threads,
    and ASR overlapped with the encoders."""
    import torch
    from faster_whisper import WhisperModel

    out: dict[str, dict[str, float]] = {}
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (1, 8):
                sw = measure_model_stages(model, captured, batch, stages=False)
                out[f"torch threads {threads}, encode batch {batch}"] = {
                    "SAVE encoders (encode_video)": sw.seconds["encode_video (whole)"]}
    finally:
        torch.set_num_threads(old)
    for threads, compute_type in ((1, "default"), (2, "default"), (2, "int8")):
        wm = WhisperModel(whisper_dir, device="cpu", cpu_threads=threads, compute_type=compute_type)
        start = time.perf_counter()
        for c in captured:
            if c.pcm is not None and len(c.pcm):
                segments, _ = wm.transcribe(c.pcm.astype("float32") / 32768.0, vad_filter=True, beam_size=5,
                                            condition_on_previous_text=False)
                list(segments)
        out[f"faster-whisper cpu_threads {threads}, {compute_type}"] = {"ASR": time.perf_counter() - start}
    out["overlap ASR with encoders"] = measure_overlap(model, captured, 8, whisper_dir)
    return out


def variant_subset(captured: Sequence[Captured]) -> list[Captured]:
    """The speech clips (ASR has work to do) and the first other videos, VARIANT_CLIPS in all."""
    speech = [c for c in captured if c.name.startswith("speech-")]
    others = [c for c in captured if not c.name.startswith("speech-")]
    return (speech + others)[:VARIANT_CLIPS]


# ----------------------------------------------------------------------------------------------- several workers
def ingest_worker(index: int, settings_extra: dict, warm_clip: str, args: argparse.Namespace, warm_lock,
                  warmed, go, out) -> None:
    """One worker process: load the models, ingest its own warm-up clip (alone in the queue: ``warm_lock``), wait
    for the measured clips (``warmed``, ``go``: barriers with the parent), then drain the queue with the others."""
    import torch

    from indexer.ingest.worker import Worker

    torch.set_num_threads(args.threads)
    model = build_model(args.device, args.config)
    services, runtimes = make_services(Path(settings_extra.pop("home")), model, args.batch, args.device,
                                       args.whisper_threads, args.whisper_model, args.whisper_compute_type,
                                       **settings_extra)
    worker = Worker(services, owner=f"bench-w{index}", runtimes=runtimes)
    worker.startup()
    with warm_lock:
        worker.queue.enqueue("bulk", [warm_clip])
        while worker.run_once():
            pass
    worker.stats.clear()
    warmed.wait()
    go.wait()
    start, cpu = time.time(), time.process_time()
    last = start
    while True:
        if worker.run_once():
            last = time.time()
        elif worker.queue.pending() == 0:
            break
        else:
            time.sleep(0.2)
    out.put({"worker": index, "start": start, "last": last, "cpu_s": time.process_time() - cpu,
             "stats": dict(worker.stats)})
    worker.shutdown()


def run_workers_backend(backend: str, clips: Sequence[Path], warm_clips: Sequence[Path], args: argparse.Namespace,
                        work: Path) -> dict[str, object]:
    """``args.workers`` worker processes over ``clips`` on one backend; returns the measured numbers."""
    import multiprocessing

    from sqlalchemy import func, select

    from indexer.ingest.jobs import JobQueue
    from indexer.settings import Settings
    from indexer.storage.db import JobItem, Video, make_engine, session_factory

    n = args.workers
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(scratch_database(f"bench_ingest_{backend}"))
        extra: dict[str, object] = {"database_url": db_url}
        pid = None
        if backend == "milvus":
            port = free_port()
            pid = stack.enter_context(milvus_lite_server(work / "milvus", port))
            uri = f"http://127.0.0.1:{port}"
            connect_milvus(uri).close()
            extra |= {"vector_store": "milvus", "milvus_uri": uri, "milvus_collection_prefix": "bench_ingest"}
        homes = ([work / backend / "shared"] * n if backend == "faiss"
                 else [work / backend / f"w{i}" for i in range(n)])
        repair_s = (prepopulate(Settings(home=homes[0], **extra), args.existing, model_version(args.config))
                    if args.existing else 0.0)
        ctx = multiprocessing.get_context("spawn")
        warm_lock, warmed, go, out = ctx.Lock(), ctx.Barrier(n + 1), ctx.Barrier(n + 1), ctx.Queue()
        procs = [ctx.Process(target=ingest_worker, args=(i, {**extra, "home": str(homes[i])}, str(warm_clips[i]),
                                                         args, warm_lock, warmed, go, out)) for i in range(n)]
        for p in procs:
            p.start()
        warmed.wait(timeout=1800)
        sessions = session_factory(make_engine(db_url))
        JobQueue(sessions).enqueue("bulk", list(clips))
        server_cpu = proc_cpu_s(pid) if pid else 0.0
        go.wait(timeout=60)
        results = collect(out, procs)
        server_cpu_s = proc_cpu_s(pid) - server_cpu if pid else 0.0
        for p in procs:
            p.join()
        with sessions() as s:
            indexed = s.scalar(select(func.count()).select_from(Video).where(Video.status == "indexed")) or 0
            failed = s.scalar(select(func.count()).select_from(JobItem).where(JobItem.status == "failed")) or 0
    wall = max(r["last"] for r in results) - min(r["start"] for r in results)
    stats: dict[str, float] = {}
    for r in results:
        for k, v in r["stats"].items():
            stats[k] = stats.get(k, 0.0) + v
    videos = len(clips)
    expected = videos + n + args.existing  # the warm-up clips are indexed too
    if indexed != expected or failed:
        raise RuntimeError(f"{backend}: {indexed} videos indexed (expected {expected}), {failed} failed items")
    cpu_s = sum(r["cpu_s"] for r in results) + server_cpu_s
    row = {"backend": backend, "videos": videos, "video_s": stats.get("video_seconds", 0.0), "wall": wall,
           "cpu_s": cpu_s, "server_cpu_s": server_cpu_s, "stats": stats, "repair_s": repair_s,
           "per_worker": [int(r["stats"].get("videos", 0)) for r in sorted(results, key=lambda r: r["worker"])]}
    print(f"{backend}: {videos / wall:.3f} videos/s, {cpu_s / videos:.1f} CPU s/video", flush=True)
    return row


def run_workers(args: argparse.Namespace, command: str, machine_extra: str = "") -> str:
    """The same clips through ``args.workers`` worker processes on each backend; the BENCHMARKS.md section."""
    from tests.media_fixtures import speech_video

    work = WORK / "ingest-workers"
    shutil.rmtree(work, ignore_errors=True)
    backends = [b for b in args.backends.split(",") if b]
    try:
        clips = make_clips(work / "clips", args.quick)
        warm_clips = [make_clips_warmup(work / "clips")]
        for i in range(1, args.workers):  # one distinct warm-up clip per worker (the same one would be a duplicate)
            target = work / "clips" / f"warmup-{i}.mp4"
            speech_video(MEDIA / "speech" / WARMUP_CLIP, target, color=(200, 40 + 30 * i, 40), size=224)
            warm_clips.append(target)
        load = wait_for_quiet(max_wait_s=args.quiet_wait_s)
        rows = [run_workers_backend(b, clips, warm_clips, args, work) for b in backends]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stage_names = ("probe", "decode", "asr", "inputs", "sentences", "encode", "commit", "index")
    table = [[r["backend"], r["videos"], " + ".join(map(str, r["per_worker"])), r["wall"],
              r["videos"] / r["wall"], r["video_s"] / r["wall"], r["cpu_s"] / r["videos"],
              r["server_cpu_s"] / r["videos"] if r["backend"] == "milvus" else "-",
              r["stats"].get("index", 0.0) / r["videos"], r["repair_s"]] for r in rows]
    stage_rows = [[name, *(r["stats"].get(name, 0.0) for r in rows)] for name in stage_names]
    body = "\n".join([
        f"The real worker (`indexer.ingest.worker.Worker`) in {args.workers} processes at once on each index "
        f"backend, the same {len(clips)} clips ({', '.join(p.name for p in clips)}): decode, Whisper "
        f"`bundled:whisper-base` "
        f"(faster-whisper, VAD, beam 5, cpu_threads {args.whisper_threads}), SAVE `{args.config}` (full size, random "
        f"weights, fused path, fp32, torch threads {args.threads} per worker, encode batch {args.batch}), MiniLM, "
        f"commit to PostgreSQL 15 (a scratch database per backend, on this machine), index write. FAISS: the workers "
        "share one home folder (as on one host) and publish index snapshots under its lock; Milvus: one home per "
        "worker and one milvus-lite 2.5 gRPC server (started by the bench, on this machine). Each worker loads its "
        "models and ingests its own 4 s warm-up clip first (not counted); then the clips are queued as one job and "
        "the clock runs from the workers' start to the last video committed and indexed. "
        + (f"The collection already holds {args.existing} videos of the same model (pooled vectors and 6 passages "
           "each, written and indexed by `bench.harness.prepopulate` before the workers start), so every index "
           "write works on an index of that size. " if args.existing else "")
        + "CPU s/video: both workers' "
        "process CPU time (all threads) plus the Milvus server's, over that window: steadier than wall time on this "
        "shared machine.",
        "",
        md_table(["backend", "videos", "videos per worker", "wall s", "videos/s", "s of video per s",
                  "CPU s/video (all processes)", "of which Milvus server CPU s/video", "index write wall s/video",
                  "prepopulated collection indexed in s"],
                 table),
        "",
        "Where the workers' time went (worker.stats, seconds summed over both workers):",
        "",
        md_table(["stage", *(r["backend"] for r in rows)], stage_rows),
    ])
    return entry(f"Ingest throughput with {args.workers} workers: FAISS vs Milvus", command, load, body,
                 machine_extra)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2 = this machine's cores)")
    p.add_argument("--batch", type=int, default=8, help="encode batch size (Settings.encode_batch_size)")
    p.add_argument("--whisper-threads", type=int, default=2, help="faster-whisper cpu_threads")
    p.add_argument("--whisper-compute-type", default="default", help="CTranslate2 compute type (worker default)")
    p.add_argument("--variants", action="store_true", help="also try 1/2 threads, batch 1/8, overlapped stages")
    p.add_argument("--quick", action="store_true", help="3 clips, for a smoke run (never appended)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU script sets it)")
    p.add_argument("--config", default="save-b32", help="SAVE architecture (random weights)")
    p.add_argument("--whisper-model", default=None, help="faster-whisper model (default: the bundled base)")
    p.add_argument("--asr-batch-size", type=int, default=0,
                   help="> 0: clips decoded together by the transcriber (default: SAVE_SEARCH_ASR_BATCH_SIZE)")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="default",
                   help="OMP_WAIT_POLICY for this process (default: leave it as the service does)")
    p.add_argument("--workers", type=int, default=0,
                   help="> 0: this many worker processes at once on each backend in --backends (PostgreSQL)")
    p.add_argument("--backends", default="faiss,milvus", help="with --workers: index backends, in this order")
    p.add_argument("--existing", type=int, default=0,
                   help="with --workers: videos already indexed when the workers start (synthetic vectors)")
    p.add_argument("--quiet-wait-s", type=float, default=600.0,
                   help="with --workers: wait at most this long for a quiet machine before measuring")
    p.add_argument("--no-append", action="store_true", help="print only; do not write BENCHMARKS.md")
    p.add_argument("--keep", action="store_true", help=f"keep {WORK}/ingest afterwards")
    return p


def run(args: argparse.Namespace, command: str, machine_extra: str = "") -> str:
    """Pipeline, then the model stages alone; returns the BENCHMARKS.md section."""
    import torch

    torch.set_num_threads(args.threads)
    work = WORK / "ingest"
    shutil.rmtree(work, ignore_errors=True)
    try:
        clips = make_clips(work / "clips", args.quick)
        warm = make_clips_warmup(work / "clips")
        model = build_model(args.device, args.config)
        services, runtimes = make_services(work / "home", model, args.batch, args.device, args.whisper_threads,
                                           args.whisper_model, args.whisper_compute_type)
        if args.asr_batch_size > 0:
            runtimes.transcriber.batch_size = args.asr_batch_size
        load = wait_for_quiet()
        worker, wall, cpu = run_pipeline(services, runtimes, clips, warm)
        print(f"pipeline: {wall:.1f} s for {worker.stats.get('video_seconds', 0):.1f} s of video", flush=True)
        captured = worker.captured
        alone = measure_model_stages(model, captured, args.batch, args.device, fp16=args.device.startswith("cuda"))
        asr = measure_asr(runtimes.transcriber, captured)
        sentences = measure_sentences(services.sentences, captured)
        variants = (run_variants(model, variant_subset(captured), resolve_whisper_dir(services.settings.asr.model))
                    if args.variants else None)
        whisper = runtimes.transcriber.model_name + (f", batched x{args.asr_batch_size}" if args.asr_batch_size else "")
        body, _ = report(worker, wall, cpu, alone, asr, sentences, variants, args, clips, whisper)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    where = "GPU" if args.device.startswith("cuda") else "CPU"
    return entry(f"Ingest throughput on {where}", command, load, body, machine_extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    policy = set_omp_wait_policy(args.omp_wait_policy)
    logging.basicConfig(level=logging.WARNING)
    runner = run_workers if args.workers > 0 else run
    md = runner(args, command_line("bench.ingest_bench", argv), f"OMP_WAIT_POLICY {policy}")
    publish(md, write=not (args.no_append or args.quick))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
