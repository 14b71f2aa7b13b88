"""Atomic, versioned FAISS index files plus a ``manifest.json`` naming the current one (``save_snapshot`` /
``load_snapshot``). Readers never lock: a published index file is never modified, only deleted two versions later.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss

from indexer.storage.faiss_index import VectorIndex
from indexer.storage.files import fsync_dir

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
_SNAPSHOT_RE = re.compile(r"^index-(\d+)\.faiss$")


class SnapshotError(Exception):
    """A snapshot folder is inconsistent (unreadable manifest, missing or mismatched index file)."""


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``folder/.lock``: serialises writers (threads and processes alike)."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        text = (Path(folder) / MANIFEST).read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"unreadable {MANIFEST} in {folder}: {exc}") from exc


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _publish(tmp: Path, final: Path) -> None:
    """fsync the finished temp file, rename it over ``final`` atomically, and make the rename durable."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _write_index_file(index: VectorIndex, path: Path) -> None:
    tmp = _temp_path(path)
    try:
        faiss.write_index(index.faiss_index, str(tmp))
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    path = folder / MANIFEST
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(manifest, indent=2))
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _snapshot_versions(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        m = _SNAPSHOT_RE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def save_snapshot(index: VectorIndex, folder: Path, model_version: str, extra: dict | None = None) -> int:
    """Publish ``index`` as the next snapshot version in ``folder``; returns the version.

    Order: index file (temp + fsync + rename), then the manifest (same), then cleanup. A crash at any point
    leaves the previous manifest naming a complete previous file. The previous snapshot's file is kept, so
    a reader that has just read the old manifest can still open it. Writers serialise on ``folder/.lock``;
    readers never need it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        previous = _read_manifest(folder)
        # Never reuse a number, also not one of a file orphaned by a crash between file and manifest.
        known = [int(previous["version"])] if previous else []
        version = max([0, *known, *_snapshot_versions(folder)]) + 1
        name = f"index-{version}.faiss"
        _write_index_file(index, folder / name)
        now = time.time()
        manifest = {
            "format": 1,
            "version": version,
            "file": name,
            "model_version": model_version,
            "count": len(index),
            "kind": index.kind,
            "dim": index.dim,
            "params": index.params(),
            "bytes": (folder / name).stat().st_size,
            "created": datetime.fromtimestamp(now, UTC).isoformat(),
            "created_unix": now,
            "previous": previous["file"] if previous else None,
            "extra": dict(extra or {}),
        }
        _write_manifest(folder, manifest)
        keep = {name, manifest["previous"]}
        for p in folder.iterdir():
            stale_snapshot = _SNAPSHOT_RE.match(p.name) and p.name not in keep
            stale_temp = p.name.startswith((".index-", f".{MANIFEST}")) and p.name.endswith(".tmp")  # crashed saves
            if stale_snapshot or stale_temp:
                p.unlink(missing_ok=True)
    return version


def current_version(folder: Path) -> int | None:
    """The published snapshot version (one small file read), for readers polling for a new snapshot."""
    manifest = _read_manifest(Path(folder))
    return int(manifest["version"]) if manifest else None


def load_snapshot(folder: Path, *, use_gpu: bool | None = None) -> tuple[VectorIndex, dict[str, Any]] | None:
    """The current snapshot (index, manifest), or None when nothing was published yet. No lock needed.

    If the named file vanished (two newer snapshots were published while we read), re-read the manifest.
    Check ``manifest["model_version"]`` against the model that encodes queries before using the index.
    """
    folder = Path(folder)
    for _attempt in range(5):
        manifest = _read_manifest(folder)
        if manifest is None:
            return None
        path = folder / manifest["file"]
        if not path.exists():
            continue
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            if not path.exists():
                continue
            raise SnapshotError(f"cannot read {path}: {exc}") from exc
        index = VectorIndex(raw, use_gpu=use_gpu)
        if index.kind != manifest["kind"]:
            raise SnapshotError(f"{path} holds a {index.kind} index; the manifest says {manifest['kind']}")
        if len(index) != manifest["count"] or index.dim != manifest["dim"]:
            raise SnapshotError(f"{path} holds {len(index)} vectors of dim {index.dim}; the manifest says "
                                f"{manifest['count']} of dim {manifest['dim']}")
        return index, manifest
    raise SnapshotError(f"the snapshot named by {folder / MANIFEST} keeps disappearing")
