"""Milvus Lite for real: create, upsert, batched and filtered search, reopen, resume, swap, bad input."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from tuna.errors import DatastoreUnavailable
from tuna.recipe import IndexConfig
from tuna.retrieval.store import DimensionMismatch, MilvusStore, UnknownDatastore

pytestmark = pytest.mark.integration


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fill(store: MilvusStore, name: str, vecs: np.ndarray, source: str = "world-A", start: int = 0) -> None:
    ids = [f"{start + i:09d}" for i in range(len(vecs))]
    store.ensure(name, vecs.shape[1])
    store.upsert(name, ids, vecs, [[f"tag{(start + i) % 7}", "shared"] for i in range(len(vecs))],
                 [f"caption {start + i}" for i in range(len(vecs))], source)


@pytest.fixture()
def vecs() -> np.ndarray:
    return _unit(np.random.default_rng(0), 500, 16)


@pytest.mark.parametrize("index_type", ["HNSW", "FLAT", "IVF_FLAT"])
def test_create_insert_batched_search_finds_itself(tmp_path: Path, vecs: np.ndarray, index_type: str) -> None:
    ix = IndexConfig(index_type=index_type, nlist=8, nprobe=8, batch_size=64)
    store = MilvusStore(str(tmp_path / "a.db"))
    _fill(store, "A", vecs)
    info = store.build_index("A", ix)
    assert info["index_type"] == index_type and info["metric_type"] == "COSINE"
    if index_type == "HNSW":
        assert info["params"] == {"M": 16, "efConstruction": 64}  # build params honoured, not defaults
    assert store.count("A") == 500
    hits = store.search("A", vecs[:200], k=5, ix=ix)
    assert len(hits) == 200 and all(len(h) == 5 for h in hits)
    self_hit = np.mean([h[0].id == f"{i:09d}" for i, h in enumerate(hits)])
    assert self_hit >= 0.99
    top = hits[3][0]
    assert top.values == ["tag3", "shared"] and top.caption == "caption 3" and top.source == "world-A"
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert all(h[i].score >= h[i + 1].score for h in hits for i in range(4))
    store.close()


def test_filtered_search(tmp_path: Path, vecs: np.ndarray) -> None:
    ix = IndexConfig()
    store = MilvusStore(str(tmp_path / "a.db"))
    _fill(store, "A", vecs[:250], source="world-A")
    _fill(store, "A", vecs[250:], source="world-X", start=250)
    store.build_index("A", ix)
    hits = store.search("A", vecs[:10], k=5, ix=ix, filter='source == "world-X"')
    assert all(n.source == "world-X" for h in hits for n in h)


def test_reopen_finds_the_same_rows_and_a_copied_folder_answers_identically(tmp_path: Path, vecs: np.ndarray) -> None:
    ix = IndexConfig()
    path = tmp_path / "a.db"
    store = MilvusStore(str(path))
    _fill(store, "A", vecs)
    store.build_index("A", ix)
    before = store.search("A", vecs[:50], k=5, ix=ix)
    store.close()
    # A DVC pull restores the folder byte for byte: a copy stands in for it.
    shutil.copytree(path, tmp_path / "pulled.db")
    for p in (path, tmp_path / "pulled.db"):
        again = MilvusStore(str(p))
        assert again.count("A") == 500
        after = again.search("A", vecs[:50], k=5, ix=ix)
        assert [[n.id for n in h] for h in after] == [[n.id for n in h] for h in before]
        again.close()


def test_resume_after_partial_build_leaves_one_row_per_id(tmp_path: Path, vecs: np.ndarray) -> None:
    store = MilvusStore(str(tmp_path / "a.db"))
    _fill(store, "A", vecs[:300])  # a build "killed" after 300 rows
    store.flush("A")
    store.close()
    store = MilvusStore(str(tmp_path / "a.db"))
    done = store.ids("A")
    assert len(done) == 300
    _fill(store, "A", vecs)  # the re-run re-sends everything (worst case): upsert keeps one row per id
    store.build_index("A", IndexConfig())
    assert store.count("A") == 500
    assert store.ids("A") == {f"{i:09d}" for i in range(500)}


def test_swap_datastore_by_name_without_reconnecting(tmp_path: Path, vecs: np.ndarray) -> None:
    ix = IndexConfig()
    store = MilvusStore(str(tmp_path / "shared.db"))
    _fill(store, "A", vecs, source="world-A")
    _fill(store, "B", vecs[::-1].copy(), source="world-B")
    for name in ("A", "B"):
        store.build_index(name, ix)
    a = store.search("A", vecs[:3], k=1, ix=ix)
    b = store.search("B", vecs[:3], k=1, ix=ix)
    assert {n.source for h in a for n in h} == {"world-A"}
    assert {n.source for h in b for n in h} == {"world-B"}
    with pytest.raises(UnknownDatastore, match="'C' does not exist"):
        store.search("C", vecs[:1], k=1, ix=ix)


def test_a_datastore_dropped_or_rebuilt_behind_a_searching_store_is_named(tmp_path: Path, vecs: np.ndarray) -> None:
    """search asks for a datastore's existence and size once; another client's drop or rebuild is still named."""
    from tuna.retrieval.store import collection_name

    ix = IndexConfig()
    store = MilvusStore(str(tmp_path / "a.db"))
    _fill(store, "A", vecs)
    store.build_index("A", ix)
    assert store.search("A", vecs[:2], k=1, ix=ix)[0][0].id == "000000000"
    store.client.drop_collection(collection_name("A"))           # as another client would
    _fill(store, "A", vecs[:, :8].copy())                        # rebuilt with 8-d vectors
    store.build_index("A", ix)
    with pytest.raises(DimensionMismatch, match=r"queries are 16-d but datastore 'A' holds 8-d"):
        store.search("A", vecs[:1], k=1, ix=ix)
    assert len(store.search("A", vecs[:1, :8].copy(), k=3, ix=ix)[0]) == 3
    store.client.drop_collection(collection_name("A"))
    with pytest.raises(UnknownDatastore, match="'A' does not exist"):
        store.search("A", vecs[:1, :8].copy(), k=1, ix=ix)
    store.close()


def test_dimension_mismatch_names_both_sizes(tmp_path: Path, vecs: np.ndarray) -> None:
    store = MilvusStore(str(tmp_path / "a.db"))
    _fill(store, "A", vecs)
    with pytest.raises(DimensionMismatch, match=r"holds 16-d vectors but the encoder makes 32-d"):
        store.ensure("A", 32)
    store.build_index("A", IndexConfig())
    with pytest.raises(DimensionMismatch, match=r"queries are 8-d"):
        store.search("A", np.zeros((1, 8), np.float32), k=1, ix=IndexConfig())


def test_unreachable_server_retries_then_one_line_naming_the_uri() -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(DatastoreUnavailable) as err:
        MilvusStore(uri, retries=2, backoff_seconds=0.01, timeout=1)
    msg = str(err.value)
    assert uri in msg and "3 attempts" in msg and "\n" not in msg


def test_resume_after_the_index_was_built_reopens_a_released_collection(tmp_path: Path, vecs: np.ndarray) -> None:
    """A build killed after build_index: the reopened collection starts released; ids() must still work."""
    store = MilvusStore(str(tmp_path / "a.db"))
    _fill(store, "A", vecs)
    store.build_index("A", IndexConfig())
    store.close()
    again = MilvusStore(str(tmp_path / "a.db"))
    assert len(again.ids("A")) == 500
    _fill(again, "A", vecs[:10])
    again.build_index("A", IndexConfig())
    assert again.count("A") == 500
