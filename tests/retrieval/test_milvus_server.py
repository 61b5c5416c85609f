"""`tuna index` and retrieval against a real Milvus server (the Milvus 2.3 standalone in the PyPI `milvus` wheel)
over http://127.0.0.1:<port>: build (create, upsert, index, flush), search, swap datastores, survive a restart.

`make test-milvus` installs the wheel (extra `milvus-server`) and runs these (~1.6 minutes); without the wheel they
skip with one line naming the install command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from support import SMOKE, World, make_world, quiet
from tuna.cli import main
from tuna.errors import CorruptSample
from tuna.formats import iter_web
from tuna.foundation.clip import run_encoder
from tuna.layout import encoder_path, layout
from tuna.recipe import Recipe, load_recipe
from tuna.retrieval.clip import load_encoder
from tuna.retrieval.datastore import DATASTORES, Retriever, read_manifest, spec_of
from tuna.retrieval.server import MilvusServer, MilvusServerError, free_port, server_executable
from tuna.retrieval.store import MilvusStore, UnknownDatastore
from tuna.samples import decode_image
from tuna.tags.io import load_tags, mine_corpus


def _missing_server() -> str:
    try:
        server_executable()
    except MilvusServerError as err:
        return str(err)
    return ""


pytestmark = [pytest.mark.integration, pytest.mark.milvus_server,
              pytest.mark.skipif(bool(_missing_server()), reason=_missing_server())]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world with its encoder and mined tags: what `tuna index` reads."""
    w = make_world(tmp_path_factory.mktemp("server-inputs"))
    run_encoder(w.cfg, force=True, progress=False, log=quiet)
    for domain in ("A", "B"):
        mine_corpus(w.cfg, domain, progress=False)
    return w


@pytest.fixture(scope="module")
def on_server(inputs: World, milvus_server: MilvusServer, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    """The three datastores built by `tuna index` on the server (index.uri=http://127.0.0.1:<port>), in batches of
    16 rows: a flush every 8 batches leaves several segments for the build to merge."""
    data = tmp_path_factory.mktemp("server-run")
    for sub in ("world", "encoder", "tags"):
        shutil.copytree(inputs.cfg.data_dir / sub, data / sub)
    overrides = [f"run.data_dir={data}", f"index.uri={milvus_server.uri}", "index.batch_size=16"]
    assert main(["index", "--config", str(SMOKE), "--quiet", *overrides]) == 0
    return load_recipe(SMOKE, overrides)


def _vectors(cfg: Recipe, corpus: str, limit: int) -> tuple[list[str], np.ndarray]:
    keys, images = [], []
    for s in iter_web(layout(cfg).world / corpus):
        try:
            if len(s.text()) > cfg.mine.max_caption_chars:
                continue
            images.append(decode_image(s.image, s.key))
        except CorruptSample:
            continue
        keys.append(s.key)
        if len(keys) == limit:
            break
    return keys, load_encoder(encoder_path(cfg)).embed_images(images)


def _ranked(hits: list) -> list[list[tuple[str, float]]]:
    return [[(n.id, round(n.score, 5)) for n in r.neighbours] for r in hits]


def test_tuna_index_builds_every_datastore_on_the_server(on_server: Recipe, milvus_server: MilvusServer) -> None:
    world = json.loads((layout(on_server).world / "manifest.json").read_text())
    store = MilvusStore(milvus_server.uri)
    for name in DATASTORES:
        m = read_manifest(on_server, name)
        assert m is not None and m["uri"] == milvus_server.uri
        total = world["counts"][f"web_{spec_of(on_server, name).corpus}"]
        damaged = len(world["corrupt"]) if spec_of(on_server, name).corpus == "A" else 0
        assert m["rows"] == total - damaged == store.count(name) == len(store.ids(name))
        assert m["index"] == {"type": "HNSW", "metric": "COSINE", "params": {"M": 16, "efConstruction": 64}}
        info = store.index_info(name)
        assert info["state"] == "Finished" and info["indexed_rows"] == m["rows"]  # built, not pending
        assert len(store.segments(name)[0]) == 1   # the flushes' segments (batches of 16 rows) merged into one
        assert not layout(on_server).milvus_lite(name).exists()  # nothing went to a Milvus Lite folder
    store.close()


def test_an_up_to_date_datastore_is_skipped_and_rebuild_keeps_one_row_per_id(on_server: Recipe, milvus_server: MilvusServer,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["index", "--config", str(SMOKE), "--datastore", "B", f"run.data_dir={on_server.data_dir}", f"index.uri={milvus_server.uri}",
            "index.batch_size=16"]   # as built (the batch size is part of what a datastore was built with)
    rows = read_manifest(on_server, "B")["rows"]
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    assert main([*args, "--rebuild", "--quiet"]) == 0
    store = MilvusStore(milvus_server.uri)
    assert read_manifest(on_server, "B")["rows"] == rows == store.count("B") == len(store.ids("B"))
    store.close()


def test_a_build_merges_its_flushed_segments_and_serves_the_merged_one(on_server: Recipe,
                                                                     milvus_server: MilvusServer) -> None:
    """Three flushes leave three segments; build_index merges them into one, indexes it and waits until the server
    searches that one (measured on mini's datastore A: 15 segments -> 1 made 160 queries 4.4x faster)."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"row{i}" for i in range(60)]
    store = MilvusStore(milvus_server.uri)
    assert store.ensure("merge", 8)
    for start in (0, 20, 40):
        store.upsert("merge", ids[start:start + 20], vectors[start:start + 20], [["tag"]] * 20, ["c"] * 20, "test")
        store.flush("merge")
    assert len(store.segments("merge")[0]) == 3
    store.build_index("merge", on_server.index)
    stored, loaded = store.segments("merge")
    print(stored, loaded)
    assert len(stored) == 1 and loaded == stored and store.count("merge") == 60
    hits = store.search("merge", vectors, 1, on_server.index)
    assert [h[0].id for h in hits] == ids   # every row is still there, found by its own vector
    store.drop("merge")
    store.close()


def test_each_image_retrieves_itself_with_its_own_tags(on_server: Recipe) -> None:
    keys, vecs = _vectors(on_server, "web/A", 200)
    tags = load_tags(on_server.data_dir / "tags/A/tags.parquet")
    retriever = Retriever(on_server)
    got = retriever.retrieve("A", vecs, k=5)
    assert len(got) == len(keys) and all(len(r.neighbours) == 5 for r in got)
    own = [r for key, r in zip(keys, got) if r.neighbours[0].id == key]
    assert len(own) >= 0.9 * len(keys)  # exact duplicates aside, the top hit is the image itself
    assert all(r.neighbours[0].values == tags[r.neighbours[0].id] for r in own)
    assert all(r.neighbours[0].score == pytest.approx(1.0, abs=1e-3) for r in own)
    retriever.close()


def test_swap_datastores_per_call_on_one_connection(on_server: Recipe) -> None:
    _, vecs = _vectors(on_server, "web/B", 20)
    retriever = Retriever(on_server)
    from_b = retriever.retrieve("B", vecs, k=3)
    from_a = retriever.retrieve("A", vecs, k=3)
    caps = retriever.retrieve("A_captions", vecs, k=3)
    assert len(retriever._stores) == 1  # one server URI: one connection serves every datastore
    assert {n.source for r in from_b for n in r.neighbours} == {"world-B"}
    assert {n.source for r in from_a for n in r.neighbours} == {"world-A"}
    assert all(n.values == [n.caption] for r in caps for n in r.neighbours)
    assert retriever.retrieve("B", vecs, k=3) == from_b  # and back again, same answers
    with pytest.raises(UnknownDatastore, match="unknown datastore 'C'"):
        retriever.retrieve("C", vecs, k=3)
    retriever.close()


def test_the_server_down_is_one_line_naming_the_uri_and_the_fix(inputs: World, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("world", "encoder", "tags"):
        shutil.copytree(inputs.cfg.data_dir / sub, tmp_path / sub)
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    code = main(["index", "--config", str(SMOKE), "--datastore", "B", "--quiet", f"run.data_dir={tmp_path}",
                 f"index.uri={uri}", "index.retries=1", "index.backoff_seconds=0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert uri in err[0] and "2 attempts" in err[0] and "start Milvus or fix index.uri" in err[0]


def test_datastores_survive_a_server_restart(on_server: Recipe, milvus_server: MilvusServer) -> None:
    """Stop the server process, start it again on the same data folder: the same rows, the same answers."""
    _, vecs = _vectors(on_server, "web/A", 50)
    retriever = Retriever(on_server)
    before = {name: _ranked(retriever.retrieve(name, vecs, k=5)) for name in DATASTORES}
    retriever.close()
    pid = milvus_server.process.pid
    milvus_server.stop()
    assert not Path(f"/proc/{pid}").exists()
    milvus_server.start()
    assert milvus_server.process.pid != pid
    retriever = Retriever(on_server)
    after = {name: _ranked(retriever.retrieve(name, vecs, k=5)) for name in DATASTORES}
    retriever.close()
    assert after == before
    store = MilvusStore(milvus_server.uri)
    assert {name: store.count(name) for name in DATASTORES} == {name: read_manifest(on_server, name)["rows"] for name in DATASTORES}
    store.close()
