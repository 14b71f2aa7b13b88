"""Feature store (torn writes, concurrent writers), the FAISS vector index and atomic index snapshots."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.storage import faiss_index, shards, snapshots
from indexer.storage.faiss_index import VectorIndex, choose_index_type, ivf_nlist, ivfpq_min_vectors, pq_subquantizers
from indexer.storage.shards import SHARD_HEADER_BYTES, FeatureRef, FeatureStore, FeatureStoreError, pool_frames
from indexer.storage.snapshots import SnapshotError, current_version, load_snapshot, save_snapshot

T, D = 12, 32
RECORD_BYTES = shards.record_dtype(T, D).itemsize


def video(video_id: int, frames: int = T, dim: int = D) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-id features (normalised per frame) and a mask with a few padded frames."""
    rng = np.random.default_rng(video_id)
    x = rng.standard_normal((frames, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    valid = 1 + video_id % frames
    mask = (np.arange(frames) < valid).astype(np.int64)
    return x, mask


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ====================================================================== feature store


def test_round_trip_fp16(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1")
    refs = {vid: fs.append(vid, *video(vid)) for vid in (3, 7, 11)}
    assert all(r.shard == "w1-00001.feat" for r in refs.values())
    assert [r.offset for r in refs.values()] == [SHARD_HEADER_BYTES + i * fs.record_bytes for i in range(3)]
    for vid, ref in refs.items():
        frames, mask = fs.read(ref)
        x, m = video(vid)
        assert frames.dtype == np.float16 and frames.shape == (T, D)
        np.testing.assert_array_equal(frames, x.astype(np.float16))  # exact fp16 round trip
        np.testing.assert_allclose(frames.astype(np.float32), x, atol=1e-3)
        np.testing.assert_array_equal(mask, m)
    # A reader (another instance, any owner) sees the same, also from a ref rebuilt from a DB row.
    reader = FeatureStore(tmp_path, T, D, "api")
    ref = refs[7]
    frames, _ = reader.read(FeatureRef(ref.shard, ref.offset, 7))
    np.testing.assert_array_equal(frames, video(7)[0].astype(np.float16))
    with pytest.raises(FeatureStoreError, match="belongs to video 7, expected 8"):
        reader.read(FeatureRef(ref.shard, ref.offset, 8))
    assert list((tmp_path).glob("api-*")) == []  # readers create no shards
    meta = json.loads((tmp_path / "store.json").read_text())
    assert (meta["frames"], meta["dim"], meta["dtype"]) == (T, D, "float16")
    fs.close()


def test_read_many_order_across_shards_and_growth(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1", max_shard_bytes=SHARD_HEADER_BYTES + 3 * RECORD_BYTES)
    refs = [fs.append(vid, *video(vid)) for vid in range(10)]
    assert sorted({r.shard for r in refs}) == [f"w1-0000{i}.feat" for i in (1, 2, 3, 4)]
    reader = FeatureStore(tmp_path, T, D, "api", max_open_shards=2)  # forces map evictions
    order = [7, 0, 3, 3, 9, 1, 5]
    frames, masks = reader.read_many([refs[i] for i in order])
    assert frames.shape == (len(order), T, D) and masks.shape == (len(order), T)
    for row, vid in enumerate(order):
        np.testing.assert_array_equal(frames[row], video(vid)[0].astype(np.float16))
        np.testing.assert_array_equal(masks[row], video(vid)[1])
    # The reader's cached map of the last shard predates these records: it must remap, not fail.
    more = [fs.append(vid, *video(vid)) for vid in range(10, 12)]
    frames, _ = reader.read_many(more + [refs[9]])
    np.testing.assert_array_equal(frames[1], video(11)[0].astype(np.float16))
    empty_f, empty_m = reader.read_many([])
    assert empty_f.shape == (0, T, D) and empty_m.shape == (0, T)
    fs.close()


def test_truncated_record_is_detected_and_writer_moves_on(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1")
    refs = [fs.append(vid, *video(vid)) for vid in range(3)]
    fs.close()
    path = tmp_path / refs[2].shard
    os.truncate(path, refs[2].offset + fs.record_bytes // 2)  # a torn write of the last record
    reader = FeatureStore(tmp_path, T, D, "api")
    with pytest.raises(FeatureStoreError, match="past its end"):
        reader.read(refs[2])
    with pytest.raises(FeatureStoreError, match="past its end"):
        reader.read_many(refs)
    frames, _ = reader.read_many(refs[:2])
    np.testing.assert_array_equal(frames[1], video(1)[0].astype(np.float16))
    # Restarting the same owner never appends after the torn tail: it starts a new shard.
    fs = FeatureStore(tmp_path, T, D, "w1")
    ref = fs.append(3, *video(3))
    assert ref.shard == "w1-00002.feat"
    np.testing.assert_array_equal(reader.read(ref)[0], video(3)[0].astype(np.float16))
    assert [r.video_id for r in reader.scan()] == [0, 1, 3]
    fs.close()


def test_truncation_under_a_cached_map_is_an_error_not_a_crash(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1")
    refs = [fs.append(vid, *video(vid)) for vid in range(4)]
    reader = FeatureStore(tmp_path, T, D, "api")
    reader.read_many(refs)  # maps all 4 records
    os.truncate(tmp_path / refs[0].shard, refs[2].offset + 10)
    with pytest.raises(FeatureStoreError, match="past its end"):
        reader.read(refs[3])
    assert reader.read(refs[1])[0].shape == (T, D)
    fs.close()


def test_corrupted_bytes_and_bad_offsets_are_detected(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1")
    refs = [fs.append(vid, *video(vid)) for vid in range(4)]
    fs.close()
    path = tmp_path / refs[0].shard

    def flip(offset: int) -> None:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x01]))

    flip(refs[1].offset + 16 + 100)  # a feature byte
    flip(refs[2].offset + 9)  # the stored video id (covered by the crc)
    with open(path, "r+b") as fh:  # a lost write: zeros where the record should be
        fh.seek(refs[3].offset)
        fh.write(b"\0" * fs.record_bytes)
    reader = FeatureStore(tmp_path, T, D, "api")
    assert reader.read(refs[0])[0].shape == (T, D)
    for ref in refs[1:3]:
        with pytest.raises(FeatureStoreError, match="checksum mismatch"):
            reader.read(ref)
    with pytest.raises(FeatureStoreError, match="torn write or wrong offset"):
        reader.read(refs[3])
    with pytest.raises(FeatureStoreError, match="checksum mismatch"):
        reader.read_many([refs[0], refs[2]])
    with pytest.raises(FeatureStoreError, match="not a record boundary"):
        reader.read(FeatureRef(refs[0].shard, refs[0].offset + 8))
    with pytest.raises(FeatureStoreError, match="missing"):
        reader.read(FeatureRef("w9-00001.feat", SHARD_HEADER_BYTES))
    with pytest.raises(FeatureStoreError, match="invalid shard name"):
        reader.read(FeatureRef("../store.json", SHARD_HEADER_BYTES))
    assert [r.video_id for r in reader.scan()] == [0]


def test_wrong_dimensions_fail_clearly(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1")
    ref = fs.append(1, *video(1))
    fs.close()
    with pytest.raises(FeatureStoreError, match="frames=12 dim=32.*opened with frames=12 dim=64"):
        FeatureStore(tmp_path, T, 64, "w1")
    with pytest.raises(FeatureStoreError, match="frames=12 dim=32.*opened with frames=8 dim=32"):
        FeatureStore(tmp_path, 8, D, "w1")
    # Shard headers are checked too (e.g. store.json lost and recreated with other dims).
    (tmp_path / "store.json").unlink()
    other = FeatureStore(tmp_path, T, 64, "api")
    with pytest.raises(FeatureStoreError, match="shard w1-00001.feat was written with .*dim=32"):
        other.read(FeatureRef(ref.shard, SHARD_HEADER_BYTES))
    with pytest.raises(ValueError, match=r"frames must be \[12, 64\]"):
        other.append(2, *video(2))
    with pytest.raises(ValueError, match="owner"):
        FeatureStore(tmp_path, T, 64, "bad/owner")


def test_owner_is_exclusive_and_resumes_its_shard(tmp_path: Path) -> None:
    a = FeatureStore(tmp_path, T, D, "w1")
    a.append(1, *video(1))
    b = FeatureStore(tmp_path, T, D, "w1")
    with pytest.raises(FeatureStoreError, match="already writing"):
        b.append(2, *video(2))
    a.close()
    ref = b.append(2, *video(2))  # the lock is free now; the clean shard is continued
    assert ref == FeatureRef("w1-00001.feat", SHARD_HEADER_BYTES + b.record_bytes, 2)
    b.close()


def test_threads_share_one_writer(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path, T, D, "w1")
    refs: dict[int, FeatureRef] = {}

    def work(start: int) -> None:
        for vid in range(start, start + 25):
            refs[vid] = fs.append(vid, *video(vid))

    threads = [threading.Thread(target=work, args=(s,)) for s in (0, 100, 200, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({(r.shard, r.offset) for r in refs.values()}) == 100
    ids = sorted(refs)
    frames, _ = fs.read_many([refs[v] for v in ids])
    for row, vid in enumerate(ids):
        np.testing.assert_array_equal(frames[row], video(vid)[0].astype(np.float16))
    fs.close()


def _owner_worker(root: str, owner: str, start: int, count: int) -> list[tuple[str, int, int]]:
    fs = FeatureStore(Path(root), T, D, owner, max_shard_bytes=SHARD_HEADER_BYTES + 5 * RECORD_BYTES)
    out = []
    for vid in range(start, start + count):
        ref = fs.append(vid, *video(vid))
        out.append((ref.shard, ref.offset, vid))
    fs.close()
    return out


def test_owners_in_separate_processes_write_concurrently(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    jobs = [(str(tmp_path), f"host{i}-w", 1000 * i, 30) for i in range(3)]
    with ctx.Pool(3) as pool:
        results = pool.starmap(_owner_worker, jobs)
    refs = [FeatureRef(shard, offset, vid) for chunk in results for shard, offset, vid in chunk]
    assert len(refs) == 90 and len({r.shard for r in refs}) == 18  # rotated every 5 records, one owner per file
    reader = FeatureStore(tmp_path, T, D, "api")
    order = np.random.default_rng(0).permutation(len(refs))
    frames, masks = reader.read_many([refs[i] for i in order])
    for row, i in enumerate(order):
        x, m = video(refs[i].video_id)
        np.testing.assert_array_equal(frames[row], x.astype(np.float16))
        np.testing.assert_array_equal(masks[row], m)
    assert sorted(r.video_id for r in reader.scan()) == sorted(r.video_id for r in refs)


def test_pool_frames_matches_the_model() -> None:
    import torch  # here, not at module level: spawned test workers import this module

    from models.similarity import masked_mean_pool

    frames = np.stack([video(v)[0] for v in range(5)]).astype(np.float16)
    masks = np.stack([video(v)[1] for v in range(5)]).astype(np.uint8)
    masks[4] = 0  # no valid frame: denominator clamped to 1, as in the model
    expected = masked_mean_pool(torch.from_numpy(frames.astype(np.float32)), torch.from_numpy(masks)).numpy()
    np.testing.assert_allclose(pool_frames(frames, masks), expected, atol=1e-6)


# ====================================================================== vector index


def clustered(n: int, dim: int, rng: np.random.Generator, latent: int = 32, clusters: int = 200) -> np.ndarray:
    """Normalised vectors with cluster structure in a low-dimensional subspace (like real embeddings)."""
    basis = np.random.default_rng(12345).standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centers = np.random.default_rng(54321).standard_normal((clusters, latent)).astype(np.float32)
    z = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, latent)).astype(np.float32)
    return unit(z @ basis + 0.02 * rng.standard_normal((n, dim)).astype(np.float32))


@pytest.fixture
def one_thread():
    """faiss/OpenMP spin-waits badly on a shared 2-core box; one thread keeps build times predictable."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_flat_is_exact() -> None:
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((1000, 64)))
    ids = rng.choice(10**9, size=1000, replace=False).astype(np.int64)
    index = VectorIndex.create(64, "auto", x * 3.0, ids)  # vectors are normalised on the way in
    assert index.kind == "flat" and len(index) == 1000 and index.dim == 64
    q = unit(rng.standard_normal((5, 64)))
    scores, found = index.search(q, 10)
    brute = q @ x.T
    top = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[top])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, top, 1), atol=1e-5)
    scores, found = index.search(q[0], 1005)  # more than stored: -1 / -inf padding
    assert (found[0, 1000:] == -1).all() and np.isneginf(scores[0, 1000:]).all()
    assert set(found[0, :1000]) == set(ids)
    empty = VectorIndex.create(64)
    s, i = empty.search(q, 3)
    assert (i == -1).all() and np.isneginf(s).all() and len(empty) == 0 and empty.kind == "flat"


@pytest.mark.slow
def test_ann_recall_vs_flat(one_thread) -> None:
    """HNSW must match exact search; IVF-PQ (64-byte codes) is a candidate generator whose shortlist is
    re-scored exactly (SAVE similarity on stored frames), so the bar is the true top-10 inside its top-100."""
    rng = np.random.default_rng(1)
    n, dim = 20_000, 512
    x = clustered(n, dim, rng)
    q = clustered(200, dim, rng)
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    _, truth = VectorIndex.create(dim, "flat", x, ids).search(q, 10)

    def recall(found: np.ndarray, depth: int) -> float:
        return float(np.mean([len(set(found[i, :depth]) & set(truth[i])) / 10 for i in range(len(q))]))

    start = time.time()
    hnsw = VectorIndex.create(dim, "hnsw", x, ids)
    _, found = hnsw.search(q, 10)
    hnsw_r10 = recall(found, 10)
    ivfpq = VectorIndex.create(dim, "ivfpq", x, ids, nlist=128, nprobe=16)
    assert ivfpq.kind == "ivfpq" and ivfpq.params()["pq_m"] == 64
    _, found = ivfpq.search(q, 100)
    ivf_r10, ivf_r10_at_100 = recall(found, 10), recall(found, 100)
    print(f"recall@10 hnsw={hnsw_r10:.3f} ivfpq={ivf_r10:.3f} ivfpq 10@100={ivf_r10_at_100:.3f} "
          f"({time.time() - start:.1f}s)")
    assert hnsw_r10 >= 0.9
    assert ivf_r10_at_100 >= 0.9
    assert ivf_r10 >= 0.4  # what 64-byte PQ codes alone give here (~0.68); a guard against breakage


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_remove_add_replace_and_ids(kind: str, one_thread) -> None:
    rng = np.random.default_rng(2)
    dim = 64
    n = 10_000 if kind == "ivfpq" else 2000
    x = clustered(n, dim, rng, latent=16)
    ids = np.arange(n, dtype=np.int64) * 5 + 1
    index = VectorIndex.create(dim, kind, x, ids, nlist=64)
    assert index.kind == kind
    gone = ids[:300]
    assert index.remove(np.concatenate([gone, [10**12]])) == 300  # unknown ids are ignored
    assert index.remove(gone) == 0
    assert len(index) == n - 300
    assert set(index.ids()) == set(ids[300:])
    _, found = index.search(x[:300], 10)
    assert not np.isin(found, gone).any()
    # Remaining vectors still map to their own ids (IDMap + IVF renumbering would break this).
    _, found = index.search(x[1000:1050], 10, nprobe=64)
    assert np.mean([ids[1000 + i] in found[i] for i in range(50)]) >= 0.95
    # Re-adding an id replaces its vector instead of duplicating it.
    new = clustered(2, dim, np.random.default_rng(99), latent=16)
    index.add(np.array([ids[500], ids[0]]), new)
    assert len(index) == n - 299 and len(index.ids()) == len(set(index.ids()))
    _, found = index.search(new, 10, nprobe=64)
    assert ids[500] in found[0] and ids[0] in found[1]
    with pytest.raises(ValueError, match="duplicate"):
        index.add(np.array([7, 7]), new)
    if kind == "hnsw":
        assert index.tombstones == 301
        before = index.search(x[2000 - 50:2000], 5)
        index.compact()
        assert index.tombstones == 0 and len(index) == n - 299
        assert set(index.ids()) == set(ids[300:]) | {ids[0]}
        after = index.search(x[2000 - 50:2000], 5)
        assert np.mean(before[1][:, 0] == after[1][:, 0]) >= 0.95
    else:
        assert index.tombstones == 0


def test_choose_index_type_thresholds() -> None:
    assert choose_index_type(0) == "flat"
    assert choose_index_type(faiss_index.FLAT_MAX_VECTORS - 1) == "flat"
    assert choose_index_type(faiss_index.FLAT_MAX_VECTORS) == "hnsw"
    assert choose_index_type(faiss_index.HNSW_MAX_VECTORS) == "hnsw"
    assert choose_index_type(faiss_index.HNSW_MAX_VECTORS + 1) == "ivfpq"
    assert choose_index_type(50, "HNSW") == "hnsw"
    assert choose_index_type(50, "flat") == "flat"
    # IVF-PQ needs 39 training vectors per centroid (coarse: 4*sqrt(n); PQ: 256): ~24.3k at least.
    assert choose_index_type(24_000, "ivfpq") == "flat"
    assert choose_index_type(25_000, "ivfpq") == "ivfpq"
    assert ivf_nlist(1_000_000) == 4000 and ivfpq_min_vectors(4000) == 156_000
    assert ivfpq_min_vectors(10) == 39 * 256
    assert (pq_subquantizers(512), pq_subquantizers(768), pq_subquantizers(100)) == (64, 96, 10)
    with pytest.raises(ValueError, match="unknown index type"):
        choose_index_type(10, "lsh")
    small = VectorIndex.create(16, "ivfpq", unit(np.random.default_rng(0).standard_normal((500, 16))),
                               np.arange(500))
    assert small.kind == "flat" and len(small) == 500


def test_ivfpq_trains_on_a_sample_and_is_retrained_when_outgrown(tmp_path) -> None:
    """A large build trains on ~40 vectors per list, not on everything; the catalog retrains an IVF-PQ index
    once the collection asks for twice its lists (~4x the vectors it was trained for), built ahead by prepare()."""
    from indexer.storage.faiss_catalog import ManagedIndex

    sample = faiss_index.ivf_training_sample(1_000_000, 4000)
    assert len(sample) == 160_000 and np.all(np.diff(sample) > 0) and sample[-1] < 1_000_000
    assert faiss_index.ivf_training_sample(65_536, 1024) is None  # never below what PQ training uses anyway
    assert len(faiss_index.ivf_training_sample(200_000, 1789)) == 71_560
    # Trained at 50k (nlist 894, where auto switches to IVF-PQ): retrained at ~200k, again at ~800k.
    assert not faiss_index.ivfpq_outgrown(4000, 1_000_000) and not faiss_index.ivfpq_outgrown(894, 190_000)
    assert faiss_index.ivfpq_outgrown(894, 200_000) and faiss_index.ivfpq_outgrown(632, 100_000)

    dim = 16
    vectors = unit(np.random.default_rng(3).standard_normal((100_000, dim)))
    ids = np.arange(1, 100_001)

    in_db: set[int] = set()

    def fetch(wanted):  # what the catalog reads from the database: the rows of `wanted`, or all of in_db
        return [(i, vectors[i - 1]) for i in sorted(in_db if wanted is None else wanted)]

    managed = ManagedIndex(tmp_path / "idx", dim, "space", requested_type="ivfpq")
    managed.load()
    in_db = set(range(1, 25_001))
    managed.sync(in_db, fetch)
    assert managed.index.kind == "ivfpq" and managed.index.params()["nlist"] == ivf_nlist(25_000) == 632
    in_db = set(range(1, 60_001))
    managed.sync(in_db, fetch)  # grown 2.4x: lists only added to
    assert managed.index.params()["nlist"] == 632 and len(managed.index) == 60_000
    in_db = set(ids.tolist())
    # Grown 4x: the worker prepares the retrained index outside the index lock; the live one is untouched until
    # sync swaps it in and applies only what changed since (here: one video deleted in between).
    assert managed.prepare(len(in_db), lambda: fetch(None))
    assert managed.index.params()["nlist"] == 632
    in_db.discard(7)
    report = managed.sync(in_db, fetch)
    assert (report.added, report.removed) == (0, 1)
    assert managed.index.params()["nlist"] == ivf_nlist(100_000) == 1265 and len(managed.index) == 99_999
    assert not managed.prepare(len(in_db), lambda: fetch(None))  # nothing to rebuild now
    in_db.add(7)
    managed.sync(in_db, fetch)
    _, found = managed.index.search(vectors[:1], 10)
    assert 1 in found[0]


# ====================================================================== snapshots


def _index(n: int = 300, dim: int = 16, kind: str = "flat", seed: int = 0) -> tuple[VectorIndex, np.ndarray]:
    x = unit(np.random.default_rng(seed).standard_normal((n, dim)))
    return VectorIndex.create(dim, kind, x, np.arange(n) + 100), x


def test_snapshot_round_trip_and_versions(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    assert load_snapshot(folder) is None and current_version(folder) is None
    index, x = _index(kind="hnsw")
    index.remove([100, 101])
    assert save_snapshot(index, folder, "save-b32|ckpt=a", {"source": "test"}) == 1
    loaded, manifest = load_snapshot(folder)
    assert manifest["version"] == 1 and manifest["file"] == "index-1.faiss" and manifest["count"] == 298
    assert manifest["kind"] == "hnsw" and manifest["model_version"] == "save-b32|ckpt=a"
    assert manifest["extra"] == {"source": "test"} and manifest["previous"] is None
    assert loaded.kind == "hnsw" and loaded.tombstones == 2 and len(loaded) == 298
    np.testing.assert_array_equal(loaded.search(x[:20], 5)[1], index.search(x[:20], 5)[1])
    assert not np.isin(loaded.search(x[:2], 5)[1], [100, 101]).any()

    for expected in (2, 3, 4):
        index.add(np.array([1000 + expected]), x[:1])
        assert save_snapshot(index, folder, "m") == expected
        assert current_version(folder) == expected
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert files == ["index-3.faiss", "index-4.faiss", "manifest.json"]  # current + previous only
    loaded, manifest = load_snapshot(folder)
    assert manifest["previous"] == "index-3.faiss" and len(loaded) == 301 and 1004 in set(loaded.ids())


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_snapshot_keeps_kind_and_results(tmp_path: Path, kind: str, one_thread) -> None:
    x = clustered(10_000, 16, np.random.default_rng(3), latent=8)
    index = VectorIndex.create(16, kind, x, np.arange(10_000) * 2, nlist=32, nprobe=8)
    index.remove(np.arange(0, 200, 2))
    save_snapshot(index, tmp_path, "m")
    loaded, manifest = load_snapshot(tmp_path)
    assert loaded.kind == manifest["kind"] == kind and len(loaded) == 9900
    assert loaded.params() == index.params() == manifest["params"]
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.sort(index.ids()))
    np.testing.assert_array_equal(loaded.search(x[:20], 5)[1], index.search(x[:20], 5)[1])


def test_crash_between_index_file_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "index"
    first, x = _index(seed=1)
    save_snapshot(first, folder, "m")
    expected = first.search(x[:10], 5)

    def crash(*_args, **_kwargs) -> None:
        raise OSError("power cut")

    second, _ = _index(n=50, seed=2)
    with monkeypatch.context() as m:
        m.setattr(snapshots, "_write_manifest", crash)
        with pytest.raises(OSError, match="power cut"):
            save_snapshot(second, folder, "m")
    assert (folder / "index-2.faiss").exists()  # written, but never published
    loaded, manifest = load_snapshot(folder)
    assert manifest["version"] == 1 and current_version(folder) == 1 and len(loaded) == 300
    np.testing.assert_array_equal(loaded.search(x[:10], 5)[1], expected[1])
    # A crash while writing the index file leaves no temp file and the old snapshot.
    with monkeypatch.context() as m:
        m.setattr(snapshots.faiss, "write_index", lambda _i, path: (Path(path).write_bytes(b"partial"), crash()))
        with pytest.raises(OSError, match="power cut"):
            save_snapshot(second, folder, "m")
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert current_version(folder) == 1
    # The next save never reuses the orphan's number and cleans it up.
    assert save_snapshot(second, folder, "m") == 3
    assert sorted(p.name for p in folder.glob("index-*")) == ["index-1.faiss", "index-3.faiss"]
    assert len(load_snapshot(folder)[0]) == 50


def test_missing_or_mismatched_snapshot_file(tmp_path: Path) -> None:
    index, _ = _index()
    save_snapshot(index, tmp_path, "m")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "count": 5}))
    with pytest.raises(SnapshotError, match="holds 300 vectors"):
        load_snapshot(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "file": "index-9.faiss"}))
    with pytest.raises(SnapshotError, match="keeps disappearing"):
        load_snapshot(tmp_path)


def test_readers_need_no_lock(tmp_path: Path) -> None:
    index, _ = _index()
    save_snapshot(index, tmp_path, "m")
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer is in the middle of a save
    try:
        assert current_version(tmp_path) == 1
        assert len(load_snapshot(tmp_path)[0]) == 300
    finally:
        os.close(fd)


def test_concurrent_savers_serialize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spans: list[tuple[float, float]] = []
    real = snapshots._write_index_file

    def slow_write(index: VectorIndex, path: Path) -> None:
        start = time.monotonic()
        time.sleep(0.05)
        real(index, path)
        spans.append((start, time.monotonic()))

    monkeypatch.setattr(snapshots, "_write_index_file", slow_write)
    versions: list[int] = []
    index, _ = _index()

    def save() -> None:
        versions.append(save_snapshot(index, tmp_path, "m"))

    threads = [threading.Thread(target=save) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4, 5]
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert current_version(tmp_path) == 5 and len(load_snapshot(tmp_path)[0]) == 300


def _saver_process(folder: str, count: int) -> list[int]:
    index, _ = _index(n=100)
    return [save_snapshot(index, Path(folder), "m") for _ in range(count)]


def test_savers_in_separate_processes_serialize(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_saver_process, [(str(tmp_path), 4), (str(tmp_path), 4)])
    assert sorted(v for r in results for v in r) == list(range(1, 9))
    loaded, manifest = load_snapshot(tmp_path)
    assert manifest["version"] == 8 and len(loaded) == 100
    assert len(list(tmp_path.glob("index-*.faiss"))) == 2


def test_catalog_prepares_rebuilds_from_the_database(tmp_path) -> None:
    """The worker's prepare step: the catalog counts what belongs in each index, builds the replacement the next
    sync would otherwise build under the lock (here flat -> HNSW as configured), and sync only swaps it in."""
    from indexer.storage.catalog import to_blob
    from indexer.storage.db import Passage, Video, make_engine, session_factory
    from indexer.storage.faiss_catalog import FaissCatalog
    from indexer.storage.migrate import init_db

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    init_db(url)
    sessions = session_factory(make_engine(url))
    rng = np.random.default_rng(5)
    with sessions.begin() as s:
        for i in range(1, 41):
            video = Video(content_hash=f"{i:064x}", filename=f"{i}.mp4", source_path=f"/m/{i}.mp4", size_bytes=1,
                          duration_s=1.0, has_audio=True, model_mode="save-fused", status="indexed",
                          model_version="v1" if i <= 30 else "old", pooled=to_blob(unit(rng.standard_normal(8))))
            if i % 2:
                video.passages = [Passage(first_idx=0, last_idx=0, start_s=0.0, end_s=1.0,
                                          embedding=to_blob(unit(rng.standard_normal(4))))]
            s.add(video)
    catalog = FaissCatalog(tmp_path / "index", sessions, "v1", 8, "minilm", 4, index_type="hnsw")
    catalog.load()
    assert catalog.videos.index.kind == catalog.passages.index.kind == "flat"  # nothing published yet
    assert catalog.prepare()
    assert catalog.videos.index.kind == "flat"  # the live index is untouched until sync
    reports = catalog.sync()
    assert (reports["videos"].added, reports["passages"].added) == (0, 0)  # swapped in, nothing rebuilt
    assert catalog.videos.index.kind == catalog.passages.index.kind == "hnsw"
    assert len(catalog.videos.index) == 30 and len(catalog.passages.index) == 20  # the model's videos; passages
    assert not catalog.prepare()
