"""Full-text candidates: the database's full text (SQLite FTS5, PostgreSQL) against Milvus BM25, on one collection.

    .venv/bin/python -m bench.fulltext_bench                 # needs bench.retrieval_bench --screen's collection
    .venv/bin/python -m bench.fulltext_bench --no-append

Issue 10 asks whether segment text should move to Milvus for BM25 (its sparse full-text index) if that serves
better than PostgreSQL full text. Full text is one of the three candidate pools of search (``indexer.search.service``):
what matters is whether the right video is among a query's full-text candidates, and how highly. This takes the
collection ``bench.retrieval_bench --screen`` ingested (real speech and on-screen text, SQLite), copies its
videos and segments into a PostgreSQL database of its own and into a Milvus Lite 2.5 collection (the normalised
segment text with Milvus's BM25 function), and asks every benchmark query of that collection on each: the video
ranking is the order of each video's best segment. Same normalised text and query on all three.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import WORK, command_line, entry, load1, md_table, percentile, publish

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ROOT / "bench" / "data" / "retrieval_queries.tsv"
POOL = 50  # segments asked of each backend per query (search asks max(200, 4k) videos' worth)


def _queries(filenames: set[str]) -> list[tuple[str, str]]:
    out = []
    for line in QUERIES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        query, expected = line.split("\t")[:2]
        if expected in filenames:
            out.append((query, expected))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_to_postgres(sqlite_url: str, pg_admin_url: str) -> str:
    """A fresh PostgreSQL database with the collection's videos and segments (migrations: the real schema)."""
    from sqlalchemy import create_engine, select, text

    from indexer.storage.db import Base, make_engine
    from indexer.storage.migrate import init_db

    name = f"save_fulltext_bench_{int(time.time())}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    init_db(url)
    src, dst = make_engine(sqlite_url), make_engine(url)
    with src.connect() as s, dst.begin() as d:
        for table in ("videos", "segments"):
            t = Base.metadata.tables[table]
            rows = [dict(r._mapping) for r in s.execute(select(t))]
            if rows:
                d.execute(t.insert(), rows)
    src.dispose()
    dst.dispose()
    return url


def _drop_postgres(pg_admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    admin.dispose()


def _database_search(url: str) -> Callable[[str], list[int]]:
    from indexer.search.fulltext import search_segments
    from indexer.storage.db import make_engine, session_factory

    sessions = session_factory(make_engine(url))

    def search(query: str) -> list[int]:
        with sessions() as s:
            return [h.video_id for h in search_segments(s, query, limit=POOL)]

    return search


def _milvus_search(sqlite_url: str, folder: Path):
    """A Milvus Lite server with a BM25 collection over the segments' normalised text."""
    from milvus_lite.server import Server
    from pymilvus import DataType, Function, FunctionType, MilvusClient
    from sqlalchemy import select

    from indexer.storage.db import Segment, make_engine, session_factory
    from indexer.text import normalize

    port = _free_port()
    server = Server(str(folder / "bm25.db"), address=f"127.0.0.1:{port}")
    if not server.init() or not server.start():
        raise RuntimeError("milvus-lite did not start")
    client = None
    for _ in range(60):
        try:
            client = MilvusClient(uri=f"http://127.0.0.1:{port}")
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.5)
    if client is None:
        raise RuntimeError("milvus-lite did not answer")
    schema = client.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("video_id", DataType.INT64)
    schema.add_field("text", DataType.VARCHAR, max_length=8192, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))
    index = client.prepare_index_params()
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection("segments", schema=schema, index_params=index, consistency_level="Strong")
    sessions = session_factory(make_engine(sqlite_url))
    with sessions() as s:
        rows = [{"id": r.id, "video_id": r.video_id, "text": r.norm_text or " "}
                for r in s.execute(select(Segment.id, Segment.video_id, Segment.norm_text))]
    client.insert("segments", rows)

    def search(query: str) -> list[int]:
        q = normalize(query)
        if not q.strip():
            return []
        hits = client.search("segments", data=[q], anns_field="sparse", limit=POOL, output_fields=["video_id"],
                             search_params={"metric_type": "BM25"}, consistency_level="Strong")[0]
        return [int(h["entity"]["video_id"]) for h in hits]

    return search, server, len(rows)


def _score(search: Callable[[str], list[int]], queries: list[tuple[str, str]], ids: dict[str, int]) -> list:
    ranks, times = [], []
    for query, expected in queries:
        start = time.perf_counter()
        videos = search(query)
        times.append(1000 * (time.perf_counter() - start))
        order = list(dict.fromkeys(videos))  # each video at its best segment
        ranks.append(order.index(ids[expected]) + 1 if ids[expected] in order else None)
    found = [r for r in ranks if r is not None]
    n = len(queries)
    return [sum(r == 1 for r in found) / n, sum(r <= 5 for r in found) / n, len(found) / n,
            sum(1 / r for r in found) / n, percentile(times, 50), percentile(times, 99)]


def run(args: argparse.Namespace, command: str) -> str:
    from sqlalchemy import select

    from indexer.storage.db import Video, make_engine, session_factory

    db = Path(args.collection) / "home" / "save_search.db"
    if not db.exists():
        raise SystemExit(f"{db} not found: run `python -m bench.retrieval_bench --screen` first")
    sqlite_url = f"sqlite:///{db}"
    with session_factory(make_engine(sqlite_url))() as s:
        ids = {v.filename: v.id for v in s.execute(select(Video.id, Video.filename))}
    queries = _queries(set(ids))
    load = load1()
    pg_url = _copy_to_postgres(sqlite_url, args.postgres)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            milvus, server, segments = _milvus_search(sqlite_url, Path(tmp))
            try:
                for name, search in (("SQLite FTS5 (`search_segments`)", _database_search(sqlite_url)),
                                     ("PostgreSQL full text (`search_segments`)", _database_search(pg_url)),
                                     ("Milvus Lite 2.5 BM25 (sparse, normalised text)", milvus)):
                    search(queries[0][0])  # warm-up
                    rows.append([name, *_score(search, queries, ids)])
            finally:
                server.stop()
    finally:
        _drop_postgres(args.postgres, pg_url)
    body = "\n".join([
        f"The collection of `bench.retrieval_bench --screen` ({len(ids)} videos, {segments} segments: speech and "
        f"on-screen text), its {len(queries)} benchmark queries (paraphrases, numbers, adversarial, on-screen "
        f"text). Each backend returns its {POOL} best segments for the normalised query; a video ranks at its best "
        "segment. Found = the right video among the candidates at all (the pool search scores exactly).",
        "",
        md_table(["full-text backend", "R@1", "R@5", "found", "MRR", "p50 ms", "p99 ms"], rows),
    ])
    return entry("Full-text candidates: database full text vs Milvus BM25", command, load, body)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", default=str(WORK / "retrieval-screen"),
                   help="folder of bench.retrieval_bench --screen's collection")
    p.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                   help="a PostgreSQL server's admin URL (a database of the bench's own is made and dropped)")
    p.add_argument("--no-append", action="store_true", help="print only, do not write BENCHMARKS.md")
    args = p.parse_args(argv)
    publish(run(args, command_line("bench.fulltext_bench", argv)), write=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
