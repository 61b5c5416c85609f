"""The Milvus datastore: the only module that talks to Milvus (pymilvus).

A *datastore* is a named Milvus collection of (id, image embedding, values, caption, source) rows,
where ``values`` are the tags mined from the caption (or, for the captions ablation, the caption
itself). Locally each datastore lives in its own Milvus Lite folder (a DVC output); on a cluster all
datastores are collections of one Milvus standalone/cluster reached by ``http://host:19530`` — the
same code. Retrieval takes the datastore name per call, so a request can swap datastores without a
restart. Every search is batched: one call per batch of query vectors, never one per image.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tuna.errors import ConfigError, DatastoreUnavailable, TunaError
from tuna.layout import layout
from tuna.recipe import IndexConfig, Recipe

T = TypeVar("T")
MAX_VALUES = 64          # tags (or captions) kept per row
MAX_VALUE_CHARS = 1024   # per tag / caption
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class DimensionMismatch(TunaError):
    """The encoder's embedding size differs from an existing collection's vector size."""


class UnknownDatastore(TunaError, KeyError):
    """A datastore name that does not exist; maps to gRPC INVALID_ARGUMENT."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Neighbour:
    """One retrieved row: its id, similarity score, values (tags or a caption), caption and source."""

    id: str
    score: float
    values: list[str]
    caption: str
    source: str


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "unix:"))


def datastore_uri(cfg: Recipe, name: str) -> str:
    """The URI holding datastore ``name``: index.uri when set (one server for all), else its Milvus Lite folder."""
    return cfg.index.uri or str(layout(cfg).milvus_lite(name))


def collection_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"datastore name {name!r}: use letters, digits and underscores, starting with a letter")
    return f"tuna_{name}"


def _quiet_pymilvus() -> None:
    import pymilvus  # noqa: F401  (importing it sets its loggers' levels: quiet them after)

    # pymilvus logs every failed RPC with a traceback; our errors carry the message instead.
    # Milvus Lite's in-process gRPC server logs "Method not implemented" (AllocTimestamp) when a
    # query iterator falls back to its portable path; that is expected, not an error.
    for name in ("pymilvus", "pymilvus.decorators", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class MilvusStore:
    """A connection to one Milvus URI (a Lite folder or a server), with retries and batched calls."""

    def __init__(self, uri: str, token: str | None = None, retries: int = 5, backoff_seconds: float = 0.5,
                 timeout: float = 10.0) -> None:
        _quiet_pymilvus()
        self.uri = uri
        self.retries = retries
        self.backoff = backoff_seconds
        self._token = token
        self._timeout = timeout
        self._loaded: set[str] = set()
        self._dims: dict[str, int] = {}    # vector size of each datastore a search has checked (see search)
        if not _is_remote(uri):
            try:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatastoreUnavailable(f"cannot create the Milvus Lite folder {uri!r} ({err.strerror}); "
                                           f"set index.uri or run.data_dir to a writable place") from None
        self.client = self._retry("connect", self._connect)

    @classmethod
    def for_datastore(cls, cfg: Recipe, name: str) -> MilvusStore:
        ix: IndexConfig = cfg.index
        token = os.environ.get(ix.token_env) or None
        return cls(datastore_uri(cfg, name), token=token, retries=ix.retries, backoff_seconds=ix.backoff_seconds)

    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        kwargs: dict[str, Any] = {"uri": self.uri, "timeout": self._timeout}
        if self._token:
            kwargs["token"] = self._token
        return MilvusClient(**kwargs)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; on connection failures retry with exponential backoff, then raise DatastoreUnavailable."""
        from pymilvus.exceptions import MilvusException

        delay = self.backoff
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except MilvusException as err:
                if not _is_connection_error(err):
                    raise
                last = err
            except (ConnectionError, OSError) as err:
                last = err
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise DatastoreUnavailable(
            f"Milvus at {self.uri} is unreachable ({what} failed after {self.retries + 1} attempts: "
            f"{_short(last)}); start Milvus or fix index.uri") from None

    # ----------------------------------------------------------------------------------- collections

    def has(self, name: str) -> bool:
        return bool(self._retry("has_collection", lambda: self.client.has_collection(collection_name(name))))

    def dim(self, name: str) -> int:
        desc = self._retry("describe", lambda: self.client.describe_collection(collection_name(name)))
        for f in desc["fields"]:
            if f["name"] == "vector":
                return int(f["params"]["dim"])
        raise TunaError(f"collection {collection_name(name)} at {self.uri} has no 'vector' field; it was not made by tuna index")

    def ensure(self, name: str, dim: int) -> bool:
        """Create datastore ``name`` for ``dim``-d vectors if missing; True if created.

        An existing collection with another vector size is refused (DimensionMismatch) with both numbers.
        """
        from pymilvus import DataType, MilvusClient

        if self.has(name):
            have = self.dim(name)
            if have != dim:
                raise DimensionMismatch(
                    f"datastore {name!r} at {self.uri} holds {have}-d vectors but the encoder makes {dim}-d "
                    f"vectors; rebuild it (tuna index --rebuild) or use the encoder it was built with")
            return False
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("values", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_VALUES,
                         max_length=MAX_VALUE_CHARS)
        schema.add_field("caption", DataType.VARCHAR, max_length=4 * MAX_VALUE_CHARS)
        schema.add_field("source", DataType.VARCHAR, max_length=128)
        self._retry("create_collection", lambda: self.client.create_collection(collection_name(name), schema=schema))
        return True

    def drop(self, name: str) -> None:
        self._dims.pop(name, None)
        if self.has(name):
            self._retry("drop_collection", lambda: self.client.drop_collection(collection_name(name)))

    def count(self, name: str) -> int:
        stats = self._retry("stats", lambda: self.client.get_collection_stats(collection_name(name)))
        return int(stats["row_count"])

    def ids(self, name: str) -> set[str]:
        """Every row id of datastore ``name`` (what a resumed build skips)."""
        if not self.has(name):
            return set()
        if _is_remote(self.uri) and self.index_info(name) is None:
            if self.count(name) == 0:
                return set()
            # A server loads (and queries) only indexed collections: a build killed before build_index is not
            # resumable there. (Indexing and loading at creation was tried: searches then differ after a restart.)
            raise TunaError(f"collection {collection_name(name)} at {self.uri} has rows but no vector index, so the "
                            f"server cannot load it; rebuild it (tuna index --rebuild)")
        self._ensure_loaded(name)
        if _is_remote(self.uri):
            return self._server_ids(name)
        out: set[str] = set()
        it = self._retry("query", lambda: self.client.query_iterator(collection_name(name), batch_size=4096,
                                                                     filter="", output_fields=["id"]))
        while True:
            page = it.next()
            if not page:
                break
            out.update(r["id"] for r in page)
        it.close()
        return out

    def _server_ids(self, name: str, page_size: int = 16_384) -> set[str]:
        """Every id on a server, paged by primary key with strong consistency. (pymilvus 3.0's query iterator
        misses rows upserted a moment before on a Milvus 2.3 server: it falls back to a client-side timestamp.)"""
        coll = collection_name(name)
        out: set[str] = set()
        expr = 'id != ""'
        while True:
            page = self._retry("query", lambda expr=expr: self.client.query(
                coll, filter=expr, output_fields=["id"], limit=page_size, consistency_level="Strong"))
            out.update(r["id"] for r in page)
            if len(page) < page_size:
                break
            last = max(r["id"] for r in page).replace("\\", "\\\\").replace('"', '\\"')  # a server returns the lowest keys first
            expr = f'id > "{last}"'
        total = self._retry("count", lambda: self.client.query(coll, filter="", output_fields=["count(*)"],
                                                                consistency_level="Strong"))[0]["count(*)"]
        if total != len(out):
            raise TunaError(f"Milvus at {self.uri} listed {len(out)} ids of {coll} but counts {total} rows; "
                            f"rebuild it (tuna index --rebuild)")
        return out

    # ------------------------------------------------------------------------------------------ rows

    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray, values: Sequence[Sequence[str]],
               captions: Sequence[str], source: str) -> int:
        """Insert or replace rows (one per id: re-running a build never duplicates). vectors: (N, dim)."""
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(f"vectors must be (N={len(ids)}, dim), got {tuple(vectors.shape)}")
        rows = [{"id": i, "vector": v.tolist(), "values": [x[:MAX_VALUE_CHARS] for x in vals[:MAX_VALUES]],
                 "caption": c[: 4 * MAX_VALUE_CHARS], "source": source}
                for i, v, vals, c in zip(ids, vectors.astype(np.float32), values, captions)]
        if not rows:
            return 0
        res = self._retry("upsert", lambda: self.client.upsert(collection_name(name), rows))
        return int(res["upsert_count"])

    def flush(self, name: str) -> None:
        self._retry("flush", lambda: self.client.flush(collection_name(name)))

    def build_index(self, name: str, ix: IndexConfig, wait_seconds: float = 600.0) -> dict[str, Any]:
        """Flush, (re)build the vector index described by ``ix`` if it differs, load; returns the index description.

        On a server this also waits (up to ``wait_seconds``) until the background index build has every row, then
        merges the build's segments (:meth:`compact`)."""
        coll = collection_name(name)
        self.flush(name)
        want = index_params(ix)
        current = self.index_info(name)
        if current and (current.get("index_type") != ix.index_type or current.get("metric_type") != ix.metric
                        or current.get("params", {}) != want):
            self._retry("release", lambda: self.client.release_collection(coll))
            self._loaded.discard(name)
            self._retry("drop_index", lambda: self.client.drop_index(coll, "vector"))
            current = None
        if not current:
            self._create_index(name, ix)
        self._retry("load", lambda: self.client.load_collection(coll))
        self._loaded.add(name)
        if _is_remote(self.uri):
            self._wait_indexed(name, wait_seconds)
            self.compact(name, wait_seconds)
        return self.index_info(name) or {}

    def compact(self, name: str, wait_seconds: float = 600.0) -> int:
        """Merge a server's segments of datastore ``name`` into as few as its size allows, indexed and loaded, and
        return how many are loaded; Milvus Lite has nothing to merge (returns 0).

        A build flushes every few batches (what a killed build keeps), which leaves one small segment per flush, and
        a search visits every segment: measured on mini's datastore A (29,941 rows, HNSW ef 64, Milvus 2.3.5
        standalone), 15 segments of ~2,048 rows searched 160 queries in 70 ms, the one merged segment in 16 ms.
        Waits (up to ``wait_seconds``) for the merge, its index and the server to serve the merged segment."""
        if not _is_remote(self.uri):
            return 0
        coll = collection_name(name)
        deadline = time.monotonic() + wait_seconds
        job = self._retry("compact", lambda: self.client.compact(coll))
        while self._retry("compaction state", lambda: self.client.get_compaction_state(job)) != "Completed":
            if time.monotonic() > deadline:
                raise TunaError(f"Milvus at {self.uri} did not finish merging the segments of {coll} in "
                                f"{wait_seconds:.0f}s; the server is overloaded or stuck, check its log and run tuna "
                                f"index again")
            time.sleep(0.2)
        self._wait_indexed(name, max(1.0, deadline - time.monotonic()))
        # The server swaps the merged segment in for the old ones in the background; searches are right meanwhile.
        while True:
            stored, loaded = self.segments(name)
            if loaded == stored or time.monotonic() > deadline:
                return len(loaded)
            time.sleep(0.2)

    def segments(self, name: str) -> tuple[set[int], set[int]]:
        """A server's segment ids of datastore ``name``: (stored, loaded for search); Milvus Lite: two empty sets."""
        if not _is_remote(self.uri):
            return set(), set()
        coll = collection_name(name)
        stored = self._retry("segments", lambda: self.client.list_persistent_segments(coll))
        loaded = self._retry("segments", lambda: self.client.list_loaded_segments(coll))
        return {x.segment_id for x in stored}, {x.segment_id for x in loaded}

    def _create_index(self, name: str, ix: IndexConfig) -> None:
        params = self.client.prepare_index_params()
        # Milvus Lite honours build parameters only when nested under "params" (a server takes them so too).
        params.add_index(field_name="vector", index_type=ix.index_type, metric_type=ix.metric, params={"params": index_params(ix)})
        self._retry("create_index", lambda: self.client.create_index(collection_name(name), params))

    def _wait_indexed(self, name: str, wait_seconds: float) -> None:
        """Wait until a server has indexed every flushed row (it builds indexes in the background after a flush)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            info = self.index_info(name) or {}
            if info.get("state") == "Finished" and int(info.get("pending_index_rows", 0)) == 0:
                return
            if info.get("state") == "Failed":
                raise TunaError(f"Milvus at {self.uri} failed to build the {info.get('index_type')} index of "
                                f"{collection_name(name)}: {info.get('index_state_fail_reason', '')}; check the server log")
            if time.monotonic() > deadline:
                raise TunaError(f"Milvus at {self.uri} indexed {info.get('indexed_rows')} of {info.get('total_rows')} rows "
                                f"of {collection_name(name)} in {wait_seconds:.0f}s; the server is overloaded or stuck, "
                                f"check its log and run tuna index again (the build resumes)")
            time.sleep(0.2)

    def _ensure_loaded(self, name: str) -> None:
        """Load an indexed collection once per connection: a reopened one starts released, and
        searches and queries on a released collection fail (an unindexed one is queryable as is)."""
        if name in self._loaded or self.index_info(name) is None:
            return
        self._retry("load", lambda: self.client.load_collection(collection_name(name)))
        self._loaded.add(name)

    def index_info(self, name: str) -> dict[str, Any] | None:
        names = self._retry("list_indexes", lambda: self.client.list_indexes(collection_name(name)))
        if "vector" not in names:
            return None
        return dict(self._retry("describe_index", lambda: self.client.describe_index(collection_name(name), "vector")))

    # ---------------------------------------------------------------------------------------- search

    def search(self, name: str, vectors: np.ndarray, k: int, ix: IndexConfig, filter: str = "",
               batch_size: int | None = None) -> list[list[Neighbour]]:
        """Top-``k`` neighbours of each query row. vectors: (N, dim); one Milvus call per batch of queries.

        The datastore's existence and vector size are asked once per connection, not per call (two round trips of a
        served request's three); a search that then fails for another reason than the connection asks again, so a
        datastore dropped or rebuilt meanwhile is still named as missing or of another size."""
        from pymilvus.exceptions import MilvusException

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"query vectors must be (N, dim), got shape {tuple(vectors.shape)}")
        checked = name in self._dims
        dim = self._checked_dim(name)
        if vectors.shape[1] != dim:
            raise DimensionMismatch(f"queries are {vectors.shape[1]}-d but datastore {name!r} holds {dim}-d vectors")
        self._ensure_loaded(name)
        params = search_params(ix)
        step = batch_size or ix.batch_size
        out: list[list[Neighbour]] = []
        for start in range(0, len(vectors), step):
            batch = vectors[start:start + step].tolist()
            try:
                hits = self._retry("search", lambda batch=batch: self.client.search(
                    collection_name(name), data=batch, limit=k, filter=filter, search_params=params,
                    output_fields=["values", "caption", "source"]))
            except MilvusException:
                self._dims.pop(name, None)
                self._loaded.discard(name)
                if not checked:
                    raise
                return self.search(name, vectors, k, ix, filter, batch_size)   # checked afresh: names what changed
            out.extend([Neighbour(id=str(h["id"]), score=float(h["distance"]), values=list(h["entity"]["values"]),
                                  caption=h["entity"]["caption"], source=h["entity"]["source"]) for h in q] for q in hits)
        return out

    def _checked_dim(self, name: str) -> int:
        """The vector size of existing datastore ``name`` (UnknownDatastore if it is missing), remembered."""
        if name not in self._dims:
            if not self.has(name):
                raise UnknownDatastore(f"datastore {name!r} does not exist at {self.uri}; build it with tuna index")
            self._dims[name] = self.dim(name)
        return self._dims[name]

    def close(self) -> None:
        """Close the connection; for a Milvus Lite file also stop its in-process server, which holds the
        file's lock (until then no other process, e.g. a training rank, can open the datastore)."""
        try:
            self.client.close()
        except Exception:  # closing a dead connection must not mask the error being reported
            pass
        if self.uri.endswith(".db"):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)


def index_params(ix: IndexConfig) -> dict[str, Any]:
    """Build parameters for the configured index type."""
    if ix.index_type == "HNSW":
        return {"M": ix.hnsw_m, "efConstruction": ix.ef_construction}
    if ix.index_type == "IVF_FLAT":
        return {"nlist": ix.nlist}
    return {}


def search_params(ix: IndexConfig) -> dict[str, Any]:
    if ix.index_type == "HNSW":
        return {"metric_type": ix.metric, "params": {"ef": ix.ef}}
    if ix.index_type == "IVF_FLAT":
        return {"metric_type": ix.metric, "params": {"nprobe": ix.nprobe}}
    return {"metric_type": ix.metric, "params": {}}


def _is_connection_error(err: Exception) -> bool:
    text = str(err).lower()
    return any(s in text for s in ("fail connecting", "unavailable", "connection refused", "deadline exceeded",
                                   "connect failed", "server unavailable", "failed to connect"))


def _short(err: Exception | None) -> str:
    msg = getattr(err, "message", None) or str(err)
    return " ".join(str(msg).split())[:160]
