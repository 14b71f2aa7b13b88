"""May the service read this path? The allowed-roots containment rule and the access check every ingested path
passes, with a stable ``kind`` and a sentence a person can act on; for objects and URLs, the allowed-buckets rule
and the checks that need no network (where a URL leads is checked when it is fetched: ``indexer.ingest.remote``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from indexer.errors import AccessError
from indexer.names import display_name, is_s3, is_url, path_to_db, s3_problem, split_s3, url_problem

__all__ = ["check_access", "check_source", "within_buckets", "within_roots"]


def within_roots(path: str | Path, roots: Sequence[str | Path]) -> bool:
    """Whether ``path`` lies inside one of ``roots`` (or is one), both with every symlink resolved: a link
    inside a root that leads out of it is outside, and a root given through a link still holds its files. The one
    containment check of the service (bulk job listing and the per-file access check)."""
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real.is_relative_to(real_root):
            return True
    return False


def check_access(path: str | Path, allowed_roots: Sequence[Path] | None) -> Path:
    """The real path (symlinks resolved) of a readable regular file, or an :class:`AccessError`.

    The allowed-roots check runs on the resolved path and before anything else, so a symlink that leads out
    of a root is rejected and nothing is revealed about files outside the roots. Readability is checked with
    ``os.access`` and then by really opening and reading a byte, because ``os.access`` says yes to root and
    cannot see ACLs, read-only network mounts that fail on read, or mandatory access control.
    """
    given = Path(path)
    try:
        resolved = Path(os.path.realpath(given))
    except (OSError, RuntimeError) as e:  # symlink loops on some Python versions
        raise AccessError(f"cannot resolve {str(given)!r}: {e}", kind="not_found") from e
    given_text = repr(display_name(str(given)))
    shown = given_text if resolved == given else f"{given_text} (resolves to {display_name(str(resolved))!r})"
    if allowed_roots and not within_roots(resolved, allowed_roots):
        roots = ", ".join(repr(str(r)) for r in allowed_roots)
        raise AccessError(  # where a link outside the roots leads is none of the client's business
            f"{given_text} is outside the allowed roots ({roots}); only files below them may be ingested",
            kind="outside_allowed_roots",
        )
    try:
        st = resolved.stat()
    except FileNotFoundError as e:
        what = "is a broken symlink (its target does not exist)" if given.is_symlink() else "does not exist"
        raise AccessError(f"{shown} {what}: no such file", kind="not_found") from e
    except PermissionError as e:
        raise AccessError(f"{shown} cannot be read: permission denied on the path", kind="unreadable") from e
    except OSError as e:
        raise AccessError(f"{shown} cannot be accessed: {e.strerror or e}", kind="not_found") from e
    if stat.S_ISDIR(st.st_mode):
        raise AccessError(f"{shown} is a directory, not a file", kind="not_a_file")
    if not stat.S_ISREG(st.st_mode):
        raise AccessError(f"{shown} is not a regular file (a device, pipe or socket)", kind="not_a_file")
    if not os.access(resolved, os.R_OK):
        raise AccessError(f"{shown} is not readable by this process: permission denied", kind="unreadable")
    try:
        with open(resolved, "rb") as f:
            f.read(1)
    except PermissionError as e:
        raise AccessError(f"{shown} is not readable by this process: permission denied", kind="unreadable") from e
    except OSError as e:
        raise AccessError(f"{shown} cannot be read: {e.strerror or e}", kind="unreadable") from e
    return resolved


def within_buckets(uri: str, buckets: Sequence[str]) -> bool:
    """Whether ``s3://bucket/key`` lies in one of ``buckets`` (``s3://bucket`` or ``s3://bucket/prefix``, a prefix
    read as a folder: ``s3://b/videos`` holds ``videos/a.mp4``, not ``videos2/a.mp4``)."""
    bucket, key = split_s3(uri)
    for allowed in buckets:
        allowed_bucket, prefix = split_s3(allowed.rstrip("/"))
        if bucket == allowed_bucket and (not prefix or key == prefix or key.startswith(prefix + "/")):
            return True
    return False


def check_source(source: str | Path, allowed_roots: Sequence[Path] | None,
                 allowed_buckets: Sequence[str] | None = None) -> str:
    """What a job item stores for a source, or an :class:`AccessError`: a local path after ``check_access``, an
    ``s3://`` object inside the allowed buckets (any, when none are configured), or a well-formed http(s) URL."""
    if is_url(source):
        assert isinstance(source, str)
        if problem := url_problem(source):
            raise AccessError(f"{source!r}: {problem}", kind="bad_url")
        return source
    if is_s3(source):
        assert isinstance(source, str)
        if problem := s3_problem(source):
            raise AccessError(f"{source!r}: {problem}", kind="bad_url")
        if allowed_buckets and not within_buckets(source, allowed_buckets):
            shown = ", ".join(repr(b) for b in allowed_buckets)
            raise AccessError(f"{source!r} is outside the allowed buckets ({shown}); only objects below them may be "
                              "ingested", kind="outside_allowed_buckets")
        return source
    return path_to_db(check_access(source, allowed_roots))
