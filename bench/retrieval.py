"""Retrieval benchmark: Milvus Lite (our datastore path), a real Milvus server, faiss-cpu (IndexFlatIP,
IndexHNSWFlat) and numpy brute force, on the same vectors, in one run on one machine.

Milvus runs as Milvus Lite (a folder URI) and, when the optional `milvus` wheel is installed
(`pip install -e .[milvus-server]`), as a real Milvus 2.3 standalone started on a free 127.0.0.1 port
for this run (tuna.retrieval.server; the engine users run at scale), each with the recipe's index (HNSW by
default) and with FLAT, its exact index, through the same MilvusStore calls.
Two vector sets: the real world embeddings (datastore A's corpus through the trained encoder) and
N random 512-d unit vectors (default 200k). For each engine: build time (insert + index), batch QPS
over 1,000 queries, single-query p50/p99 latency, recall@10 against exact search. Writes JSON.

    .venv/bin/python bench/retrieval.py --config configs/mini.yaml [--random-rows 200000] [--engines lite,server,faiss]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform as pyplatform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tuna.layout import layout
from tuna.recipe import IndexConfig, load_recipe
from tuna.retrieval.server import MilvusServer, MilvusServerError
from tuna.retrieval.store import MilvusStore

K = 10


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    sims = queries @ base.T
    idx = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, idx, 1), axis=1)
    return np.take_along_axis(idx, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _latency(fn, queries: np.ndarray, n: int) -> tuple[float, float]:
    times = []
    for q in queries[:n]:
        t = time.perf_counter()
        fn(q[None, :])
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def bench_numpy(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, singles: int) -> dict:
    t = time.perf_counter()
    found = exact_topk(base, queries)
    batch = time.perf_counter() - t
    p50, p99 = _latency(lambda q: exact_topk(base, q), queries, singles)
    return {"build_s": 0.0, "batch_qps": len(queries) / batch, "single_p50_ms": p50, "single_p99_ms": p99,
            "recall_at_10": recall(found, truth)}


def bench_faiss(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, singles: int, ix: IndexConfig) -> dict:
    import faiss

    d = base.shape[1]
    t = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, ix.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ix.ef_construction
        index.hnsw.efSearch = max(ix.ef, K)
    index.add(base)
    build = time.perf_counter() - t
    t = time.perf_counter()
    _, found = index.search(queries, K)
    batch = time.perf_counter() - t
    p50, p99 = _latency(lambda q: index.search(q, K), queries, singles)
    return {"build_s": build, "batch_qps": len(queries) / batch, "single_p50_ms": p50, "single_p99_ms": p99,
            "recall_at_10": recall(found, truth)}


def bench_milvus(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, singles: int, ix: IndexConfig, uri: str) -> dict:
    """One Milvus engine (a Lite folder or a server URI) through MilvusStore: build (insert + index; on a server
    until every row is indexed), one batched search, single-query latency. The collection is dropped after."""
    store = MilvusStore(uri)
    name = f"bench_{ix.index_type.lower()}"
    store.drop(name)
    ids = [str(i) for i in range(len(base))]
    t = time.perf_counter()
    store.ensure(name, base.shape[1])
    step = 2000
    for s in range(0, len(base), step):
        store.upsert(name, ids[s:s + step], base[s:s + step], [[] for _ in ids[s:s + step]], [""] * len(ids[s:s + step]), "bench")
    insert = time.perf_counter() - t
    store.build_index(name, ix)
    build = time.perf_counter() - t
    t = time.perf_counter()
    hits = store.search(name, queries, K, ix, batch_size=len(queries))
    batch = time.perf_counter() - t
    found = np.array([[int(n.id) for n in h] for h in hits])
    p50, p99 = _latency(lambda q: store.search(name, q, K, ix), queries, singles)
    store.drop(name)
    store.close()
    return {"build_s": build, "insert_rows_per_s": len(base) / insert, "batch_qps": len(queries) / batch,
            "single_p50_ms": p50, "single_p99_ms": p99, "recall_at_10": recall(found, truth)}


def run_set(name: str, base: np.ndarray, queries: np.ndarray, ix: IndexConfig, singles: int, workdir: Path,
            server_uri: str | None, engines: set[str]) -> dict:
    truth = exact_topk(base, queries)
    flat = dataclasses.replace(ix, index_type="FLAT")  # Milvus's exact index: the recall@10 >= 0.99 setting at any dimension
    print(f"[{name}] {base.shape[0]} x {base.shape[1]}, {len(queries)} queries", flush=True)
    res = {"rows": int(base.shape[0]), "dim": int(base.shape[1]), "queries": int(len(queries)), "engines": {}}
    lite = str(workdir / f"bench-{base.shape[0]}-{base.shape[1]}.db")
    kind = ix.index_type.lower()
    runs = [("numpy_bruteforce", "faiss", lambda: bench_numpy(base, queries, truth, singles)),
            ("faiss_flat_ip", "faiss", lambda: bench_faiss("flat", base, queries, truth, singles, ix)),
            ("faiss_hnsw", "faiss", lambda: bench_faiss("hnsw", base, queries, truth, singles, ix))]
    for engine, uri in (("lite", lite), ("server", server_uri)):
        runs += [(f"milvus_{engine}_{kind}", engine, lambda uri=uri: bench_milvus(base, queries, truth, singles, ix, uri))]
        if ix.index_type != "FLAT":
            runs += [(f"milvus_{engine}_flat", engine, lambda uri=uri: bench_milvus(base, queries, truth, singles, flat, uri))]
    for engine, group, fn in runs:
        if group not in engines or (group == "server" and server_uri is None):
            continue
        r = fn()
        res["engines"][engine] = {k: round(v, 4) for k, v in r.items()}
        print(f"  {engine:<20} " + "  ".join(f"{k}={v:.4g}" for k, v in r.items()), flush=True)
    eng = res["engines"]
    peers = [p for p in ("numpy_bruteforce", "faiss_flat_ip", "faiss_hnsw") if p in eng]
    res["ratios_milvus_over"] = {
        mine: {peer: {"batch_qps": round(m["batch_qps"] / eng[peer]["batch_qps"], 4),
                      "single_p50": round(m["single_p50_ms"] / eng[peer]["single_p50_ms"], 2)}
               for peer in peers}
        for mine, m in eng.items() if mine.startswith("milvus_")}
    # The server against Milvus Lite, index for index: >1 batch_qps / build_speed = the server is faster.
    res["ratios_server_over_lite"] = {
        index: {"batch_qps": round(eng[f"milvus_server_{index}"]["batch_qps"] / eng[f"milvus_lite_{index}"]["batch_qps"], 4),
                "single_p50": round(eng[f"milvus_server_{index}"]["single_p50_ms"] / eng[f"milvus_lite_{index}"]["single_p50_ms"], 4),
                "single_p99": round(eng[f"milvus_server_{index}"]["single_p99_ms"] / eng[f"milvus_lite_{index}"]["single_p99_ms"], 4),
                "build_speed": round(eng[f"milvus_lite_{index}"]["build_s"] / eng[f"milvus_server_{index}"]["build_s"], 4),
                "recall_at_10": (eng[f"milvus_server_{index}"]["recall_at_10"], eng[f"milvus_lite_{index}"]["recall_at_10"])}
        for index in (kind, "flat") if f"milvus_server_{index}" in eng and f"milvus_lite_{index}" in eng}
    return res


def world_vectors(cfg_path: str, limit: int) -> np.ndarray:
    from tuna.errors import CorruptSample
    from tuna.formats import iter_web
    from tuna.layout import encoder_path
    from tuna.retrieval.clip import load_encoder
    from tuna.samples import decode_image

    cfg = load_recipe(cfg_path)
    enc = load_encoder(encoder_path(cfg))
    images = []
    for s in iter_web(layout(cfg).world / "web/A"):
        try:
            images.append(decode_image(s.image, s.key))
        except CorruptSample:
            continue
        if len(images) >= limit:
            break
    return enc.embed_images(images)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--random-rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=200, help="single-query latency samples")
    ap.add_argument("--out", default="bench/results/retrieval.json")
    ap.add_argument("--sets", default="world,random512", help="comma-separated: world, random512, random64")
    ap.add_argument("--engines", default="faiss,lite,server", help="comma-separated: faiss (numpy, faiss), lite, server")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. index.ef=512 index.hnsw_m=32")
    args = ap.parse_args()
    cfg = load_recipe(args.config, args.overrides)
    ix = cfg.index
    engines = {x.strip() for x in args.engines.split(",") if x.strip()}
    rng = np.random.default_rng(0)
    results = {"machine": {"python": sys.version.split()[0], "platform": pyplatform.platform()},
               "k": K, "index": {"M": ix.hnsw_m, "efConstruction": ix.ef_construction, "ef": ix.ef}, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        server_uri = None
        if "server" in engines:
            try:
                server = stack.enter_context(MilvusServer(Path(tmp) / "milvus-server"))
            except MilvusServerError as err:
                print(f"no Milvus server engine: {err}", flush=True)
            else:
                server_uri = server.uri
                results["milvus_server"] = {"version": "2.3.5 (PyPI milvus wheel, standalone)", "uri": server.uri,
                                            "start_s": round(server.start_seconds, 1)}
                print(f"Milvus server at {server.uri}, ready in {server.start_seconds:.1f}s", flush=True)
        sets = {x.strip() for x in args.sets.split(",") if x.strip()}
        if "world" in sets:
            vecs = world_vectors(args.config, limit=1_000_000)
            q = rng.choice(len(vecs), size=min(args.queries, len(vecs)), replace=False)
            queries = _unit(vecs[q] + rng.normal(0, 0.02, vecs[q].shape).astype(np.float32))
            results["sets"]["world"] = run_set("world", vecs, queries, ix, args.singles, Path(tmp), server_uri, engines)
        # random512: N x 512 (the random set's own stream: the same vectors with or without the world set);
        # random64: 30k x 64, the world set's shape without its trained encoder.
        for name, rows, dim, seed in (("random512", args.random_rows, 512, 1), ("random64", 30_000, 64, 2)):
            if name in sets:
                rng = np.random.default_rng(seed)
                base = _unit(rng.normal(size=(rows, dim)).astype(np.float32))
                queries = _unit(rng.normal(size=(args.queries, dim)).astype(np.float32))
                results["sets"][name] = run_set(name, base, queries, ix, args.singles, Path(tmp), server_uri, engines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
