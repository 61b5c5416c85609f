"""The tag-mining job: a web corpus (WebDataset shards) in, one parquet of tags per domain out.

Layout under the run's ``tags/<A|B>/`` (tuna.layout), from the web corpora the recipe's data: section declares:

- ``tags.parquet``: key, caption, objects, attributes, entities, tags (one row per mined caption);
- ``manifest.json``: count, skipped (by kind), miner version, spaCy model and version, input hash (of
  the shard files), config fingerprint, tag statistics, captions sent to NER, exact repeats answered
  from an earlier identical caption (each still has its own row), timing, created_at;
- ``quarantine.jsonl``: captions that were not mined (empty, not UTF-8, over ``mine.max_caption_chars``,
  missing), one JSON line each with the key, shard, kind and reason. Images are not checked here.

The folder is written under a temporary name and renamed into place, so a killed job leaves the
previous output intact and never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuna.errors import ConfigError, CorruptSample, DataFormatError
from tuna.formats import dump_json, iter_web
from tuna.layout import layout
from tuna.readers.web import shard_paths
from tuna.recipe import Recipe, section_fingerprint
from tuna.samples import Quarantine, caption_text
from tuna.sources import sources
from tuna.staging import staged_dir
from tuna.tags.miner import MINER_VERSION, TagMiner

TAGS_FILE = "tags.parquet"
MANIFEST_FILE = "manifest.json"
QUARANTINE_FILE = "quarantine.jsonl"


def mined_domains(cfg: Recipe) -> list[str]:
    """The web corpora whose tags a run needs: A (the tags' vocabulary) and the corpus of every tags datastore."""
    return list(dict.fromkeys(["A", *(d.corpus for d in cfg.datastores.values() if d.values == "tags")]))


def resolve_domains(cfg: Recipe, domain: str) -> list[str]:
    """``"all"`` -> :func:`mined_domains`; a web corpus name (A, B or a data.corpora entry) -> [it]."""
    return mined_domains(cfg) if domain == "all" else [_check_domain(cfg, domain)]


def _check_domain(cfg: Recipe, domain: str) -> str:
    known = ["A", "B", *cfg.data.corpora]
    if domain not in known:
        raise ConfigError(f"domain {domain!r} is not a web corpus; use one of {', '.join(known)} or all "
                          f"(a new corpus is declared under data.corpora)")
    return domain


def input_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the shards ``folder`` names (a folder, glob or brace list; sorted)."""
    shards = shard_paths(folder)[0]
    if not shards:
        raise DataFormatError(f"{folder}: no WebDataset shards (*.tar); build the corpus first (tuna world)")
    h = hashlib.sha256()
    for shard in shards:
        h.update(shard.name.encode() + b"\0")
        with shard.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def is_up_to_date(cfg: Recipe, domain: str) -> bool:
    """True when the domain's tags were mined by this miner, with this mine config, from these shards."""
    _check_domain(cfg, domain)
    try:
        m = json.loads((layout(cfg).tags(domain) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if not (layout(cfg).tags(domain) / TAGS_FILE).is_file():
        return False
    return (m.get("miner") == MINER_VERSION and m.get("config_fingerprint") == section_fingerprint(cfg.mine)
            and m.get("input_hash") == input_hash(sources(cfg).web(domain).path))


def mine_corpus(cfg: Recipe, domain: str, progress: bool = True, miner: TagMiner | None = None) -> dict[str, Any]:
    """Mine the tags of one domain's web corpus into the run's ``tags/<domain>/``; returns the manifest.

    Bad captions are skipped, counted and listed in ``quarantine.jsonl``; the job always finishes.
    Pass an already loaded ``miner`` to mine several domains with one spaCy pipeline.
    """
    folder = sources(cfg).web(_check_domain(cfg, domain)).path
    digest = input_hash(folder)
    miner = miner or TagMiner(cfg.mine)
    target = layout(cfg).tags(domain)
    with staged_dir(target, "tags") as tmp:
        t0 = time.perf_counter()
        quarantine = Quarantine()
        pending: deque[tuple[str, str]] = deque()
        samples = _progress(iter_web(folder, quarantine.add), folder, progress, f"mine {domain}")
        texts = _good_captions(samples, cfg.mine.max_caption_chars, quarantine, pending)
        columns: dict[str, list[Any]] = {k: [] for k in ("key", "caption", "objects", "attributes", "entities", "tags")}
        keys, captions, objects, attributes, entities, flat = columns.values()
        ner_before, duplicates_before = miner.ner_captions, miner.duplicates
        for tags in miner.mine(texts):
            key, caption = pending.popleft()
            keys.append(key)
            captions.append(caption)
            objects.append(tags.objects)
            attributes.append(tags.attributes)
            entities.append(tags.entities)
            flat.append(tags.tags)
        seconds = time.perf_counter() - t0
        counts = {"ner_captions": miner.ner_captions - ner_before, "duplicate_captions": miner.duplicates - duplicates_before}
        _write_parquet(tmp / TAGS_FILE, columns)
        quarantine.write(tmp / QUARANTINE_FILE)
        manifest = _manifest(cfg, domain, folder, digest, miner, columns, quarantine, seconds, counts)
        (tmp / MANIFEST_FILE).write_bytes(dump_json(manifest))
    return manifest


def load_tags(path: str | Path) -> dict[str, list[str]]:
    """key -> flat tag list, from a ``tags.parquet`` or the folder holding it (``<data_dir>/tags/A``)."""
    import pyarrow.parquet as pq

    p = Path(path)
    file = p / TAGS_FILE if p.is_dir() else p
    if not file.is_file():
        raise DataFormatError(f"{file}: no mined tags; run `tuna mine` for this domain first")
    try:
        table = pq.read_table(file, columns=["key", "tags"])
    except (OSError, ValueError, KeyError) as err:  # pyarrow raises ArrowInvalid (a ValueError) or KeyError
        raise DataFormatError(f"{file}: not a tags parquet with 'key' and 'tags' columns ({err}); re-run `tuna mine`") from None
    return dict(zip(table.column("key").to_pylist(), table.column("tags").to_pylist()))


# ------------------------------------------------------------------------------------------ helpers


def _good_captions(samples: Iterator[Any], max_chars: int, quarantine: Quarantine,
                   pending: deque[tuple[str, str]]) -> Iterator[str]:
    """Captions that decode and fit, in order; each is queued with its key before being yielded."""
    for sample in samples:
        try:
            text = caption_text(sample, max_chars)
        except CorruptSample as err:
            quarantine.add(err, sample.shard)
            continue
        pending.append((sample.key, text))
        yield text


def _progress(samples: Iterator[Any], folder: Path, enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        return samples
    from tqdm import tqdm

    return tqdm(samples, total=_count_rows(folder), desc=desc, unit="caption", mininterval=0.5)


def _count_rows(folder: Path) -> int | None:
    """Sample count from the per-shard parquet metadata img2dataset writes (None when absent)."""
    import pyarrow.parquet as pq

    total = 0
    for shard in sorted(folder.glob("*.tar")):
        meta = shard.with_suffix(".parquet")
        if not meta.is_file():
            return None
        total += pq.read_metadata(meta).num_rows
    return total


def _write_parquet(path: Path, columns: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    strings = pa.list_(pa.string())
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("objects", strings),
                        ("attributes", strings), ("entities", strings), ("tags", strings)])
    pq.write_table(pa.table(columns, schema=schema), path, compression="zstd")


def _manifest(cfg: Recipe, domain: str, folder: Path, digest: str, miner: TagMiner,
              columns: dict[str, list[Any]], quarantine: Quarantine, seconds: float, counts: dict[str, int]) -> dict[str, Any]:
    import spacy

    n = len(columns["key"])
    objects = {o for row in columns["objects"] for o in row}
    tags = {t for row in columns["tags"] for t in row}
    return {
        "domain": domain,
        "source": str(folder),
        "count": n,
        "skipped": len(quarantine),
        "skipped_by_kind": dict(sorted(quarantine.reasons().items())),
        "miner": MINER_VERSION,
        "spacy_model": cfg.mine.spacy_model,
        "spacy_model_version": miner.model_version,
        "spacy_version": spacy.__version__,
        "pipes": miner.pipes,
        "fast_path": miner.fast,
        "ner_captions": counts["ner_captions"],
        "duplicate_captions": counts["duplicate_captions"],  # exact repeats answered without parsing (rows kept)
        "input_hash": digest,
        "config": cfg.to_dict()["mine"],
        "config_fingerprint": section_fingerprint(cfg.mine),
        "unique_objects": len(objects),
        "unique_tags": len(tags),
        "tags_per_caption": round(sum(len(t) for t in columns["tags"]) / n, 3) if n else 0.0,
        "seconds": round(seconds, 3),
        "captions_per_second": round(n / seconds, 1) if seconds > 0 else None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
