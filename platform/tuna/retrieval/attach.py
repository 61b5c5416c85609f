"""Attach retrieved tags to a set of image files, once, and keep them next to the run's data.

Training (and offline evaluation) feed the model precomputed tags: each image is embedded with the
run's CLIP encoder and its top-k neighbours are searched in a named datastore in batches; the ranked
values (tags, or captions for the ``A_captions`` datastore) are stored per image file name in a JSON
file. Tag modes map to sources: ``tags`` -> the tags datastore (``model.datastore`` unless named), ``captions`` ->
the captions datastore over the same corpus (``A_captions``), ``random`` -> tags drawn at random (seeded per
image) from the datastore's mined vocabulary, ``none``
-> nothing. A cache file records the encoder and datastore fingerprints; a stale cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tuna.errors import CorruptSample, TunaError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.samples import Quarantine, decode_image, image_keys
from tuna.staging import staged_file

ATTACH_VERSION = "tuna.attach/1"
Tagged = list[tuple[str, float]]  # ranked (value, score) pairs of one image


class TagsUnavailable(TunaError, FileNotFoundError):
    """The datastore or mined tags an attach needs are missing."""


def source_of(cfg: Recipe, tag_mode: str, datastore: str | None = None) -> str | None:
    """The datastore a tag mode retrieves from (None for ``none``), given the tags datastore ``datastore``
    (default ``model.datastore``): ``captions`` reads the captions datastore declared over the same corpus."""
    from tuna.retrieval.datastore import partner, spec_of

    datastore = datastore or cfg.model.datastore
    if tag_mode == "none":
        return None
    if tag_mode == "captions":
        if spec_of(cfg, datastore).values == "captions":
            return datastore
        found = partner(cfg, datastore, "captions")
        if found is None:
            raise TunaError(f"tag mode 'captions' needs a captions datastore over corpus {spec_of(cfg, datastore).corpus} "
                            f"(the corpus of {datastore!r}); declare one under datastores: (values: captions)")
        return found
    if tag_mode in ("tags", "random"):
        return datastore
    raise TunaError(f"unknown tag mode {tag_mode!r}; use tags, captions, random or none")


def datastore_fingerprint(cfg: Recipe, name: str) -> str:
    """A datastore's version: a digest of its manifest's encoder, corpus, rows and index (what retrieval depends on)."""
    from tuna.retrieval.datastore import read_manifest

    manifest = read_manifest(cfg, name)
    if manifest is None:
        raise TagsUnavailable(f"datastore {name!r} is not built under {layout(cfg).datastore(name)}; "
                              f"run `tuna index --datastore {name}` first")
    payload = json.dumps({k: manifest.get(k) for k in ("encoder", "corpus", "rows", "index")}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _vocabulary(cfg: Recipe, datastore: str) -> list[str]:
    from tuna.retrieval.datastore import spec_of
    from tuna.tags.io import load_tags

    domain = spec_of(cfg, datastore).tags_domain
    tags = load_tags(layout(cfg).tags(domain))
    vocab = sorted({t for row in tags.values() for t in row})
    if not vocab:
        raise TagsUnavailable(f"no mined tags for domain {domain} under {layout(cfg).tags(domain)}; run `tuna mine`")
    return vocab


def _random_tags(vocab: Sequence[str], key: str, k: int, seed: int) -> Tagged:
    rng = random.Random(f"{seed}:{key}")
    return [(t, 0.0) for t in rng.sample(list(vocab), min(k, len(vocab)))]


class RetrievalSession:
    """The run's encoder and an open Retriever, shared by many :func:`attach_tags` calls; close it when done
    (a Milvus Lite datastore stays locked to this process while it is open)."""

    def __init__(self, cfg: Recipe) -> None:
        from tuna.layout import encoder_path
        from tuna.retrieval.clip import load_encoder
        from tuna.retrieval.datastore import Retriever

        self.cfg = cfg
        self.encoder = load_encoder(encoder_path(cfg))
        self.retriever = Retriever(cfg)

    def close(self) -> None:
        self.retriever.close()

    def __enter__(self) -> RetrievalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def retrieve_images(cfg: Recipe, images: Sequence[Path], datastore: str, progress: bool = False,
                    quarantine: Quarantine | None = None, session: RetrievalSession | None = None) -> dict[str, Tagged]:
    """Embed ``images`` with the run's encoder and retrieve from ``datastore``: image key
    (:func:`tuna.samples.image_keys`) -> ranked values.

    Images that do not decode are skipped and added to ``quarantine`` (when given). Without ``session``
    one is opened and closed around the call.
    """
    own = session is None
    sess = session or RetrievalSession(cfg)
    out: dict[str, Tagged] = {}
    size = cfg.index.batch_size
    keys = image_keys(images)
    try:
        bar = tqdm(total=len(images), desc=f"retrieve {datastore}", unit="img", disable=not progress, leave=False)
        for i in range(0, len(images), size):
            batch, names = [], []
            for path in images[i:i + size]:
                try:
                    data = path.read_bytes() if path.is_file() else None
                    batch.append(decode_image(data, keys[path]))
                    names.append(keys[path])
                except CorruptSample as err:
                    if quarantine is not None:
                        quarantine.add(err, str(path))
            if batch:
                vectors = sess.encoder.embed_images(batch, region_grid=cfg.model.region_grid)
                for name, values in zip(names, sess.retriever.retrieve_tags(datastore, vectors, cfg.model.num_tags)):
                    out[name] = [(v, round(float(s), 6)) for v, s in values]
            bar.update(len(images[i:i + size]))
        bar.close()
    finally:
        if own:
            sess.close()
    return out


def attach_tags(cfg: Recipe, images: Sequence[Path], cache: Path, tag_mode: str, datastore: str | None = None,
                progress: bool = False, log: Callable[[str], None] = print,
                session: RetrievalSession | None = None) -> dict[str, Tagged]:
    """Ranked tags per image key (:func:`tuna.samples.image_keys`: the file name when names are unique) for
    ``tag_mode``, from ``cache`` when it is current, else computed and saved.

    ``datastore`` is the tags datastore (default ``model.datastore``; see :func:`source_of` for ``captions``).
    ``none`` returns an empty mapping and writes nothing.
    """
    source = source_of(cfg, tag_mode, datastore)
    if source is None:
        return {}
    key = {
        "version": ATTACH_VERSION, "mode": tag_mode, "datastore": source, "k": cfg.model.num_tags,
        **({"region_grid": cfg.model.region_grid} if cfg.model.region_grid and tag_mode != "random" else {}),
        "datastore_fingerprint": datastore_fingerprint(cfg, source), "top_k": cfg.index.top_k, "seed": cfg.run.seed,
        "images": hashlib.sha256("\n".join(sorted(image_keys(images).values())).encode()).hexdigest()[:16],
    }
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return {name: [(v, float(s)) for v, s in tags] for name, tags in stored["tags"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable cache: recompute
    quarantine = Quarantine()
    if tag_mode == "random":
        vocab = _vocabulary(cfg, source)
        tags = {k: _random_tags(vocab, k, cfg.model.num_tags, cfg.run.seed) for k in image_keys(images).values()}
    else:
        tags = retrieve_images(cfg, images, source, progress=progress, quarantine=quarantine, session=session)
    payload: dict[str, Any] = {"key": key, "tags": tags, "skipped": quarantine.rows}
    with staged_file(cache) as tmp:
        tmp.write_text(json.dumps(payload, sort_keys=True), encoding="utf-8")
    log(f"attached {tag_mode} from {source} to {len(tags)} images ({len(quarantine)} skipped) -> {cache}")
    return tags


__all__ = ["RetrievalSession", "TagsUnavailable", "Tagged", "attach_tags", "datastore_fingerprint", "retrieve_images",
           "source_of"]
