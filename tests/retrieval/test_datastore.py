"""`tuna index` end to end on a smoke world: real encoder, real spaCy tags, real Milvus Lite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tuna.cli import main
from tuna.errors import CorruptSample, TunaError
from tuna.formats import iter_web
from tuna.foundation.clip import train_encoder
from tuna.layout import encoder_path, layout
from tuna.recipe import Recipe, load_recipe
from tuna.retrieval.clip import load_encoder
from tuna.retrieval.datastore import DATASTORES, Retriever, build_datastore, read_manifest, spec_of
from tuna.retrieval.store import DimensionMismatch, MilvusStore, UnknownDatastore
from tuna.samples import decode_image
from tuna.tags.io import load_tags, mine_corpus
from tuna.world.generate import generate_world

pytestmark = pytest.mark.integration
from support import DAMAGE_KIND, quiet  # noqa: E402

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
KIND = DAMAGE_KIND
_quiet = quiet


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    """World -> encoder -> tags -> the three datastores, for one smoke run."""
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path_factory.mktemp('index')}"])
    generate_world(cfg, progress=False, log=_quiet)
    train_encoder(cfg, progress=False, log=_quiet)
    for domain in ("A", "B"):
        mine_corpus(cfg, domain, progress=False)
    for name in DATASTORES:
        build_datastore(cfg, name, progress=False, log=_quiet)
    return cfg


def _good_samples(cfg: Recipe, corpus: str) -> list:
    out = []
    for s in iter_web(layout(cfg).world / corpus):
        try:
            s.text()
            if len(s.text()) > cfg.mine.max_caption_chars:
                continue
            out.append((s.key, decode_image(s.image, s.key)))
        except CorruptSample:
            continue
    return out


def test_rows_and_quarantine_match_the_corpus(built: Recipe) -> None:
    world = json.loads((layout(built).world / "manifest.json").read_text())
    for name, total in (("A", world["counts"]["web_A"]), ("B", world["counts"]["web_B"]), ("A_captions", world["counts"]["web_A"])):
        m = read_manifest(built, name)
        assert m is not None
        damaged = world["corrupt"] if spec_of(built, name).corpus == "A" else []
        assert m["rows"] == total - len(damaged)
        assert m["skipped"] == len(damaged)
        q = [json.loads(line) for line in (layout(built).datastore(name) / "quarantine.jsonl").read_text().splitlines()]
        assert sorted((r["key"], r["kind"]) for r in q) == sorted((d["key"], KIND[d["kind"]]) for d in damaged)


def test_manifest_records_lineage(built: Recipe) -> None:
    m = read_manifest(built, "A")
    enc = load_encoder(encoder_path(built))
    assert m["encoder"] == {"path": enc.path, "fingerprint": enc.fingerprint, "dim": enc.dim}
    assert len(m["corpus"]["hash"]) == 16 and m["tags_hash"] and m["values"] == "tags"
    assert m["index"] == {"type": "HNSW", "metric": "COSINE", "params": {"M": 16, "efConstruction": 64}}
    assert m["created_at"].endswith("+00:00")
    assert read_manifest(built, "A_captions")["values"] == "captions"


def test_each_image_retrieves_itself_with_its_own_tags(built: Recipe) -> None:
    samples = _good_samples(built, "web/A")
    enc = load_encoder(encoder_path(built))
    vecs = enc.embed_images([img for _, img in samples])
    tags = load_tags(built.data_dir / "tags/A/tags.parquet")
    retriever = Retriever(built)
    got = retriever.retrieve("A", vecs, k=5)
    assert len(got) == len(samples) and all(len(r.neighbours) == 5 for r in got)
    self_top = np.mean([r.neighbours[0].id == key or r.neighbours[0].score > 0.9999 for (key, _), r in zip(samples, got)])
    assert self_top >= 0.98
    own = [r for (key, _), r in zip(samples, got) if r.neighbours[0].id == key]
    assert len(own) >= 0.9 * len(samples)  # exact duplicates aside, the top hit is the image itself
    assert all(r.neighbours[0].values == tags[r.neighbours[0].id] for r in own)
    # values are ranked by a similarity-weighted vote over the neighbours
    scores = [s for _, s in got[0].values]
    assert scores == sorted(scores, reverse=True) and len(got[0].values) <= built.model.num_tags
    retriever.close()


def test_region_retrieval_adds_one_new_tag_per_cell_after_the_whole_images(built: Recipe, tmp_path: Path) -> None:
    from tuna.retrieval.attach import attach_tags

    samples = _good_samples(built, "web/A")[:12]
    images = [img for _, img in samples]
    enc = load_encoder(encoder_path(built))
    vecs = enc.embed_images(images, batch_size=5, region_grid=2)
    assert vecs.shape == (12, 5, enc.dim) and np.allclose(vecs[:, 0], enc.embed_images(images), atol=1e-6)
    assert np.allclose(np.linalg.norm(vecs, axis=-1), 1, atol=1e-5)
    retriever = Retriever(built)
    whole = retriever.retrieve_tags("A", vecs[:, 0], 9)
    merged = retriever.retrieve_tags("A", vecs, 9)
    cells = retriever.retrieve_tags("A", vecs[:, 1:].reshape(48, enc.dim), 9)
    retriever.close()
    for i, (w, m) in enumerate(zip(whole, merged)):
        assert [v for v, _ in m[:min(5, len(w))]] == [v for v, _ in w[:5]] and len(m) <= 9 and len({v for v, _ in m}) == len(m)
        new = [c[0][0] for c in cells[4 * i:4 * i + 4] if c and c[0][0] not in {v for v, _ in w[:5]}]
        assert set(new) <= {v for v, _ in m}, (i, w, m, cells[4 * i:4 * i + 4])
    assert any(len(m) > len(w[:5]) for w, m in zip(whole, merged))   # some cell names something the whole image did not
    # attach_tags (training and eval) retrieves the same, under a cache key of its own
    cfg = load_recipe(SMOKE, [f"run.data_dir={built.data_dir}", "model.region_grid=2", "model.num_tags=9"])
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for key, img in samples:
        paths.append(folder / f"{key}.png")
        img.save(paths[-1])
    attached = attach_tags(cfg, paths, tmp_path / "cache.json", "tags", "A", log=_quiet)
    again = [attached[p.name] for p in paths]
    assert [[v for v, _ in row] for row in again] == [[v for v, _ in row] for row in merged]
    assert json.loads((tmp_path / "cache.json").read_text())["key"]["region_grid"] == 2


def test_swap_datastore_per_call_without_restart(built: Recipe) -> None:
    samples = _good_samples(built, "web/B")[:20]
    enc = load_encoder(encoder_path(built))
    vecs = enc.embed_images([img for _, img in samples])
    retriever = Retriever(built)
    from_b = retriever.retrieve("B", vecs, k=3)
    from_a = retriever.retrieve("A", vecs, k=3)
    caps = retriever.retrieve("A_captions", vecs, k=3)
    assert {n.source for r in from_b for n in r.neighbours} == {"world-B"}
    assert {n.source for r in from_a for n in r.neighbours} == {"world-A"}
    assert all(n.values == [n.caption] for r in caps for n in r.neighbours)
    with pytest.raises(UnknownDatastore, match="unknown datastore 'C'"):
        retriever.retrieve("C", vecs, k=3)
    retriever.close()


def test_pulled_snapshot_answers_identically(built: Recipe, tmp_path: Path) -> None:
    """DVC restores the datastore folder byte for byte; the copy must give the same search results."""
    samples = _good_samples(built, "web/A")[:50]
    vecs = load_encoder(encoder_path(built)).embed_images([img for _, img in samples])
    before = Retriever(built).retrieve("A", vecs, k=5)
    other = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    shutil.copytree(layout(built).datastore("A"), layout(other).datastore("A"))
    after = Retriever(other).retrieve("A", vecs, k=5)
    assert [[(n.id, round(n.score, 5)) for n in r.neighbours] for r in after] == \
           [[(n.id, round(n.score, 5)) for n in r.neighbours] for r in before]


def test_killed_build_resumes_to_one_row_per_id(built: Recipe, tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "index.batch_size=16"])
    for sub in ("world", "encoder", "tags"):
        shutil.copytree(built.data_dir / sub, cfg.data_dir / sub)
    cmd = [sys.executable, "-m", "tuna.cli", "index", "--config", str(SMOKE), "--datastore", "A", "--quiet",
           f"run.data_dir={tmp_path}", "index.batch_size=16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = layout(cfg).milvus_lite("A")
    deadline = time.time() + 60
    while not db.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if read_manifest(cfg, "A") is None:  # killed before the end: no manifest marks it unfinished
        assert proc.returncode == -signal.SIGKILL
    m = build_datastore(cfg, "A", progress=False, log=_quiet)
    store = MilvusStore(str(db))
    ids = store.ids("A")
    assert store.count("A") == len(ids) == m["rows"] == read_manifest(built, "A")["rows"]
    store.close()


def test_dimension_mismatch_is_refused_with_both_numbers(built: Recipe, tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    for sub in ("world", "encoder", "tags"):
        shutil.copytree(built.data_dir / sub, cfg.data_dir / sub)
    store = MilvusStore(str(layout(cfg).milvus_lite("A")))
    store.ensure("A", 7)
    store.close()
    dim = load_encoder(encoder_path(cfg)).dim
    with pytest.raises(DimensionMismatch, match=f"holds 7-d vectors but the encoder makes {dim}-d"):
        build_datastore(cfg, "A", progress=False, log=_quiet)


def test_missing_inputs_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    with pytest.raises(TunaError, match="run `tuna world"):
        build_datastore(cfg, "A", progress=False, log=_quiet)
    generate_world(cfg, progress=False, log=_quiet)
    with pytest.raises(TunaError, match="run `tuna mine"):
        build_datastore(cfg, "A", progress=False, log=_quiet)
    assert main(["index", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "--datastore", "A", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tuna mine" in err[0]


def _copy_inputs(built: Recipe, tmp_path: Path) -> Recipe:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    for sub in ("world", "encoder", "tags"):
        shutil.copytree(built.data_dir / sub, cfg.data_dir / sub)
    return cfg


def test_a_finished_or_foreign_collection_is_rebuilt_never_resumed(built: Recipe, tmp_path: Path) -> None:
    """Resuming is only for an unfinished build of the same inputs: a row of another build never survives."""
    from tuna.retrieval.datastore import BUILDING_FILE

    cfg = _copy_inputs(built, tmp_path)
    rows = build_datastore(cfg, "B", progress=False, log=_quiet)["rows"]
    dim = load_encoder(encoder_path(cfg)).dim
    for stale in ("finished", "foreign marker"):
        store = MilvusStore(str(layout(cfg).milvus_lite("B")))
        store.upsert("B", ["stale-row"], np.ones((1, dim), dtype=np.float32), [["stale"]], ["stale"], "test")
        store.close()
        if stale == "foreign marker":  # an unfinished build of other inputs (say, an older encoder)
            (layout(cfg).datastore("B") / "manifest.json").unlink()
            (layout(cfg).datastore("B") / BUILDING_FILE).write_text('{"encoder": "older"}\n')
        lines: list[str] = []
        m = build_datastore(cfg, "B", progress=False, log=lines.append)
        store = MilvusStore(str(layout(cfg).milvus_lite("B")))
        assert "stale-row" not in store.ids("B") and m["rows"] == rows == store.count("B"), stale
        store.close()
        assert not any("resuming" in line for line in lines) and not (layout(cfg).datastore("B") / BUILDING_FILE).exists()


def test_index_step_skips_up_to_date_datastores_unless_rebuild_or_force(built: Recipe, tmp_path: Path) -> None:
    from tuna.steps import Options, execute

    cfg = _copy_inputs(built, tmp_path)
    first = execute("index", cfg, Options(datastores=("B",), progress=False, log=_quiet))
    assert first.status == "built" and first.meta["datastores"]["B"]["rows"] == read_manifest(built, "B")["rows"]
    assert execute("index", cfg, Options(datastores=("B",), progress=False)).status == "up to date"
    for flag in ("rebuild", "force"):
        again = execute("index", cfg, Options(datastores=("B",), progress=False, log=_quiet, **{flag: True}))
        assert again.status == "built" and again.manifest["B"]["rows"] == first.manifest["B"]["rows"], flag
    with pytest.raises(UnknownDatastore, match="unknown datastore 'C'"):
        execute("index", cfg, Options(datastores=("C",)))


def test_a_new_domain_is_a_recipe_entry_not_a_code_change(built: Recipe, tmp_path: Path) -> None:
    """A user's own web corpus (img2dataset shards elsewhere) declared under data.corpora and datastores:, with its
    own index settings: `tuna mine` / `tuna index` build it, retrieval reads it by name, nothing else changes."""
    from tuna.steps import Options, execute

    shards = tmp_path / "crawl"
    shutil.copytree(layout(built).world / "web" / "B", shards)   # any WebDataset folder; here domain B's shards
    cfg = _copy_inputs(built, tmp_path / "run")
    cfg = load_recipe(SMOKE, [f"run.data_dir={cfg.data_dir}", f"data.corpora.shop.path={shards}",
                              "datastores.shop.corpus=shop", "datastores.shop.index.index_type=FLAT"])
    assert list(cfg.datastores) == ["A", "B", "A_captions", "shop"]
    mined = execute("mine", cfg, Options(domains=("shop",), progress=False, log=_quiet))
    assert mined.manifest["shop"]["count"] == load_tags(layout(built).tags("B")).__len__()
    out = execute("index", cfg, Options(datastores=("shop",), progress=False, log=_quiet))
    m = out.manifest["shop"]
    assert (m["rows"], m["index"]["type"], m["corpus"]["path"]) == (read_manifest(built, "B")["rows"], "FLAT", "web/shop")
    assert read_manifest(built, "B")["index"]["type"] == "HNSW"   # the override is the datastore's own
    samples = _good_samples(built, "web/B")[:10]
    vecs = load_encoder(encoder_path(cfg)).embed_images([img for _, img in samples])
    retriever = Retriever(cfg)
    own = retriever.retrieve("shop", vecs, k=1)
    assert [r.neighbours[0].id for r in own] == [key for key, _ in samples]   # exact search: each image finds itself
    world_b = Retriever(built)
    names = [[v for v, _ in r.values] for r in world_b.retrieve("B", vecs, k=1)]
    assert [[v for v, _ in r.values] for r in own] == names   # the same rows, the same mined tags
    world_b.close()
    retriever.close()
    assert execute("index", cfg, Options(datastores=("shop",), progress=False)).status == "up to date"
    with pytest.raises(TunaError, match="domain 'nope' is not a web corpus; use one of A, B, shop"):
        execute("mine", cfg, Options(domains=("nope",)))
