"""The ingest worker: claims job items and runs them through the stages
hash -> probe -> decode -> transcribe -> encode -> store + database (one commit point) -> index.

Crash safety: a video becomes visible only in the transaction that also marks its item done, after its
frame features are stored (fsynced shard, or Milvus). Its index entries are written right after the commit. A
kill at any moment leaves either nothing (the item is reclaimed and redone) or a committed video whose index
entries are added by the start-up repair (or ``save-search reindex --verify``). The same file twice is one
video (content hash, unique in the database).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from models.inputs import VideoInputs, audio_features
from models.preprocess import preprocess_frames, tokenize_speech

from .asr import Transcriber, Transcript
from .catalog import make_catalog, to_blob
from .db import TEXT_REINDEX_NEEDED, JobItem, Meta, Video, make_engine, session_factory
from .decode import DecodedVideo, decode, fbank_from_pcm, pcm_memmap, save_thumbnail
from .encode import VisualEncoder
from .errors import IngestError, TransientError
from .jobs import JobQueue, default_owner
from .migrate import init_db
from .names import path_from_db, path_to_db
from .passages import EmbeddedTranscript, embed_transcript
from .probe import ProbeResult, check_access, probe
from .settings import Settings
from .transcripts import SentenceEncoder
from .workdir import (
    ORPHAN_GRACE_S,
    claim_work_dir,
    release_work_dir,
    sweep_abandoned_work_dirs,
    sweep_orphan_files,
)

log = logging.getLogger(__name__)

SENTENCE_MODEL = "all-MiniLM-L6-v2"


def passage_space(settings: Settings) -> str:
    """The embedding space of the passage index: the sentence encoder and what it reads (a change rebuilds)."""
    return f"{SENTENCE_MODEL}/passages" + ("/normalized" if settings.normalize_sentence_input else "")


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


class Services:
    """Loaded once per process and shared by the worker and the search service."""

    def __init__(self, settings: Settings, encoder: VisualEncoder | None = None,
                 sentences: SentenceEncoder | None = None, transcriber: Transcriber | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        init_db(settings.db_url)
        self.engine = make_engine(settings.db_url)
        self.sessions = session_factory(self.engine)
        self.encoder = encoder or VisualEncoder(settings)
        self.sentences = sentences or SentenceEncoder()
        self._transcriber = transcriber
        self._lock = threading.Lock()
        self.index_lock = threading.RLock()  # the in-process catalog is shared by an embedded worker and the API
        status = self.encoder.status()
        dim = self.encoder.model.config.embed_dim if self.encoder.model is not None else None
        self.catalog = make_catalog(settings, self.sessions, status.model_version, dim, passage_space(settings),
                                    self.sentences.dim)
        self.catalog.load()

    def stale_videos(self) -> int:
        """Videos outside the current model's embedding space (they are never mixed into visual search)."""
        version = self.encoder.status().model_version
        if version is None:
            return 0
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(Video).where(
                Video.status == "indexed", or_(Video.model_version.is_(None), Video.model_version != version))) or 0

    @property
    def transcriber(self) -> Transcriber:
        with self._lock:
            if self._transcriber is None:
                self._transcriber = Transcriber.from_settings(self.settings)
            return self._transcriber


class Worker:
    orphan_grace_s = ORPHAN_GRACE_S

    def __init__(self, services: Services, owner: str | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.owner = default_owner(owner)
        self.queue = JobQueue(services.sessions, self.settings.max_attempts, self.settings.lease_seconds,
                              self.settings.retry_backoff_s)
        self.work_dir = self.settings.home / "work" / self.owner
        self._work_lock: int | None = None  # held from startup() on: this id is alive on this host
        model = services.encoder.model
        self.store = (services.catalog.open_features(model.config.num_frames, model.config.embed_dim, self.owner)
                      if model is not None else None)
        self.thumbs = self.settings.media_dir / "thumbnails"
        self._unindexed: list[int] = []  # committed, but the index write failed: retried with the next batch
        # Seconds spent per stage and seconds of video indexed, for logs and the ingest benchmark.
        self.stats: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
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
        with self.services.sessions() as s:
            referenced = list(s.scalars(select(Video.thumbnail_path).where(Video.thumbnail_path.is_not(None))))
        orphans = sweep_orphan_files(self.thumbs, referenced, self.orphan_grace_s)
        if abandoned or orphans:
            log.info("removed %d dead worker folder(s) and %d unreferenced thumbnail(s)", abandoned, orphans)
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

    def run_once(self) -> int:
        ids = self.queue.claim(self.owner, limit=max(1, self.settings.encode_batch_size))
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
        interval = max(0.5, self.settings.lease_seconds / 3)
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
        if outcome == "failed":
            with self.services.sessions.begin() as s:  # an upload's reserved video shows the failure too
                item = s.get(JobItem, item_id)
                video = s.get(Video, item.video_id) if item is not None and item.video_id else None
                if video is not None and video.status == "pending":
                    video.status, video.error = "failed", error.reason
        shutil.rmtree(self.work_dir / str(item_id), ignore_errors=True)

    def _encode(self, prepared: list[Prepared]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        encoder = self.services.encoder
        if not encoder.available:
            return [None] * len(prepared)
        for p in prepared:
            self.queue.heartbeat(p.item_id, self.owner, stage="encode", progress=0.8)
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
        """The CPU/ASR stages for one item. Returns None when the item turned out to be a known video."""
        item = self._item(item_id)
        settings = self.settings
        beat = self.queue.heartbeat
        beat(item_id, self.owner, stage="probe", progress=0.05)
        with self.timed("probe"):
            path = check_access(path_from_db(item.path), None)
            result = probe(path, settings.max_duration_s, settings.max_size_bytes)
            content_hash = hash_file(path)
        existing = self._existing_video(content_hash)
        if existing is not None and existing != item.video_id:
            self._finish_duplicate(item_id, existing, content_hash)
            return None
        beat(item_id, self.owner, stage="decode", progress=0.15)
        work = self.work_dir / str(item_id)
        work.mkdir(parents=True, exist_ok=True)
        with self.timed("decode"):
            decoded = decode(path, work)
        beat(item_id, self.owner, stage="transcribe", progress=0.35)
        pcm = pcm_memmap(decoded.audio_path) if decoded.audio_path is not None else None
        with self.timed("asr"):
            if pcm is not None and len(pcm):
                transcript = self.services.transcriber.transcribe(pcm)
            else:
                transcript = Transcript("", None, 0.0, result.duration_s, [])
        beat(item_id, self.owner, stage="prepare", progress=0.7)
        with self.timed("inputs"):
            inputs = self._model_inputs(decoded, pcm, transcript.text)
            thumb = save_thumbnail(decoded.thumbnail, work / "thumbnail.jpg")  # moved into place at the commit
        with self.timed("sentences"):
            text = embed_transcript(self.services.sentences, [(s.start, s.end, s.text) for s in transcript.segments],
                                    settings.normalize_sentence_input)
        return Prepared(item_id, path, item.filename, content_hash, item.video_id, result, decoded, transcript, inputs,
                        text, thumb)

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
        thumbnail = self.thumbs / f"{p.content_hash}.jpg"
        try:
            with sessions.begin() as s:
                fields = dict(content_hash=p.content_hash, filename=p.filename, source_path=path_to_db(p.path),
                              size_bytes=p.probe.size_bytes, duration_s=p.probe.duration_s, width=p.probe.width,
                              height=p.probe.height, has_audio=p.probe.has_audio, thumbnail_path=str(thumbnail),
                              transcript=t.text, language=t.language, language_probability=t.language_probability,
                              language_method=t.language_method or None,
                              language_decision=t.language_decision or None,
                              model_mode=status.mode, status="indexed", error=None)
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
                if embedding is not None and self.store is not None:
                    frames, mask, pooled = embedding
                    ref = self.store.append(video.id, frames.astype(np.float16), mask.astype(np.uint8))
                    video.feature_shard, video.feature_offset = ref.shard, ref.offset
                    video.pooled = to_blob(pooled)
                    video.model_version = status.model_version
                if not self.queue.mark_done(s, p.item_id, self.owner, video.id, p.content_hash):
                    raise TransientError("lost the claim on this item (lease expired); another worker redoes it")
                video_id = video.id
                publish_thumbnail(p.thumbnail, thumbnail)  # last before the commit; orphans: see indexer/workdir.py
        except IntegrityError:
            existing = self._existing_video(p.content_hash)
            if existing is None:
                raise
            self._finish_duplicate(p.item_id, existing, p.content_hash)
            return existing
        log.info("indexed %s as video %s (%.1f s, %s, %d segments)", p.filename, video_id, p.probe.duration_s,
                 status.mode, len(t.segments))
        return video_id


def publish_thumbnail(scratch: Path, final: Path) -> None:
    """Move a thumbnail from the worker's scratch folder to where the video row says it is."""
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(scratch, final)


def run_worker(settings: Settings, exit_when_idle: bool = False) -> None:
    services = Services(settings)
    Worker(services).run(exit_when_idle=exit_when_idle)
