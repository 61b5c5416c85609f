"""Benchmark: TUNA's tag miner vs SceneGraphParser on the same world captions, same spaCy model.

Run:  .venv/bin/python bench/mine.py [--config configs/mini.yaml] [--n 10000] [key=value ...]
Needs the world (tuna world) and the dev extra (SceneGraphParser). Writes bench/results/mine.json.

Both sides read the first ``--n`` readable captions of ``<data_dir>/world/web/A`` and are timed after a
short warm-up, pipeline loading excluded:
- ours: ``TagMiner.mine`` (tokenizer + tagger, NER on capitalised captions, rules), streamed with nlp.pipe;
- peer: ``sng_parser.Parser("spacy", model=<mine.spacy_model>).parse(caption)`` per caption (its API),
  which runs the full pipeline; its entities become objects (``lemma_head``, lowercased; the better of
  lemma_head and head is reported) and its ``amod`` modifiers attributes, after the same generic-word
  filter ours uses (image, photo, background, ...), so boilerplate does not count against it.
Also timed, as a reference: spaCy's own parser pipeline over the captions with ``nlp.pipe`` and no rules,
the floor for any miner built on the dependency parse.

Scores (tuna.tags.quality): objects against the world's true objects (json meta), and objects,
(attribute, object) pairs and both together against what the caption states (rebuilt with the world's
vocabulary). Micro precision / recall / F1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import sys
import time
from pathlib import Path
from typing import Any

from tuna.config import load_config
from tuna.formats import iter_web
from tuna.tags.io import web_dir
from tuna.tags.lexicon import GENERIC_WORDS
from tuna.tags.miner import MINER_VERSION, TagMiner
from tuna.tags.quality import WorldVocabulary, evaluate

WARMUP = 200


def load_captions(folder: Path, n: int) -> tuple[list[str], list[set[str]]]:
    """First ``n`` readable captions (UTF-8, non-empty, < 1000 chars) and their true objects."""
    captions, truth = [], []
    for sample in iter_web(folder):
        try:
            text = sample.caption.decode("utf-8") if sample.caption is not None else ""
        except UnicodeDecodeError:
            continue
        if not text.strip() or len(text) > 1000:
            continue
        captions.append(text)
        truth.append(set(sample.meta.get("objects", [])))
        if len(captions) == n:
            break
    return captions, truth


def run_ours(cfg: Any, captions: list[str]) -> dict[str, Any]:
    t = time.perf_counter()
    miner = TagMiner(cfg.mine)
    load = time.perf_counter() - t
    list(miner.mine(captions[:WARMUP]))
    before = miner.ner_captions
    t = time.perf_counter()
    out = list(miner.mine(captions))
    secs = time.perf_counter() - t
    return {"load_seconds": round(load, 2), "seconds": secs, "objects": [o.objects for o in out],
            "pairs": [o.pairs for o in out], "pipes": miner.pipes,
            "ner_captions": miner.ner_captions - before}


def _sgp_tags(graph: dict[str, Any], lemma: bool) -> tuple[list[str], list[tuple[str, str]]]:
    objects, pairs = [], []
    for ent in graph["entities"]:
        name = (ent["lemma_head"] if lemma else ent["head"]).lower().strip()
        if not name or name.split()[-1] in GENERIC_WORDS:
            continue
        objects.append(name)
        pairs.extend((m["lemma_span" if lemma else "span"].lower(), name) for m in ent["modifiers"] if m["dep"] == "amod")
    return objects, pairs


def run_peer(model: str, captions: list[str]) -> dict[str, Any]:
    import sng_parser

    t = time.perf_counter()
    parser = sng_parser.Parser("spacy", model=model)
    load = time.perf_counter() - t
    for c in captions[:WARMUP]:
        parser.parse(c)
    t = time.perf_counter()
    graphs = [parser.parse(c) for c in captions]
    secs = time.perf_counter() - t
    return {"load_seconds": round(load, 2), "seconds": secs, "graphs": graphs,
            "pipes": list(parser.unwrapped.nlp.pipe_names)}


def run_reference(model: str, captions: list[str], batch_size: int) -> float:
    """Seconds for spaCy's parser pipeline alone (no lemmatizer/NER, no rules) with nlp.pipe."""
    import spacy

    nlp = spacy.load(model, exclude=["lemmatizer", "ner"])
    list(nlp.pipe(captions[:WARMUP], batch_size=batch_size))
    t = time.perf_counter()
    for _ in nlp.pipe(captions, batch_size=batch_size):
        pass
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--n", type=int, default=10_000, help="captions (default 10000)")
    ap.add_argument("--out", default="bench/results/mine.json")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. mine.n_process=2")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    folder = web_dir(cfg, "A")
    vocab = WorldVocabulary.from_taxonomy(cfg.data_dir / "world" / "taxonomy.json")
    captions, truth = load_captions(folder, args.n)
    n = len(captions)
    load_before = os.getloadavg()
    print(f"{n} captions from {folder}; load average {load_before[0]:.2f}", flush=True)

    ours = run_ours(cfg, captions)
    print(f"ours: {n / ours['seconds']:.0f} captions/s", flush=True)
    peer = run_peer(cfg.mine.spacy_model, captions)
    print(f"scenegraphparser: {n / peer['seconds']:.0f} captions/s", flush=True)
    ref = run_reference(cfg.mine.spacy_model, captions, cfg.mine.batch_size)
    print(f"spaCy parse-only nlp.pipe (reference): {n / ref:.0f} captions/s", flush=True)

    our_scores = evaluate(captions, truth, ours["objects"], ours["pairs"], vocab)
    peer_variants = {}
    for lemma in (True, False):
        tags = [_sgp_tags(g, lemma) for g in peer["graphs"]]
        peer_variants["lemma_head" if lemma else "head"] = evaluate(captions, truth, [t[0] for t in tags], [t[1] for t in tags], vocab)
    best = max(peer_variants, key=lambda k: peer_variants[k]["objects_vs_world"]["f1"])
    peer_scores = peer_variants[best]

    ours_cps, peer_cps = n / ours["seconds"], n / peer["seconds"]
    f1_ours, f1_peer = our_scores["objects_vs_world"]["f1"], peer_scores["objects_vs_world"]["f1"]
    import spacy

    result = {
        "benchmark": "tag mining: tuna.tags vs scenegraphparser",
        "captions": n,
        "source": str(folder),
        "spacy_model": cfg.mine.spacy_model,
        "ours": {"miner": MINER_VERSION, "pipes": ours["pipes"], "batch_size": cfg.mine.batch_size,
                 "n_process": cfg.mine.n_process, "ner_captions": ours["ner_captions"], "load_seconds": ours["load_seconds"],
                 "seconds": round(ours["seconds"], 3), "captions_per_second": round(ours_cps, 1), "scores": our_scores},
        "scenegraphparser": {"package": "SceneGraphParser==0.1.0", "pipes": peer["pipes"], "call": "parse(caption) per caption",
                             "load_seconds": peer["load_seconds"], "seconds": round(peer["seconds"], 3),
                             "captions_per_second": round(peer_cps, 1), "objects_from": best, "scores": peer_scores,
                             "scores_by_variant": peer_variants},
        "reference_spacy_parse_pipe": {"pipes": "tok2vec+tagger+parser+attribute_ruler", "seconds": round(ref, 3),
                                       "captions_per_second": round(n / ref, 1)},
        "throughput_ratio": round(ours_cps / peer_cps, 2),
        "f1_objects_vs_world": {"ours": f1_ours, "scenegraphparser": f1_peer},
        "f1_attribute_pairs_vs_caption": {"ours": our_scores["attribute_pairs_vs_caption"]["f1"],
                                          "scenegraphparser": peer_scores["attribute_pairs_vs_caption"]["f1"]},
        "goal": {"throughput_at_least_10x": ours_cps >= 10 * peer_cps, "f1_at_least_peer": f1_ours >= f1_peer},
        "machine": {"cpus": os.cpu_count(), "load_average_before": round(load_before[0], 2),
                    "load_average_after": round(os.getloadavg()[0], 2), "python": pyplatform.python_version(),
                    "spacy": spacy.__version__, "note": "cores shared with other jobs; the ratio is measured in one run"},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"ratio {result['throughput_ratio']}x; objects F1 vs world: ours {f1_ours}, scenegraphparser {f1_peer}; "
          f"attribute-pair F1: ours {result['f1_attribute_pairs_vs_caption']['ours']}, "
          f"scenegraphparser {result['f1_attribute_pairs_vs_caption']['scenegraphparser']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
