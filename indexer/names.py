"""Paths and file names from clients and from disk: checked, stored and shown without surprises.

Clients send text (JSON, multipart), so a path or name can hold NUL, lone surrogates or be longer than the
file system allows; each of these is refused with a reason (``name_problem``/``path_problem``) before it
reaches ``os`` or the database. Names read from disk are bytes on Linux and need not be UTF-8; Python shows
such bytes as lone surrogates, which neither SQLite nor PostgreSQL can store. ``path_to_db`` and
``path_from_db`` keep them exactly (the real file stays reachable), and ``display_name`` shows them with the
undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path, PurePosixPath

MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux file systems)
MAX_PATH_BYTES = 4095  # a whole path (PATH_MAX less the terminating NUL)
MAX_SUFFIX_CHARS = 16  # longer "extensions" are not kept when a name is shortened
_RAW_PREFIX = "fs-bytes:"  # stored paths are absolute; this prefix cannot start one


def text_problem(text: str, what: str) -> str | None:
    """Why ``text`` cannot be a file name or path at all (NUL, lone surrogates), else ``None``."""
    if "\x00" in text:
        return f"{what} contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} is not valid Unicode (a lone surrogate at position {exc.start})"
    return None


def path_problem(path: str) -> str | None:
    """Why a client-given server path is unusable before any file system call, else ``None``.

    Relative paths are refused: they would be resolved against the server's working directory, which the
    client neither knows nor should learn."""
    problem = text_problem(path, "the path")
    if problem:
        return problem
    encoded = path.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        return f"the path is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in PurePosixPath(path).parts):
        return f"a part of the path is longer than {MAX_NAME_BYTES} bytes"
    if not path.startswith(("/", "~")):
        return "the path must be absolute"
    return None


def name_problem(name: str) -> str | None:
    """Why an uploaded file name cannot be accepted, else ``None`` (over-long names are shortened instead)."""
    return text_problem(name, "the file name")


def shorten_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` cut to ``max_bytes`` of UTF-8, keeping its extension (``.mp4`` says what the file is)."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    suffix = PurePosixPath(name).suffix
    if len(suffix) > MAX_SUFFIX_CHARS:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    budget = max_bytes - len(suffix.encode("utf-8"))
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")  # never half a character
    return stem + suffix


def display_name(text: str) -> str:
    """A name or path as valid text: bytes that are not UTF-8 (lone surrogates in Python) become ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def path_to_db(path: str | Path) -> str:
    """The text stored for a path: itself when it is UTF-8, else its exact bytes (base64) behind a prefix."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _RAW_PREFIX + base64.b64encode(os.fsencode(text)).decode("ascii")


def path_from_db(stored: str) -> Path:
    """The path that ``path_to_db`` stored."""
    if stored.startswith(_RAW_PREFIX):
        return Path(os.fsdecode(base64.b64decode(stored[len(_RAW_PREFIX):])))
    return Path(stored)


def display_stored_path(stored: str) -> str:
    """A stored path as people should see it (see ``display_name``)."""
    return display_name(str(path_from_db(stored)))
