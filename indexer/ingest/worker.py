"""The ingest worker: claims job items and runs them through the stages
hash -> probe -> decode -> transcribe -> read on-screen text -> encode -> store + database (one commit point)
-> index.

Crash safety: a video becomes visible only in the transaction that also marks its item done, after its
frame features are stored (fsynced shard, or Milvus). Its index entries are written right after the commit. A
kill at any moment leaves either nothing (the item is reclaimed and redone) or a committed video whose index
entries are added by the start-up repair (or ``save-search reindex --verify``). The same file twice is one
video (content hash, unique in the database).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from indexer.enums import JobStatus, Stage, VideoStatus
from indexer.errors import IngestError, TransientError
from indexer.inference.asr import SAMPLE_RATE, AsrState, Transcript
from indexer.ingest.decode import (
    DecodedVideo,
    decode_audio,
    decode_frames,
    fbank_from_pcm,
    pcm_memmap,
    save_thumbnail,
)
from indexer.ingest.jobs import JobQueue, default_owner
from indexer.ingest.probe import ProbeResult, probe
from indexer.ingest.sources import keep_source, local_copy
from indexer.ingest.workdir import claim_work_dir, release_work_dir, sweep_abandoned_work_dirs
from indexer.names import is_url, path_to_db
from indexer.passages import EmbeddedTranscript, embed_transcript
from indexer.settings import Settings
from indexer.storage.catalog import store_embedding
from indexer.storage.db import TEXT_REINDEX_NEEDED, JobItem, Meta, Video
from indexer.storage.files import ORPHAN_GRACE_S
from indexer.storage.media import THUMBNAILS, UPLOADS, MediaStore
from indexer.storage.shards import write_tag
from models.inputs import VideoInputs, audio_features
from models.preprocess import preprocess_frames, tokenize_speech

if TYPE_CHECKING:
    pass

from indexer.ingest.runtimes import IngestRuntimes, ScreenText
from indexer.services import Services

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.0  # the fraction of audio transcribed is written at most this often

def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Prepared:
    """Everything computed for one item before the commit point."""

    item_id: int
    path: Path
    filename: str
    content_hash: str
    reserved_video_id: int | None
    probe: ProbeResult
    decoded: DecodedVideo
    transcript: Transcript
    inputs: VideoInputs
    text: EmbeddedTranscript
    thumbnail: Path
    screen: ScreenText


class Worker:
    orphan_grace_s = ORPHAN_GRACE_S

    def __init__(self, services: Services, owner: str | None = None, runtimes: IngestRuntimes | None = None) -> None:
        self.services = services
        self.runtimes = runtimes or IngestRuntimes(services.settings)
        self.settings = services.settings
        self.owner = default_owner(owner)
        self.queue = JobQueue.from_settings(services.sessions, self.settings)
        self.work_dir = self.settings.home / "work" / self.owner
        self._work_lock: int | None = None  # held from startup() on: this id is alive on this host
        model = services.encoder.model
        self.store = (services.catalog.open_features(model.config.num_frames, model.config.embed_dim, self.owner)
                      if model is not None else None)
        self._unindexed: list[int] = []  # committed, but the index write failed: retried with the next batch
        # Seconds spent per stage and seconds of video indexed, for logs and the ingest benchmark. Stages of one item
        # overlap (``prepare``), so their sum can exceed the wall time.
        self.stats: dict[str, float] = defaultdict(float)
        self._stats_lock = threading.Lock()
        self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-side-{self.owner}")

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._stats_lock:
                self.stats[stage] += time.perf_counter() - start

    # ------------------------------------------------------------------ lifecycle
    def startup(self) -> None:
        """Claim this worker's scratch folder (refused if its id is alive elsewhere on this host), take back what
        this exact id held when it died, sweep what dead workers left, and repair the indexes."""
        work_root = self.settings.home / "work"
        self.work_dir, self._work_lock = claim_work_dir(work_root, self.owner)
        released = self.queue.release_own(self.owner)  # others' items come back only when their lease expires
        if released:
            log.info("requeued %d item(s) this worker held when it stopped", released)
        abandoned = sweep_abandoned_work_dirs(work_root)
        orphans = self._sweep_media()
        if abandoned or orphans:
            log.info("removed %d dead worker folder(s) and %d unreferenced media file(s)", abandoned, orphans)
        with self.services.sessions() as s:
            if s.get(Meta, TEXT_REINDEX_NEEDED) is not None:
                log.warning("this collection was indexed before passages and normalised full text: transcripts are "
                            "searched segment by segment until `save-search reindex --text` runs (no audio decoded)")
        stale = self.services.stale_videos()
        if stale:
            log.warning("%d video(s) were encoded with another model (or none) and are not visually searchable "
                        "with this one: run `save-search reindex` to re-encode them", stale)
        self.services.catalog.prepare()  # rebuilds (k-means) outside the lock searches wait for
        with self.services.index_lock:
            reports = self.services.catalog.repair()
        if any(r.added or r.removed for r in reports.values()):
            log.info("index repair: %s", {k: vars(v) for k, v in reports.items()})

    def _sweep_media(self) -> int:
        """Thumbnails and copies put into the media store by a worker killed before its commit (named by a content
        hash no video has) go once they are older than the grace period; a store that does not answer is left for
        next time."""
        media = self.services.media
        with self.services.sessions() as s:
            hashes = set(s.scalars(select(Video.content_hash)))
        try:
            return (media.sweep(THUMBNAILS, hashes, self.orphan_grace_s)
                    + media.sweep(UPLOADS, hashes, self.orphan_grace_s))
        except IngestError as exc:
            log.warning("unreferenced media files were not swept: %s", exc)
            return 0

    def run_once(self) -> int:
        ids = self.queue.claim(self.owner, limit=max(1, self.settings.visual.encode_batch_size))
        if ids:
            self.process(ids)
        return len(ids)

    def run(self, stop: threading.Event | None = None, poll_s: float = 1.0, exit_when_idle: bool = False) -> None:
        self.startup()
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                if self.run_once() == 0:
                    if exit_when_idle and self.queue.pending() == 0:
                        return
                    stop.wait(poll_s)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """A clean exit: the scratch folder goes, and the id is free again."""
        if self._work_lock is not None:
            release_work_dir(self.work_dir, self._work_lock)
            self._work_lock = None

    # ------------------------------------------------------------------ one batch
    def process(self, item_ids: list[int]) -> None:
        """Run a claimed batch, renewing its leases in the background so a long video is never taken over
        by another worker while this one is alive."""
        stop = threading.Event()
        beat = threading.Thread(target=self._keep_leases, args=(item_ids, stop), daemon=True)
        beat.start()
        try:
            self._process(item_ids)
        finally:
            stop.set()
            beat.join(timeout=5)

    def _keep_leases(self, item_ids: list[int], stop: threading.Event) -> None:
        interval = max(0.5, self.settings.ingest.lease_seconds / 3)
        while not stop.wait(interval):
            for item_id in item_ids:
                try:
                    self.queue.heartbeat(item_id, self.owner)
                except Exception:  # noqa: BLE001 - a missed heartbeat only shortens the lease
                    log.debug("heartbeat failed for item %s", item_id, exc_info=True)

    def _process(self, item_ids: list[int]) -> None:
        prepared: list[Prepared] = []
        for item_id in item_ids:
            try:
                p = self.prepare(item_id)
                if p is not None:
                    prepared.append(p)
                else:  # a copy of a known video: its downloaded source is not needed
                    shutil.rmtree(self.work_dir / str(item_id), ignore_errors=True)
            except IngestError as exc:
                self._fail(item_id, exc)
            except MemoryError as exc:
                self._fail(item_id, TransientError(f"out of memory while processing: {exc}"))
            except Exception as exc:  # noqa: BLE001 - an unexpected bug fails the item, never the queue
                log.exception("item %s failed unexpectedly", item_id)
                self._fail(item_id, TransientError(f"unexpected error: {type(exc).__name__}: {exc}"))
        if not prepared:
            return
        with self.timed("encode"):
            embeddings = self._encode(prepared)
        committed: list[int] = []
        for p, emb in zip(prepared, embeddings, strict=True):
            try:
                with self.timed("commit"):
                    committed.append(self.commit(p, emb))
                self.stats["video_seconds"] += p.probe.duration_s
                self.stats["videos"] += 1
            except IngestError as exc:
                self._fail(p.item_id, exc)
            except Exception as exc:  # noqa: BLE001
                log.exception("item %s failed at commit", p.item_id)
                self._fail(p.item_id, TransientError(f"could not store the video: {type(exc).__name__}: {exc}"))
            finally:
                shutil.rmtree(self.work_dir / str(p.item_id), ignore_errors=True)
        with self.timed("index"):
            self.services.catalog.prepare()  # rebuilds (k-means) outside the lock searches wait for
            unindexed, self._unindexed = self._unindexed + committed, []
            try:
                with self.services.index_lock:
                    self.services.catalog.index_videos(unindexed)
            except Exception:  # noqa: BLE001 - e.g. Milvus unreachable: the videos are committed, retry them later
                log.exception("could not index video(s) %s now; retrying with the next batch", unindexed)
                self._unindexed = unindexed

    def _fail(self, item_id: int, error: IngestError) -> None:
        outcome = self.queue.mark_failed(item_id, self.owner, error)
        log.warning("item %s: %s [%s] -> %s", item_id, error.reason, error.kind, outcome)
        if outcome == JobStatus.FAILED:
            with self.services.sessions.begin() as s:  # an upload's reserved video shows the failure too
                item = s.get(JobItem, item_id)
                video = s.get(Video, item.video_id) if item is not None and item.video_id else None
                if video is not None and video.status == VideoStatus.PENDING:
                    video.status, video.error = VideoStatus.FAILED, error.reason
        shutil.rmtree(self.work_dir / str(item_id), ignore_errors=True)

    def _encode(self, prepared: list[Prepared]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        encoder = self.services.encoder
        if not encoder.available:
            return [None] * len(prepared)
        for p in prepared:
            self.queue.heartbeat(p.item_id, self.owner, stage=Stage.ENCODE, progress=0.8)
        emb = encoder.encode_videos([p.inputs for p in prepared])
        return [(emb.frames[i].numpy(), emb.mask[i].numpy(), emb.pooled[i].numpy()) for i in range(len(prepared))]

    def _item(self, item_id: int) -> JobItem:
        with self.services.sessions() as s:
            item = s.get(JobItem, item_id)
            if item is None:
                raise IngestError(f"job item {item_id} disappeared", kind="missing_item")
            s.expunge(item)
            return item

    def _existing_video(self, content_hash: str) -> int | None:
        with self.services.sessions() as s:
            return s.scalar(select(Video.id).where(Video.content_hash == content_hash))

    def _finish_duplicate(self, item_id: int, video_id: int, content_hash: str) -> None:
        with self.services.sessions.begin() as s:
            self.queue.mark_done(s, item_id, self.owner, video_id, content_hash)
        log.info("item %s is a copy of video %s: nothing to do", item_id, video_id)

    def prepare(self, item_id: int) -> Prepared | None:
        """The CPU/ASR stages for one item. Returns None when the item turned out to be a known video.

        Speech recognition runs here while the frames are decoded and the on-screen text is read beside it (one
        side thread: ``_frames_and_screen``), so a long video's OCR costs little wall time on top of its ASR."""
        item = self._item(item_id)
        settings = self.settings
        beat = self.queue.heartbeat
        beat(item_id, self.owner, stage=Stage.PROBE, progress=0.05)
        with self.timed("probe"):
            path = local_copy(item.path, self.work_dir / str(item_id), settings, self.services.media)
            result = probe(path, settings.ingest.max_duration_s, settings.ingest.max_size_bytes)
            content_hash = hash_file(path)
        existing = self._existing_video(content_hash)
        if existing is not None and existing != item.video_id:
            self._finish_duplicate(item_id, existing, content_hash)
            return None
        beat(item_id, self.owner, stage=Stage.DECODE, progress=0.1)
        work = self.work_dir / str(item_id)
        work.mkdir(parents=True, exist_ok=True)
        with self.timed("decode_audio"):
            audio = decode_audio(path, work)
        side = self._side.submit(self._frames_and_screen, path, result.duration_s)
        try:
            beat(item_id, self.owner, stage=Stage.TRANSCRIBE, progress=0.15, stage_progress=0.0)
            with self.timed("asr"):
                transcript = self._transcribe(item_id, content_hash, audio.path, audio.samples, result.duration_s)
        except BaseException:
            with contextlib.suppress(Exception):  # the scratch folder goes next: let the side thread finish first
                side.result()
            raise
        frames, thumbnail, screen = side.result()  # its exception (no decodable frame) fails the item
        beat(item_id, self.owner, stage=Stage.PREPARE, progress=0.75)
        with self.timed("inputs"):
            decoded = DecodedVideo(frames, thumbnail, audio.path, audio.samples, audio.error)
            pcm = pcm_memmap(audio.path) if audio.path is not None else None
            inputs = self._model_inputs(decoded, pcm, transcript.text)
            thumb = save_thumbnail(thumbnail, work / "thumbnail.jpg")  # moved into place at the commit
        with self.timed("sentences"):
            text = embed_transcript(self.services.sentences, [(s.start, s.end, s.text) for s in transcript.segments],
                                    settings.search.normalize_sentence_input, screen.spans)
        return Prepared(item_id, path, item.filename, content_hash, item.video_id, result, decoded, transcript, inputs,
                        text, thumb, screen)

    def _frames_and_screen(self, path: Path, duration_s: float) -> tuple[list[np.ndarray], np.ndarray, ScreenText]:
        """The side thread of ``prepare``: the model's frames and thumbnail, then the on-screen text."""
        with self.timed("decode_frames"):
            frames, thumbnail = decode_frames(path)
        with self.timed("ocr"):
            screen = self.runtimes.read_screen(path, duration_s)
        return frames, thumbnail, screen

    def _transcribe(self, item_id: int, content_hash: str, pcm: Path | None, samples: int,
                    duration_s: float) -> Transcript:
        """The transcript of the PCM file, reporting the fraction of audio done and checkpointing after every chunk,
        so that a worker claiming this item again after a crash continues from the last finished chunk."""
        if pcm is None or not samples:
            return Transcript("", None, 0.0, duration_s, [])
        saved = self.queue.load_checkpoint(item_id, content_hash)
        resume = AsrState.from_json(json.loads(saved)) if saved else None
        if resume is not None:
            log.info("item %s: resuming speech recognition at %.0f s of %.0f s", item_id,
                     resume.offset / SAMPLE_RATE, samples / SAMPLE_RATE)
        last_beat = [0.0]

        def progress(fraction: float) -> None:
            now = time.monotonic()
            if now - last_beat[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last_beat[0] = now
                self.queue.heartbeat(item_id, self.owner, progress=round(0.15 + 0.6 * fraction, 4),
                                     stage_progress=round(fraction, 4))

        def checkpoint(state: AsrState) -> None:
            if state.offset < samples:  # the last chunk's state is the transcript itself: nothing to resume
                self.queue.save_checkpoint(item_id, self.owner, content_hash, json.dumps(state.to_json()))

        return self.runtimes.transcriber.transcribe_pcm_file(pcm, progress=progress, checkpoint=checkpoint,
                                                             resume=resume)

    def _model_inputs(self, decoded: DecodedVideo, pcm: np.ndarray | None, transcript: str) -> VideoInputs:
        encoder = self.services.encoder
        pixel_values, video_mask = preprocess_frames(decoded.frames, image_size=encoder.image_size)
        if encoder.audio_kind == "fbank":
            audio, has_audio = fbank_from_pcm(pcm) if pcm is not None and len(pcm) else audio_features(None, "fbank")
        else:
            wave = None if pcm is None else np.asarray(pcm[: 30 * 16000], dtype=np.float32) / 32768.0
            audio, has_audio = audio_features(wave, encoder.audio_kind)
        speech_ids = tokenize_speech([transcript])[0][0]
        return VideoInputs(pixel_values, video_mask, audio, has_audio, speech_ids)

    # ------------------------------------------------------------------ the commit point
    def commit(self, p: Prepared, embedding: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> int:
        status = self.services.encoder.status()
        t = p.transcript
        sessions = self.services.sessions
        media = self.services.media
        thumbnail = media.ref(THUMBNAILS, f"{p.content_hash}.jpg")
        source = self._source_ref(p)
        try:
            with sessions.begin() as s:
                fields = dict(content_hash=p.content_hash, filename=p.filename, source_path=source,
                              size_bytes=p.probe.size_bytes, duration_s=p.probe.duration_s, width=p.probe.width,
                              height=p.probe.height, has_audio=p.probe.has_audio, thumbnail_path=thumbnail,
                              transcript=t.text, language=t.language, language_probability=t.language_probability,
                              language_method=t.language_method or None,
                              language_decision=t.language_decision or None,
                              model_mode=status.mode, status=VideoStatus.INDEXED, error=None,
                              ocr_status=p.screen.status, ocr_error=p.screen.error,
                              speech_seconds=t.speech_seconds, transcribed_seconds=t.transcribed_seconds,
                              redecoded_regions=t.redecoded_regions, empty_regions=t.empty_regions,
                              text_tag=write_tag())
                video = s.get(Video, p.reserved_video_id) if p.reserved_video_id else None
                if video is None:
                    video = Video(**fields)
                else:  # an upload reserved this row when it was accepted
                    for key, value in fields.items():
                        setattr(video, key, value)
                    video.segments.clear()
                    video.passages.clear()
                segments, passages = p.text.rows()
                video.segments.extend(segments)
                video.passages.extend(passages)
                s.add(video)
                s.flush()
                if embedding is not None and self.store is not None and status.model_version is not None:
                    store_embedding(video, self.store, *embedding, model_version=status.model_version)
                if not self.queue.mark_done(s, p.item_id, self.owner, video.id, p.content_hash):
                    raise TransientError("lost the claim on this item (lease expired); another worker redoes it")
                video_id = video.id
                # last before the commit; orphans: see indexer/ingest/workdir.py
                publish_thumbnail(p.thumbnail, thumbnail, media)
        except IntegrityError:
            existing = self._existing_video(p.content_hash)
            if existing is None:
                raise
            self._finish_duplicate(p.item_id, existing, p.content_hash)
            return existing
        log.info("indexed %s as video %s (%.1f s, %s, %d segments, %d on-screen text spans)", p.filename, video_id,
                 p.probe.duration_s, status.mode, len(t.segments), len(p.screen.spans))
        return video_id

    def _source_ref(self, p: Prepared) -> str:
        """What the video row refers to (``indexer.ingest.sources.keep_source``): a local source's path, or, for a
        copy in the scratch folder, the object it came from or the media store's copy of a URL."""
        if not p.path.is_relative_to(self.work_dir / str(p.item_id)):
            return path_to_db(p.path)
        stored = self._item(p.item_id).path
        if is_url(stored) and self._existing_video(p.content_hash) not in (None, p.reserved_video_id):
            return stored  # committed meanwhile (e.g. earlier in this batch): no copy, the commit finds the video
        return keep_source(stored, p.path, p.content_hash, self.services.media)


def publish_thumbnail(scratch: Path, final: str, media: MediaStore) -> None:
    """Put a thumbnail from the worker's scratch folder where the video row says it is (the media store)."""
    media.put(scratch, final, "image/jpeg")


def run_worker(settings: Settings, exit_when_idle: bool = False) -> None:
    services = Services(settings)
    Worker(services).run(exit_when_idle=exit_when_idle)
