"""`tuna world`: generate the bundled world (taxonomies, images, every corpus) into ``<data_dir>/world``.

Output is byte-identical for the same seed and world config, whatever the number of worker
processes: each sample is drawn from its own RNG. The world is written to a temporary folder next to
the target and renamed into place at the end, so a failed or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tuna.errors import ConfigError
from tuna.formats import dump_json, dump_jsonl, write_web_shard
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.staging import staged_dir
from tuna.world import language
from tuna.world.questions import MME_TASKS, POPE_SPLITS, mme_pair, pope_questions
from tuna.world.render import encode, render
from tuna.world.scene import CORPUS_CODES, Scene, popularity, sample_rng, sample_scene
from tuna.world.taxonomy import COLOURS, FineClass, Taxonomy, build_taxonomies, dump_taxonomies

GENERATOR_VERSION = "tuna.world/1"
CLIP_WEB_DIR = "web/clip"  # world.sizes.clip_web: web pairs for CLIP pre-training only (not mined, not indexed)
CORRUPTION_KINDS = ("truncated_image", "empty_caption", "non_utf8_caption", "oversized_caption")


@dataclass(frozen=True)
class CorpusSpec:
    """How to draw the samples of one corpus."""

    name: str                    # key of tuna.world.scene.CORPUS_CODES
    count: int
    pool: str                    # "A" (all), "A_id", "A_ood", "B"
    text: str                    # "web", "clean", "instruct", "none", or "mme:<task>"
    min_distinct: int = 1        # resample until the scene holds this many distinct classes
    single: bool = False         # one large object per image, classes taken in turn (FINER)


@dataclass(frozen=True)
class Sample:
    key: str
    index: int
    scene: Scene
    image: bytes
    text: Any


# Worker state, set once per process by _init (the taxonomies and class priors of this world).
_STATE: dict[str, Any] = {}


def _init(cfg: Recipe) -> None:
    a, b = build_taxonomies(cfg.world.taxonomy, cfg.world.domain_b, cfg.run.seed)
    prior = popularity(list(a.classes), cfg.run.seed) | popularity(list(b.classes), cfg.run.seed + 1)
    # the seen classes most frequent first: the "popular" negatives of the VQA rows, as POPE picks its own
    popular = [c.name for c in sorted(a.id_classes, key=lambda c: (-prior[c.name], c.name))]
    _STATE.update(cfg=cfg, A=a, B=b, prior=prior, popular=popular)


def _pool(name: str) -> list[FineClass]:
    a: Taxonomy = _STATE["A"]
    return {"A": list(a.classes), "A_id": a.id_classes, "A_ood": a.ood_classes, "B": list(_STATE["B"].classes)}[name]


def _is_product_photo(seed: int, corpus: str, index: int, share: float) -> bool:
    """Whether web sample ``index`` is a single-object product photo (world.product_share).

    Drawn from its own stream, apart from the sample's RNG, so ``product_share: 0`` (no draw at all)
    leaves every sample byte-identical to a world generated without the option.
    """
    return bool(np.random.default_rng([seed, CORPUS_CODES[corpus], index, 1]).random() < share)


def _make(job: tuple[CorpusSpec, int]) -> Sample:
    """Draw, render and describe sample ``index`` of corpus ``spec``."""
    spec, index = job
    cfg: Recipe = _STATE["cfg"]
    w = cfg.world
    rng = sample_rng(cfg.run.seed, spec.name, index)
    pool = _pool(spec.pool)
    key = f"{index:09d}"
    text: Any = None
    product = spec.text == "web" and w.product_share > 0 and _is_product_photo(cfg.run.seed, spec.name, index, w.product_share)
    for _attempt in range(200):
        if spec.single:
            scene = sample_scene(rng, key, pool, _STATE["prior"], w.image_size, (1, 1),
                                 required=[pool[index % len(pool)]], sizes=["large"])
        elif product:  # a product photo: one large object, class drawn by popularity
            scene = sample_scene(rng, key, pool, _STATE["prior"], w.image_size, (1, 1), sizes=["large"])
        else:
            lo = max(w.objects_per_image[0], spec.min_distinct)
            scene = sample_scene(rng, key, pool, _STATE["prior"], w.image_size, (lo, w.objects_per_image[1]))
        if len(scene.class_names) < spec.min_distinct:
            continue
        if spec.text.startswith("mme:"):
            vocab = [c.name for c in _STATE["A"].classes]
            text = mme_pair(spec.text[4:], scene, vocab, list(COLOURS), rng)
            if text is None:
                continue
        break
    else:
        raise ConfigError(f"{spec.name}[{index}]: no valid scene in 200 draws; widen world.objects_per_image")
    image = encode(render(scene, rng), w.image_format)
    if spec.text == "web":
        tax = _STATE["B"] if spec.pool == "B" else _STATE["A"]
        text = language.web_caption(scene, rng, w.noise, tax)
    elif spec.text == "clean":
        text = [language.clean_caption(scene, rng), language.detailed_description(scene)]
    elif spec.text == "instruct":
        vqa = None
        if index < cfg.world.sizes.vqa:  # its own RNG: the conversation is the same with or without it
            vqa = language.vqa_existence(scene, sample_rng(cfg.run.seed, "vqa", index), _STATE["A"].id_classes,
                                            _STATE["popular"])
        seek = None
        if index < cfg.world.sizes.attrseek:  # its own RNG too
            seek = language.attrseek(scene, sample_rng(cfg.run.seed, "attrseek", index))
        yes_no = None
        if index < cfg.world.sizes.yes_no:  # its own RNG too
            yes_no = language.vqa_yes_no(scene, sample_rng(cfg.run.seed, "yes_no", index), list(COLOURS))
        text = (*language.conversation(scene, rng, _STATE["A"].id_classes), vqa, seek, yes_no)
    return Sample(key=key, index=index, scene=scene, image=image, text=text)


def corpus_specs(cfg: Recipe) -> list[CorpusSpec]:
    s = cfg.world.sizes
    specs = [
        CorpusSpec("web", s.web, "A", "web"),
        CorpusSpec("web_b", s.web_b, "B", "web"),
        *([CorpusSpec("clip_web", s.clip_web, "A", "web")] if s.clip_web else []),
        CorpusSpec("alignment", s.alignment, "A_id", "clean"),
        CorpusSpec("instruction", s.instruction, "A_id", "instruct"),
        CorpusSpec("pope_id", s.pope_images, "A_id", "none", min_distinct=3),
        CorpusSpec("pope_ood", s.pope_images, "A_ood", "none", min_distinct=3),
        *([CorpusSpec("pope_val_id", s.pope_val, "A_id", "none", min_distinct=3),
           CorpusSpec("pope_val_ood", s.pope_val, "A_ood", "none", min_distinct=3)] if s.pope_val else []),
        CorpusSpec("finer_id", s.finer, "A_id", "none", single=True),
        CorpusSpec("finer_ood", s.finer, "A_ood", "none", single=True),
        CorpusSpec("finer_b", s.finer_b, "B", "none", single=True),
        *([CorpusSpec("finer_val_id", s.finer_val, "A_id", "none", single=True),
           CorpusSpec("finer_val_ood", s.finer_val, "A_ood", "none", single=True),
           CorpusSpec("finer_val_b", s.finer_val, "B", "none", single=True)] if s.finer_val else []),
        CorpusSpec("captions_id", s.captions, "A_id", "clean"),
        CorpusSpec("captions_ood", s.captions, "A_ood", "clean"),
    ]
    for split in ("id", "ood"):
        for name, count in ((f"mme_{split}", s.mme_images), (f"mme_val_{split}", s.mme_val)):
            for task in MME_TASKS if count else ():
                specs.append(CorpusSpec(name, count, f"A_{split}", f"mme:{task}", min_distinct=2 if task == "position" else 1))
    return specs


def _jobs(spec: CorpusSpec) -> list[tuple[CorpusSpec, int]]:
    # MME subtasks share a corpus code; their index ranges are kept apart.
    offset = MME_TASKS.index(spec.text[4:]) * 1_000_000 if spec.text.startswith("mme:") else 0
    return [(spec, offset + i) for i in range(spec.count)]


class _Runner:
    """Maps jobs over worker processes (or in-process for one worker), preserving order."""

    def __init__(self, cfg: Recipe) -> None:
        self.cfg = cfg
        self.pool: cf.ProcessPoolExecutor | None = None
        if cfg.world.workers > 1:
            ctx = multiprocessing.get_context("fork")
            self.pool = cf.ProcessPoolExecutor(cfg.world.workers, mp_context=ctx, initializer=_init, initargs=(cfg,))
        _init(cfg)

    def map(self, jobs: list[tuple[CorpusSpec, int]], desc: str, progress: bool) -> Iterator[Sample]:
        it = self.pool.map(_make, jobs, chunksize=16) if self.pool else map(_make, jobs)
        yield from tqdm(it, total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)


def _coco(samples: list[Sample], categories: list[FineClass], ext: str) -> dict[str, Any]:
    images, anns = [], []
    for n, smp in enumerate(samples, 1):
        images.append({"id": n, "file_name": f"{smp.key}.{ext}", "width": smp.scene.size, "height": smp.scene.size})
        for obj in smp.scene.objects:
            x, y, w, h = obj.bbox
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": obj.cls.id, "bbox": [x, y, w, h],
                         "area": round(w * h, 2), "iscrowd": 0, "attributes": obj.attributes,
                         "rotation": obj.rotation})
    cats = [{"id": c.id, "name": c.name, "supercategory": c.coarse, "superordinate": c.superordinate,
             "domain": c.domain, "ood": c.ood} for c in categories]
    return {"info": {"description": "TUNA bundled world", "version": GENERATOR_VERSION},
            "images": images, "annotations": anns, "categories": cats}


class _Writer:
    """Writes files under the temporary world folder and records per-corpus digests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = hashlib.sha256(data).hexdigest()

    def digests(self) -> dict[str, str]:
        groups: dict[str, hashlib._Hash] = {}
        for rel in sorted(self.files):
            top = "/".join(rel.split("/")[:2]) if rel.startswith(("eval/", "web/")) else rel.split("/")[0]
            groups.setdefault(top, hashlib.sha256()).update(f"{rel}\0{self.files[rel]}\n".encode())
        return {k: h.hexdigest() for k, h in sorted(groups.items())}


def _corrupt(cfg: Recipe, index: int, image: bytes, caption: bytes) -> tuple[bytes, bytes, str | None]:
    """Damage a web sample the way real crawls are damaged, with probability noise.corrupt_rate."""
    rng = sample_rng(cfg.run.seed, "corrupt", index)
    if rng.random() >= cfg.world.noise.corrupt_rate:
        return image, caption, None
    kind = str(rng.choice(CORRUPTION_KINDS))
    if kind == "truncated_image":
        return image[: len(image) // 3], caption, kind
    if kind == "empty_caption":
        return image, b"", kind
    if kind == "non_utf8_caption":
        return image, b"\xff\xfe" + caption.decode("utf-8").encode("latin-1", errors="replace") + b"\xe9\xff", kind
    return image, (caption + b" ") * (10_240 // (len(caption) + 1) + 1), kind


def _write_web(runner: _Runner, spec: CorpusSpec, folder: str, out: _Writer, progress: bool) -> list[dict[str, str]]:
    cfg = runner.cfg
    corrupt: list[dict[str, str]] = []
    shard: list[tuple[str, bytes, str, bytes, dict[str, Any]]] = []

    def flush(n: int) -> None:
        tmp = out.root / folder / f"{n:05d}.tar"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write_web_shard(tmp, shard)
        for p in (tmp, tmp.with_suffix(".parquet")):
            out.files[str(p.relative_to(out.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        shard.clear()

    ext = cfg.world.image_format
    for smp in runner.map(_jobs(spec), spec.name, progress):
        text = smp.text.encode("utf-8")
        image, caption, kind = _corrupt(cfg, smp.index, smp.image, text) if spec.name == "web" else (smp.image, text, None)
        if kind:
            corrupt.append({"key": smp.key, "kind": kind})
        meta = {"key": smp.key, "width": smp.scene.size, "height": smp.scene.size, "source": f"world-{spec.pool}",
                "objects": [o.cls.name for o in smp.scene.objects]}
        shard.append((smp.key, image, ext, caption, meta))
        if len(shard) == cfg.world.shard_size:
            flush(smp.index // cfg.world.shard_size)
    if shard:
        flush((spec.count - 1) // cfg.world.shard_size)
    return corrupt


def _write_images(samples: list[Sample], folder: str, ext: str, out: _Writer) -> list[str]:
    names = []
    for smp in samples:
        name = f"{smp.key}.{ext}"
        out.write(f"{folder}/images/{name}", smp.image)
        names.append(name)
    return names


def _conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """LLaVA's conversation list; the image placeholder opens the first human turn."""
    conv = []
    for t, (human, gpt) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + human})
        conv.append({"from": "gpt", "value": gpt})
    return conv


def _llava_prompt(rng: np.random.Generator, prompts: list[str]) -> str:
    return str(prompts[int(rng.integers(len(prompts)))])


def _write_corpora(cfg: Recipe, a: Taxonomy, b: Taxonomy, out: _Writer, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    ext = cfg.world.image_format
    specs = {(s.name, s.text): s for s in corpus_specs(cfg)}
    counts: dict[str, int] = {}
    runner = _Runner(cfg)
    all_classes = list(a.classes) + list(b.classes)
    try:
        t0 = time.perf_counter()
        corrupt = _write_web(runner, specs["web", "web"], "web/A", out, progress)
        _write_web(runner, specs["web_b", "web"], "web/B", out, progress)
        counts.update(web_A=cfg.world.sizes.web, web_B=cfg.world.sizes.web_b, web_A_corrupt=len(corrupt))
        if cfg.world.sizes.clip_web:  # CLIP's own, larger crawl (as WIT-400M next to a CC3M datastore): only `tuna encoder` reads it
            _write_web(runner, specs["clip_web", "web"], CLIP_WEB_DIR, out, progress)
            counts["web_clip"] = cfg.world.sizes.clip_web
        log(f"web corpora: {cfg.world.sizes.web} + {cfg.world.sizes.web_b} samples ({len(corrupt)} damaged on purpose)"
            + (f" + {cfg.world.sizes.clip_web} CLIP-only" if cfg.world.sizes.clip_web else "") + f" in {time.perf_counter() - t0:.1f}s")

        def collect(name: str, text: str) -> list[Sample]:
            spec = specs[name, text]
            desc = f"{name}/{text[4:]}" if text.startswith("mme:") else name
            return list(runner.map(_jobs(spec), desc, progress))

        # Alignment set: LLaVA pretrain JSON (one caption per image), ID classes only.
        t0 = time.perf_counter()
        smp = collect("alignment", "clean")
        names = _write_images(smp, "alignment", ext, out)
        rows = [{"id": s.key, "image": n, "conversations": [
            {"from": "human", "value": _llava_prompt(sample_rng(cfg.run.seed, "alignment", s.index), language.ALIGNMENT_PROMPTS) + "\n<image>"},
            {"from": "gpt", "value": s.text[0]}]} for s, n in zip(smp, names)]
        out.write("alignment/pretrain.json", dump_json(rows))
        out.write("alignment/instances.json", dump_json(_coco(smp, all_classes, ext)))
        counts["alignment"] = len(rows)

        # Instruction set: LLaVA conversations, ID classes only.
        smp = collect("instruction", "instruct")
        names = _write_images(smp, "instruction", ext, out)
        rows = []
        extra: dict[str, list[dict[str, Any]]] = {"vqa": [], "attrseek": [], "yes_no": []}
        for s, n in zip(smp, names):
            kind, turns, *more = s.text
            rows.append({"id": s.key, "image": n, "kind": kind, "conversations": _conversation(turns)})
            for k, conv in zip(extra, more):
                if conv:
                    extra[k].append({"id": f"{s.key}-{k}", "image": n, "kind": k, "conversations": _conversation(conv)})
        rows += extra["vqa"] + extra["attrseek"] + extra["yes_no"]
        out.write("instruction/instruct.json", dump_json(rows))
        out.write("instruction/instances.json", dump_json(_coco(smp, all_classes, ext)))
        counts["instruction"] = len(rows)
        log(f"alignment + instruction sets: {counts['alignment']} + {counts['instruction']} in {time.perf_counter() - t0:.1f}s")

        # Eval sets, ID and OOD splits each.
        t0 = time.perf_counter()
        vocab = [c.name for c in a.classes]
        pope = [("eval", split, f"pope_{split}", k) for k, split in enumerate(("id", "ood"))]
        if cfg.world.sizes.pope_val:  # validation images, for choosing settings (never reported)
            pope += [("val", split, f"pope_val_{split}", 2 + k) for k, split in enumerate(("id", "ood"))]
        for root, split, name, offset in pope:
            smp = collect(name, "none")
            names = _write_images(smp, f"{root}/pope/{split}", ext, out)
            out.write(f"{root}/pope/{split}/instances.json", dump_json(_coco(smp, all_classes, ext)))
            for ps in POPE_SPLITS:
                q = pope_questions([s.scene for s in smp], names, vocab, cfg.run.seed + offset, ps)
                out.write(f"{root}/pope/{split}/world_pope_{ps}.json", dump_jsonl(q))
                counts[f"{name}_{ps}"] = len(q)
        finer = [("eval", split, f"finer_{split}") for split in ("id", "ood", "b")]
        if cfg.world.sizes.finer_val:  # validation images of the same classes, for choosing settings (never reported)
            finer += [("val", split, f"finer_val_{split}") for split in ("id", "ood", "b")]
        for root, split, name in finer:
            smp = collect(name, "none")
            names = _write_images(smp, f"{root}/finer/{split}", ext, out)
            rows = [{"id": s.key, "image": n, "basic-level-lbl": o.cls.superordinate, "coarse-level-lbl": o.cls.coarse,
                     "fine-level-lbl": o.cls.name, "attributes": o.cls.attributes, "instance-attributes": o.attributes,
                     "domain": o.cls.domain, **({"brand": o.cls.brand} if o.cls.brand else {})}
                    for s, n in zip(smp, names) for o in s.scene.objects[:1]]
            out.write(f"{root}/finer/{split}/finer.jsonl", dump_jsonl(rows))
            counts[name] = len(rows)
        for split in ("id", "ood"):
            # MME's eval split, and its validation split (world.sizes.mme_val) for choosing settings (never reported)
            for root, name, count in (("eval", f"mme_{split}", cfg.world.sizes.mme_images),
                                      ("val", f"mme_val_{split}", cfg.world.sizes.mme_val)):
                for task in MME_TASKS if count else ():
                    smp = collect(name, f"mme:{task}")
                    base = f"{root}/mme/{split}/{task}"
                    names = _write_images(smp, base, ext, out)
                    for s in smp:
                        out.write(f"{base}/questions_answers_YN/{s.key}.txt",
                                  "".join(f"{q}\t{ans}\n" for q, ans in s.text).encode("utf-8"))
                    counts[f"{name}_{task}"] = 2 * len(smp)
            smp = collect(f"captions_{split}", "clean")
            _write_images(smp, f"eval/captions/{split}", ext, out)
            coco = _coco(smp, all_classes, ext)
            out.write(f"eval/captions/{split}/instances.json", dump_json(coco))
            caps = [{"id": 2 * n + k + 1, "image_id": n + 1, "caption": c} for n, s in enumerate(smp) for k, c in enumerate(s.text)]
            out.write(f"eval/captions/{split}/captions.json", dump_json({**coco, "annotations": caps, "categories": []}))
            counts[f"captions_{split}"] = len(smp)
        log(f"eval sets (POPE, FINER, MME, captions; ID/OOD/B) in {time.perf_counter() - t0:.1f}s")
    finally:
        runner.close()

    # Text corpus for the language model: every class of both domains, OOD included.
    docs = []
    for cls in all_classes:
        rng = sample_rng(cfg.run.seed, "text", cls.id)
        for d in language.class_documents(cls, all_classes, rng, cfg.world.sizes.text_docs_per_class):
            docs.append({"id": f"{cls.domain}{cls.id:04d}-{len(docs):07d}", "text": d})
    out.write("text/corpus.jsonl", dump_jsonl(docs))
    counts["text_docs"] = len(docs)
    return {"counts": counts, "corrupt": corrupt}


def is_up_to_date(cfg: Recipe) -> bool:
    """True when the run's world folder (tuna.layout) was generated by this generator from the same seed and world config."""
    manifest = layout(cfg).world_manifest
    try:
        m = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return m.get("generator") == GENERATOR_VERSION and m.get("fingerprint") == _fingerprint(cfg)


# World knobs added after worlds were already generated, with the value that reproduces those worlds
# byte for byte: at that value they are left out of the fingerprint, so existing worlds stay up to date.
_LATER_KNOBS: dict[str, Any] = {"product_share": 0.0, "sizes.clip_web": 0, "sizes.attrseek": 0, "sizes.yes_no": 0,
                                "sizes.mme_val": 0}


def _fingerprint(cfg: Recipe) -> str:
    world = dataclasses.asdict(cfg.world)
    for knob, off in _LATER_KNOBS.items():
        *parents, leaf = knob.split(".")
        section = world
        for name in parents:
            section = section[name]
        if section.get(leaf) == off:
            del section[leaf]
    digest = hashlib.sha256(json.dumps(world, sort_keys=True).encode()).hexdigest()[:16]  # = section_fingerprint
    return f"{digest}-seed{cfg.run.seed}"


def generate_world(cfg: Recipe, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate the whole world into the run's world folder (tuna.layout) and return its manifest."""
    target = layout(cfg).world
    t0 = time.perf_counter()
    with staged_dir(target, "world") as tmp:
        a, b = build_taxonomies(cfg.world.taxonomy, cfg.world.domain_b, cfg.run.seed)
        out = _Writer(tmp)
        out.write("taxonomy.json", dump_taxonomies(a, b).encode())
        result = _write_corpora(cfg, a, b, out, progress, log)
        manifest = {
            "generator": GENERATOR_VERSION,
            "fingerprint": _fingerprint(cfg),
            "seed": cfg.run.seed,
            "world": cfg.to_dict()["world"],
            "classes": {"A": len(a.classes), "A_ood": len(a.ood_classes), "B": len(b.classes)},
            "ood_classes": [c.name for c in a.ood_classes],
            "counts": result["counts"],
            "corrupt": result["corrupt"],
            "digests": out.digests(),
        }
        (tmp / "manifest.json").write_bytes(dump_json(manifest))
    log(f"world written to {target} in {time.perf_counter() - t0:.1f}s")
    return manifest
