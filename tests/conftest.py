"""Shared fixtures: throw-away SQLite and PostgreSQL databases, migrated with the real Alembic scripts.

PostgreSQL comes from ``SAVE_SEARCH_TEST_POSTGRES_URL`` (an admin URL, libpq form; default
``postgresql://postgres@127.0.0.1:5432/postgres``). The tests create their own database there and drop it
at the end. Without a reachable server the PostgreSQL cases are skipped, except under CI (``CI`` set),
where they fail: CI must test PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("SAVE_SEARCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_connect(conninfo: str):
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq URI, for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own on the PostgreSQL server, as a SQLAlchemy URL."""
    from psycopg import sql

    try:
        admin = _pg_connect(PG_ADMIN_URL)
    except Exception as exc:  # any failure to connect means "no server to test against"
        reason = f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.__class__.__name__}: {exc})".strip()
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must test PostgreSQL (set SAVE_SEARCH_TEST_POSTGRES_URL)", pytrace=False)
        pytest.skip(f"{reason}; start one or set SAVE_SEARCH_TEST_POSTGRES_URL")
    name = f"save_search_test_{os.getpid()}_{secrets.token_hex(4)}"
    with closing(admin):
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with closing(_pg_connect(PG_ADMIN_URL)) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database (no tables) per test. PostgreSQL: a new schema, first on the search path (fast)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'save_search.db'}"
        return
    from psycopg import sql

    base = request.getfixturevalue("postgres_url")
    schema = f"t_{secrets.token_hex(6)}"
    with closing(_pg_connect(_libpq(base))) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with closing(_pg_connect(_libpq(base))) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def db_url(fresh_db_url: str) -> str:
    """A fresh database per test, migrated to head, on each backend."""
    from indexer.storage.migrate import init_db

    init_db(fresh_db_url)
    return fresh_db_url


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny random CLIP and AST saved to local folders: the code path real weights take (from_pretrained)."""
    import torch

    from models.factory import create_model

    root = tmp_path_factory.mktemp("tiny-weights")
    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False)
    model.clip.model.save_pretrained(root / "clip")
    model.audio_encoder.model.save_pretrained(root / "ast")
    return root / "clip", root / "ast"


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> Iterator[str]:
    """Milvus Lite 2.5 (the C++ engine) serving gRPC on a free local port, for the whole session: several
    processes can use it at once, as they would a Milvus standalone server. Tests keep apart by collection
    prefix (``SAVE_SEARCH_MILVUS_COLLECTION_PREFIX``)."""
    import socket
    import time

    try:
        from milvus_lite.server import Server
    except ImportError as exc:
        pytest.skip(f"milvus-lite 2.5 is not installed ({exc}); pip install -e '.[milvus-lite]' (Linux/macOS)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Server(str(tmp_path_factory.mktemp("milvus") / "milvus.db"), address=f"127.0.0.1:{port}")
    if not (server.init() and server.start()):
        pytest.fail("milvus-lite did not start", pytrace=False)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                server.stop()
                pytest.fail(f"milvus-lite never listened on port {port}", pytrace=False)
            time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def save_search_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data home for the session, so the bundled model is joined once (and not in ~)."""
    home = tmp_path_factory.mktemp("save-search-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAVE_SEARCH_HOME", str(home))
        yield home


# Credentials and region for the S3 test endpoint (moto accepts any); the machine's own AWS files are not read.
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's standalone S3 server (``moto[server]``), a real HTTP endpoint on a free local port, for the whole
    session: several processes can use it at once, as they would MinIO or AWS. Tests keep apart by bucket name."""
    import socket
    import subprocess
    import sys
    import time

    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"moto[server] is not installed ({exc}); pip install -e '.[dev]'")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not start: {log.read_text()[-2000:]}", pytrace=False)
            time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process pointed at the S3 test endpoint the standard AWS way (``AWS_ENDPOINT_URL`` and credentials);
    the same variables, returned, point child processes at it."""
    env = {**S3_TEST_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> str:
    """A new, empty bucket on the S3 test endpoint."""
    import boto3

    name = f"test-{secrets.token_hex(6)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
