"""`tuna index`: build the named datastores from the web corpora, and retrieve from them by name.

Datastores are declared in the recipe's ``datastores:`` section (:func:`declared`); the world's three
(:data:`DATASTORES`) are ``A`` (world A's web corpus, values = mined tags), ``B`` (domain B, the swap
target) and ``A_captions`` (world A, values = the caption itself: the ablation that retrieves captions
instead of tags). Keys are the encoder's image embeddings. Builds are idempotent and
resumable: rows already in the collection are skipped, upserts keep one row per id, and the
manifest is written last, so a datastore without ``manifest.json`` is an unfinished build.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tuna.errors import CorruptSample, TunaError
from tuna.formats import WebSample, iter_web
from tuna.layout import layout
from tuna.readers.web import shard_paths
from tuna.recipe import IndexConfig, Recipe, section_fingerprint
from tuna.retrieval.store import MilvusStore, Neighbour, UnknownDatastore, datastore_uri, index_params
from tuna.samples import Quarantine, caption_text, decode_image
from tuna.sources import sources

BUILDER_VERSION = "tuna.index/1"
FLUSH_EVERY = 8  # batches between flushes: what a killed build keeps
BUILDING_FILE = "building.json"  # the inputs of an unfinished build (what a resumed build must match)


@dataclass(frozen=True)
class DatastoreSpec:
    """One declared datastore (the recipe's ``datastores:`` entry), resolved."""

    corpus: str          # the web corpus (A, B or a data.corpora entry): sources().web(corpus)
    values: str          # "tags" (mined tags) or "captions" (the caption itself)
    index: IndexConfig   # the ``index:`` section with the entry's own overrides

    @property
    def tags_domain(self) -> str:
        """Which `tuna mine` output holds this corpus's tags."""
        return self.corpus

    @property
    def source(self) -> str:
        """Value of the rows' ``source`` field."""
        return f"world-{self.corpus}"

    @property
    def label(self) -> str:
        """How manifests and quarantine lists name the corpus (``web/A``)."""
        return f"web/{self.corpus}"


DATASTORES = ("A", "B", "A_captions")   # the world's datastores: what a recipe without a datastores: section builds


def declared(cfg: Recipe) -> dict[str, DatastoreSpec]:
    """Every datastore the recipe declares, in declaration order."""
    return {name: DatastoreSpec(d.corpus, d.values, replace(cfg.index, **d.index.values()))
            for name, d in cfg.datastores.items()}


def spec_of(cfg: Recipe, name: str) -> DatastoreSpec:
    """Declared datastore ``name``; an unknown name is one line naming the declared ones."""
    specs = declared(cfg)
    if name not in specs:
        raise UnknownDatastore(f"unknown datastore {name!r}; the recipe declares {', '.join(specs)} "
                               f"(add it under datastores:)")
    return specs[name]


def partner(cfg: Recipe, name: str, values: str) -> str | None:
    """The declared datastore over the same corpus as ``name`` whose rows hold ``values`` (None when none does)."""
    corpus = spec_of(cfg, name).corpus
    return next((n for n, s in declared(cfg).items() if s.corpus == corpus and s.values == values), None)


def read_manifest(cfg: Recipe, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((layout(cfg).datastore(name) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _encoder_fingerprint(cfg: Recipe) -> str | None:
    """The current encoder's fingerprint without loading it (from its manifest); None if unknown."""
    if cfg.model.vision_tower:
        return None
    try:
        return json.loads((layout(cfg).encoder / "manifest.json").read_text())["fingerprint"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None


def is_up_to_date(cfg: Recipe, name: str) -> bool:
    """True when datastore ``name`` was finished by this builder from the current encoder, corpus, tags and index config."""

    m = read_manifest(cfg, name)
    spec = spec_of(cfg, name)
    if not m or m.get("builder") != BUILDER_VERSION or m.get("index_config") != section_fingerprint(spec.index):
        return False
    fingerprint = _encoder_fingerprint(cfg)
    if fingerprint is None or m["encoder"]["fingerprint"] != fingerprint:
        return False
    if m["corpus"]["hash"] != _files_hash(shard_paths(sources(cfg).web(spec.corpus).path)[0]):
        return False
    tags_file = layout(cfg).tags(spec.tags_domain) / "tags.parquet"
    return spec.values != "tags" or (tags_file.exists() and m.get("tags_hash") == _files_hash([tags_file]))


def _files_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _batches(samples: Iterator[WebSample], size: int) -> Iterator[list[WebSample]]:
    batch: list[WebSample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_datastore(cfg: Recipe, name: str, rebuild: bool = False, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Embed datastore ``name``'s corpus, insert it with its values, index it; returns the manifest."""
    from tuna.layout import encoder_path
    from tuna.retrieval.clip import load_encoder
    from tuna.tags.io import load_tags

    spec = spec_of(cfg, name)
    corpus = sources(cfg).web(spec.corpus).path
    shards = shard_paths(corpus)[0]
    if not shards:
        raise TunaError(f"no web corpus at {corpus}; run `tuna world --config <recipe>` first")
    tags_file = layout(cfg).tags(spec.tags_domain) / "tags.parquet"
    tags: dict[str, list[str]] | None = None
    if spec.values == "tags":
        if not tags_file.exists():
            raise TunaError(f"no mined tags at {tags_file}; run `tuna mine --config <recipe>` first")
        tags = load_tags(tags_file)
    encoder = load_encoder(encoder_path(cfg))
    t0 = time.perf_counter()
    out_dir = layout(cfg).datastore(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A build resumes only an unfinished build of the same inputs (its marker); a finished or differently-built
    # collection is dropped first, so no row of an older encoder, corpus or tags survives.
    inputs = {"builder": BUILDER_VERSION, "encoder": encoder.fingerprint, "corpus": _files_hash(shards),
              "tags": _files_hash([tags_file]) if tags is not None else None, "index": section_fingerprint(spec.index)}
    marker = out_dir / BUILDING_FILE
    finished = (out_dir / "manifest.json").is_file()
    try:
        resumable = not finished and json.loads(marker.read_text()) == inputs
    except (OSError, json.JSONDecodeError):
        resumable = not finished and not marker.exists()  # no marker: a collection this builder never started
    (out_dir / "manifest.json").unlink(missing_ok=True)  # unfinished until the manifest is back
    marker.write_text(json.dumps(inputs, sort_keys=True) + "\n")
    store = MilvusStore.for_datastore(cfg, name)
    try:
        if rebuild or not resumable:
            store.drop(name)
        store.ensure(name, encoder.dim)
        done = store.ids(name)
        if done:
            log(f"datastore {name}: resuming, {len(done)} rows already in place")
        quarantine = Quarantine()
        seen = inserted = 0
        bar = tqdm(desc=f"index {name}", unit="img", disable=not progress, leave=False)
        for n, batch in enumerate(_batches(iter_web(corpus, quarantine.add), cfg.index.batch_size)):
            ids, images, values, captions = [], [], [], []
            for s in batch:
                seen += 1
                if s.key in done:
                    continue
                try:
                    caption = caption_text(s, cfg.mine.max_caption_chars)
                    image = decode_image(s.image, s.key)
                    if tags is not None and s.key not in tags:
                        raise CorruptSample(s.key, "no mined tags (quarantined by tuna mine)", "no_tags")
                except CorruptSample as err:
                    quarantine.add(err, f"{spec.label}/{s.shard}")
                    continue
                ids.append(s.key)
                images.append(image)
                values.append(tags[s.key] if tags is not None else [caption])
                captions.append(caption)
            if ids:
                vectors = encoder.embed_images(images, batch_size=cfg.index.batch_size)
                inserted += store.upsert(name, ids, vectors, values, captions, spec.source)
            if n % FLUSH_EVERY == FLUSH_EVERY - 1:
                store.flush(name)
            bar.update(len(batch))
        bar.close()
        info = store.build_index(name, spec.index)
        rows = store.count(name)
    finally:
        store.close()
    quarantine.write(out_dir / "quarantine.jsonl")
    manifest = {
        "builder": BUILDER_VERSION,
        "name": name,
        "collection": f"tuna_{name}",
        "uri": datastore_uri(cfg, name) if cfg.index.uri is None else cfg.index.uri,
        "values": spec.values,
        "source": spec.source,
        "encoder": {"path": encoder.path, "fingerprint": encoder.fingerprint, "dim": encoder.dim},
        "corpus": {"path": spec.label, "hash": _files_hash(shards), "samples": seen},
        "tags_hash": _files_hash([tags_file]) if tags is not None else None,
        "rows": rows,
        "inserted_now": inserted,
        "skipped": len(quarantine),
        "skipped_by_kind": quarantine.reasons(),
        "index": {"type": info.get("index_type"), "metric": info.get("metric_type"),
                  "params": info.get("params", index_params(spec.index))},
        "index_config": section_fingerprint(spec.index),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    marker.unlink(missing_ok=True)
    log(f"datastore {name}: {rows} rows ({quarantine.summary(seen, 'samples')}) in {manifest['build_seconds']}s")
    return manifest


def aggregate_values(neighbours: Sequence[Neighbour], limit: int) -> list[tuple[str, float]]:
    """Rank the neighbours' values: each value scores the sum of the similarities of the neighbours
    carrying it (a similarity-weighted vote), ties by first appearance; the top ``limit`` are kept."""
    score: dict[str, float] = {}
    for nb in neighbours:
        for v in dict.fromkeys(nb.values):
            score[v] = score.get(v, 0.0) + nb.score
    return sorted(score.items(), key=lambda kv: -kv[1])[:limit]


@dataclass(frozen=True)
class Retrieved:
    """What one image retrieved: its neighbours and their values ranked by vote."""

    neighbours: list[Neighbour]
    values: list[tuple[str, float]]


class Retriever:
    """Batched retrieval from any named datastore; connections are opened lazily and kept, so
    switching datastores between calls costs nothing and needs no restart."""

    def __init__(self, cfg: Recipe) -> None:
        self.cfg = cfg
        self._stores: dict[str, MilvusStore] = {}

    def _store(self, name: str) -> MilvusStore:
        spec_of(self.cfg, name)
        uri = datastore_uri(self.cfg, name)
        if uri not in self._stores:
            self._stores[uri] = MilvusStore.for_datastore(self.cfg, name)
        return self._stores[uri]

    def retrieve(self, name: str, image_vectors: np.ndarray, k: int | None = None,
                 max_values: int | None = None) -> list[Retrieved]:
        """Top-k neighbours per image (image_vectors: (N, dim), unit norm) and their ranked values."""
        ix = spec_of(self.cfg, name).index
        k = k or ix.top_k
        limit = max_values or self.cfg.model.num_tags
        hits = self._store(name).search(name, image_vectors, k, ix)
        return [Retrieved(neighbours=h, values=aggregate_values(h, limit)) for h in hits]

    def retrieve_tags(self, name: str, vectors: np.ndarray, slots: int) -> list[list[tuple[str, float]]]:
        """``slots`` ranked values per image from ``vectors``: (N, dim) whole images, or (N, 1 + cells, dim) whole
        images then their regions (:func:`tuna.retrieval.regions.merge_region_values`: the whole image's best, then
        each region's best not yet listed)."""
        from tuna.retrieval.regions import merge_region_values

        if vectors.ndim == 2:
            return [h.values for h in self.retrieve(name, vectors, max_values=slots)]
        n, parts, dim = vectors.shape
        hits = self.retrieve(name, vectors.reshape(n * parts, dim), max_values=slots)
        return [merge_region_values(hits[i * parts].values, [h.values for h in hits[i * parts + 1:(i + 1) * parts]], slots)
                for i in range(n)]

    def close(self) -> None:
        for s in self._stores.values():
            s.close()
        self._stores.clear()
