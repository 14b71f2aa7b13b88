"""Property-based tests (Hypothesis) of the path and file-name rules in ``indexer/names.py``: whatever text a
client sends and whatever bytes a file system holds, the rules answer with a reason or a value that the file
system, SQLite and PostgreSQL accept, and stored paths lead back to the very file."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.names import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    display_name,
    name_problem,
    path_from_db,
    path_problem,
    path_to_db,
    shorten_name,
)

# Any code point, lone surrogates and NUL included: what JSON and multipart can carry.
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
                   max_size=300)
# What a Linux file name can be: any bytes but NUL and "/", as Python shows them (surrogateescape).
DISK_NAMES = st.binary(min_size=1, max_size=255).filter(lambda b: b"\x00" not in b and b"/" not in b
                                                        and b not in (b".", b"..")).map(os.fsdecode)


def _valid_utf8_without_nul(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@settings(max_examples=500)
@given(ANY_TEXT)
def test_path_problem_accepts_only_paths_the_system_can_take(text):
    path = "/" + text
    problem = path_problem(path)
    if problem is None:
        assert _valid_utf8_without_nul(path)
        encoded = path.encode("utf-8")
        assert len(encoded) <= MAX_PATH_BYTES and all(len(p) <= MAX_NAME_BYTES for p in encoded.split(b"/"))
        os.path.lexists(path)  # no ValueError (NUL) or OSError (too long) from the file system
    else:
        assert problem and path not in problem  # a reason, without echoing the input


@given(ANY_TEXT)
def test_relative_paths_are_refused(text):
    assert path_problem("rel/" + text) is not None


@settings(max_examples=500)
@given(ANY_TEXT)
def test_names_are_refused_or_shortened_with_their_extension(text):
    name = text + ".mp4"
    if name_problem(name) is not None:
        assert not _valid_utf8_without_nul(name)
        return
    short = shorten_name(name)
    assert len(short.encode("utf-8")) <= MAX_NAME_BYTES and short.endswith(".mp4")
    assert name.startswith(short[: -len(".mp4")])  # a prefix of the stem, never half a character
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        assert short == name


@settings(max_examples=300)
@given(DISK_NAMES)
def test_disk_names_round_trip_and_display_as_text(name):
    path = Path("/media/library") / name
    stored = path_to_db(path)
    assert _valid_utf8_without_nul(stored)  # storable in SQLite and PostgreSQL
    assert os.fsencode(path_from_db(stored)) == os.fsencode(path)  # the worker opens the very file
    shown = display_name(name)
    assert _valid_utf8_without_nul(shown)
    if _valid_utf8_without_nul(name):
        assert shown == name and stored == str(path)


def test_disk_name_shown_with_escapes():
    assert display_name(os.fsdecode(b"caf\xe9.mp4")) == "caf\\xe9.mp4"
