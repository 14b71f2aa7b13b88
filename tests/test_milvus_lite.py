"""What the Milvus backend does about Milvus Lite's own behaviour (a real Milvus Lite 2.5 server):
- Lite builds none of the ANN indexes it accepts; from 100,000 rows on it searches an interim IVF index of its own
  (100 lists, 4 probed) whatever the index type and ``nprobe``, so the backend keeps its vector collections FLAT
  (exact) there, including collections created earlier with another index;
- Lite's cost of a query by ids grows with the square of the fp16 rows it returns, so frame features kept in the
  ``frames`` collection (``SAVE_SEARCH_FRAME_STORE=milvus``) are read in batches of ``READ_BATCH`` ids, in the order
  asked for."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np
import pytest

from indexer.storage import milvus
from indexer.storage.milvus import MILVUS_SHARD, MilvusCatalog, is_milvus_lite
from indexer.storage.shards import FeatureRef

DIM = 8


@pytest.fixture
def client(milvus_uri: str) -> Iterator:
    from pymilvus import MilvusClient

    out = MilvusClient(uri=milvus_uri)
    out.prefix = f"lite_{secrets.token_hex(6)}"
    try:
        yield out
    finally:
        for name in out.list_collections():
            if name.startswith(out.prefix):
                out.drop_collection(name)
        out.close()


def _catalog(client, **kwargs) -> MilvusCatalog:
    out = MilvusCatalog(client, None, "v1", DIM, "minilm", 4, prefix=client.prefix, **kwargs)  # type: ignore[arg-type]
    out.load()
    return out


def _index_types(catalog: MilvusCatalog) -> dict[str, str]:
    return {kind: catalog.client.describe_index(name, "vector")["index_type"] for kind, name in catalog.names.items()}


def test_lite_is_recognised_and_its_vector_collections_are_flat(client) -> None:
    assert is_milvus_lite(client)
    catalog = _catalog(client, index_type="IVF_FLAT")
    assert catalog.index_type == "FLAT"
    assert _index_types(catalog) == {"videos": "FLAT", "passages": "FLAT"}


def test_a_lite_collection_created_with_another_index_becomes_flat_when_opened(client) -> None:
    before = _catalog(client, index_type="AUTOINDEX", exact_on_lite=False)
    assert _index_types(before) == {"videos": "AUTOINDEX", "passages": "AUTOINDEX"}
    client.insert(before.names["videos"], [{"id": 1, "vector": [1.0] + [0.0] * (DIM - 1)}])
    after = _catalog(client, index_type="AUTOINDEX")
    assert _index_types(after) == {"videos": "FLAT", "passages": "FLAT"}
    assert after.search_videos(np.eye(DIM, dtype=np.float32)[0], 5) == [1]  # rows kept, collection loaded


@pytest.mark.slow
def test_lite_search_stays_exact_past_100k_vectors(client) -> None:
    """Past Lite's interim-index threshold (100k rows) the top 10 is still the exact one (AUTOINDEX would give
    recall@10 ~0.93 on these random vectors, whatever nprobe)."""
    rng = np.random.default_rng(7)
    n = 101_000
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    catalog = _catalog(client, index_type="AUTOINDEX")
    for lo in range(0, n, 10_000):
        rows = [{"id": lo + i + 1, "vector": v} for i, v in enumerate(x[lo:lo + 10_000])]
        client.insert(catalog.names["videos"], rows)
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    for q in queries:
        exact = (np.argsort(-(x @ (q / np.linalg.norm(q))), kind="stable")[:10] + 1).tolist()
        assert catalog.search_videos(q, 10) == exact


def test_frames_are_read_in_batches_in_the_order_asked(client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(milvus, "READ_BATCH", 3)
    catalog = _catalog(client, index_type="FLAT", frame_store="milvus")  # the collection (SAVE_SEARCH_FRAME_STORE)
    store = catalog.open_features(12, DIM, "w")
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((10, 12, DIM)).astype(np.float16)
    masks = (rng.random((10, 12)) < 0.7).astype(np.uint8)
    for i in range(10):
        store.append(i + 1, frames[i], masks[i])
    order = [7, 2, 10, 2, 5, 1, 9, 3]  # shuffled, one repeated: more ids than one batch
    got_frames, got_masks = store.read_many([FeatureRef(MILVUS_SHARD, 0, v) for v in order])
    np.testing.assert_array_equal(got_frames, frames[np.array(order) - 1])
    np.testing.assert_array_equal(got_masks, masks[np.array(order) - 1])
