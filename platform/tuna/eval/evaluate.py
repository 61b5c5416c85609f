"""`tuna eval`: answer the world's eval sets with a trained model and score them.

Per model (a trained variant's stage-2 folder): POPE (ID and OOD, random/popular/adversarial), FINER
direct and ATTRSEEK (ID, OOD and domain B), MME-style yes/no (ID and OOD) and CHAIR on generated
captions. Tags for each eval image come from the variant's tag source (datastore ``A`` for world A,
``B`` for domain B by default; ``datastores`` overrides which one answers domain B: the zero-shot swap).
Greedy decoding, batched; empty generations are scored as wrong answers, never dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tuna.errors import CorruptSample, TunaError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.samples import decode_image, image_keys
from tuna.sources import VALIDATED, sources
from tuna.staging import staged_file

SHORT = "\nAnswer the question using a single word or phrase."  # LLaVA's short-answer suffix (also in training)
CAPTION_PROMPT = "Describe the image in detail."
# 5: POPE apart for objects the tags name and those they miss (pope.<group>.by_tags); 4: FINER's tag quality (how
# often the retrieved tags name the gold class); 3: the swapped-in datastore by its recipe name (finer_b_fine_em);
# 2: MME read by calculation.py's rule, FINER EM by eval_fgvc.py's rule (+ whole-word)
EVAL_VERSION = "tuna.eval/5"


class EvalError(TunaError):
    """An evaluation that cannot run as asked."""


@dataclass(frozen=True)
class Query:
    image: Path
    question: str
    turns: tuple[tuple[str, str], ...] = ()


class Asker:
    """Batches queries through a :class:`~tuna.inference.Predictor` with the tags of each image."""

    def __init__(self, predictor: Any, batch_size: int = 32, progress: bool = False) -> None:
        self.predictor, self.batch_size, self.progress = predictor, batch_size, progress
        self.unreadable: list[dict[str, str]] = []

    def ask(self, queries: Sequence[Query], tags: dict[str, list[tuple[str, float]]], max_new_tokens: int,
            desc: str = "") -> list[str]:
        """The generated text per query ("" for an image that does not decode: scored as wrong)."""
        return [a.text if a is not None else "" for a in self.answers(queries, tags, max_new_tokens, desc)]

    def answers(self, queries: Sequence[Query], tags: dict[str, list[tuple[str, float]]], max_new_tokens: int,
                desc: str = "") -> list[Any]:
        """The :class:`~tuna.inference.Answer` per query (None for an image that does not decode)."""
        out: list[Any] = [None] * len(queries)
        bar = tqdm(total=len(queries), desc=desc, unit="q", disable=not self.progress, leave=False)
        for start in range(0, len(queries), self.batch_size):
            chunk = list(enumerate(queries[start:start + self.batch_size], start))
            images, keep = [], []
            for i, q in chunk:
                try:
                    images.append(decode_image(q.image.read_bytes() if q.image.is_file() else None, str(q.image)))
                    keep.append((i, q))
                except CorruptSample as err:
                    self.unreadable.append({"image": str(q.image), "reason": err.reason})
            if keep:
                answers = self.predictor.answer(
                    images, [list(q.turns) for _, q in keep], [q.question for _, q in keep],
                    [[t for t, _ in tags.get(str(q.image), [])] for _, q in keep], max_new_tokens=max_new_tokens)
                for (i, _), a in zip(keep, answers):
                    out[i] = a
            bar.update(len(chunk))
        bar.close()
        return out


_SESSION: dict[str, Any] = {}  # the retrieval session of the evaluation in progress (see evaluate_model)


def retrieved_tags(cfg: Recipe, tag_mode: str, images: Sequence[Path], name: str,
                   datastore: str | None) -> dict[str, Any]:
    """Ranked tags per eval image path (``str(path)``) for ``tag_mode`` from the tags datastore ``datastore``
    (``model.datastore``, the swap target, or None = no tags), cached under ``name`` (e.g. ``val-finer-ood``).
    Inside ``evaluate_model`` it reuses the evaluation's retrieval session; elsewhere it opens its own."""
    from tuna.retrieval.attach import attach_tags
    from tuna.retrieval.datastore import partner

    if tag_mode == "none" or datastore is None:
        return {}
    # the captions ablation reads the captions datastore over the same corpus; a corpus without one (the world's B)
    # answers with its tags
    mode = tag_mode if not (tag_mode == "captions" and partner(cfg, datastore, "captions") is None) else "tags"
    cache = layout(cfg).eval_cache(f"{name}-{mode}-{datastore}")
    unique = sorted(set(images))
    tags = attach_tags(cfg, unique, cache, mode, datastore, log=lambda s: None, session=_SESSION.get("open"))
    return {str(p): tags[k] for p, k in image_keys(unique).items() if k in tags}   # by path: MME's folders repeat names


def eval_pope(cfg: Recipe, asker: Asker, tag_mode: str, root: str = "eval",
              answers_dir: Path | None = None) -> dict[str, Any]:
    """POPE per split (ID/OOD x random/popular/adversarial) and LLaVA's mean F1 per split group, on the world's
    eval split (``root`` "eval") or its validation split ("val", world.sizes.pope_val). With ``answers_dir`` every
    answer is also written to ``pope-<group>-<split>.jsonl`` there (:func:`write_answers`)."""
    from tuna.eval.pope import pope_by_tags, pope_metrics, pope_summary
    from tuna.readers.pope import load_pope_splits

    out: dict[str, Any] = {}
    for group in sources(cfg).splits("pope", validation=root == "val"):   # a disabled split is not part of the run
        src = sources(cfg).eval_set("pope", group, validation=root == "val")
        splits = load_pope_splits(src.path)
        images = [src.images / r["image"] for rows in splits.values() for r in rows]
        tags = retrieved_tags(cfg, tag_mode, images, f"pope-{group}" if root == "eval" else f"{root}-pope-{group}",
                         cfg.model.datastore)
        per_split, by_tags = {}, {}
        for split, rows in splits.items():
            queries = [Query(src.images / r["image"], r["text"] + SHORT) for r in rows]
            answers = asker.ask(queries, tags, max_new_tokens=4, desc=f"pope {group} {split}")
            labels = [r["label"] for r in rows]
            per_split[split] = pope_metrics(answers, labels)
            shown = [[t for t, _ in tags.get(str(q.image), [])] for q in queries]
            if tag_mode != "none":
                by_tags[split] = pope_by_tags(answers, labels, [r["text"] for r in rows], shown)
            if answers_dir is not None:
                write_answers(answers_dir / f"pope-{group}-{split}.jsonl", rows, answers, split, shown)
        out[group] = {**pope_summary(per_split), "per_split": per_split, **({"by_tags": by_tags} if by_tags else {})}
    return out


def eval_finer(cfg: Recipe, asker: Asker, tag_mode: str, b_datastores: Sequence[str | None] = (),
               attrseek: bool = True, root: str = "eval") -> dict[str, Any]:
    """FINER EM per level (direct and ATTRSEEK) on ID and OOD (``model.datastore``) and domain B (each of ``b_datastores``),
    on the world's eval split (``root`` "eval") or its validation split ("val", world.sizes.finer_val).

    Each image is asked one question in the world's phrasing and that one generation is scored at the
    three levels (FINER's EM rule and the whole-word rule, ``tuna.eval.finer.finer_metrics``). FINER itself
    asks each level its own question (``tuna.eval.finer.finer_questions``); the world's instruction data
    only teaches which-kind questions answered with the fine name, so the world asks the fine level."""
    from tuna.eval.finer import attrseek_prompts, direct_prompt, finer_attrseek_questions, finer_metrics, tag_quality
    from tuna.formats import load_finer

    out: dict[str, Any] = {}
    own = cfg.model.datastore
    runs: list[tuple[str, str, str | None]] = [("id", "id", own), ("ood", "ood", own)]
    runs += [(f"b@{d or 'none'}", "b", d) for d in b_datastores]
    enabled = sources(cfg).splits("finer", validation=root == "val")
    for key, split, store in (r for r in runs if r[1] in enabled):
        src = sources(cfg).eval_set("finer", split, validation=root == "val")
        records = load_finer(src.path)
        images = [src.images / r["image"] for r in records]
        tags = retrieved_tags(cfg, tag_mode, images, f"finer-{split}" if root == "eval" else f"{root}-finer-{split}", store)
        if cfg.eval.finer_questions == "per_level":
            res = {"direct": _finer_per_level(asker, images, records, tags, key)}
        else:
            direct = [Query(img, direct_prompt(r["basic-level-lbl"])) for img, r in zip(images, records)]
            res = {"direct": finer_metrics(asker.ask(direct, tags, 16, desc=f"finer {key}"), records)}
        if store is not None and tag_mode != "none":   # what the model was given: how often its tags name the object
            res["tags"] = tag_quality([[t for t, _ in tags.get(str(img), [])] for img in images], records,
                                      top=cfg.model.whole_image_tags)
        if attrseek:
            turns = [finer_attrseek_questions(r) if cfg.eval.finer_questions == "per_level"
                     else attrseek_prompts(r["basic-level-lbl"]) for r in records]
            t1 = [Query(img, turn[0]) for img, turn in zip(images, turns)]
            first = asker.ask(t1, tags, 24, desc=f"finer {key} attrseek 1")
            t2 = [Query(img, turn[1], ((q.question, a),)) for img, turn, q, a in zip(images, turns, t1, first)]
            res["attrseek"] = finer_metrics(asker.ask(t2, tags, 12, desc=f"finer {key} attrseek 2"), records)
        out[key] = res
    return out


def _finer_per_level(asker: Asker, images: Sequence[Path], records: Sequence[dict[str, Any]], tags: dict[str, Any],
                     key: str) -> dict[str, Any]:
    """FINER's protocol: each level asked its own question (:func:`tuna.eval.finer.finer_questions`; the
    superordinate question lists the file's basic-level labels) and scored on its own generation."""
    from tuna.eval.finer import LEVELS, finer_metrics, finer_questions

    categories = sorted({r["basic-level-lbl"] if isinstance(r["basic-level-lbl"], str) else r["basic-level-lbl"][0]
                         for r in records})
    asked = [finer_questions(r, categories) for r in records]
    out: dict[str, Any] = {}
    for level in LEVELS:
        answers = asker.ask([Query(img, q[level]) for img, q in zip(images, asked)], tags, 24, desc=f"finer {key} {level}")
        scored = finer_metrics(answers, records)
        out.update({f"{level}_em": scored[f"{level}_em"], f"{level}_em_word": scored[f"{level}_em_word"]})
        if level == "fine":
            out.update({k: scored[k] for k in ("token_f1", "n", "empty")})
    return out


def eval_mme(cfg: Recipe, asker: Asker, tag_mode: str, root: str = "eval") -> dict[str, Any]:
    """MME-style accuracy / accuracy+ per subtask and the total, on ID and OOD, of the eval split (``root``
    "eval") or the validation split ("val", world.sizes.mme_val)."""
    from tuna.eval.mme import mme_metrics
    from tuna.formats import load_mme

    out = {}
    val = root == "val"
    for group in sources(cfg).splits("mme", validation=val):
        items = load_mme(sources(cfg).eval_set("mme", group, validation=val).path)
        tags = retrieved_tags(cfg, tag_mode, [i.image for i in items], f"mme-{group}" if not val else f"val-mme-{group}",
                         cfg.model.datastore)
        answers = asker.ask([Query(i.image, i.question + SHORT) for i in items], tags, 4, desc=f"mme {group}")
        out[group] = mme_metrics(items, answers)
    return out


def eval_chair(cfg: Recipe, asker: Asker, tag_mode: str, root: str = "eval", max_new_tokens: int = 48) -> dict[str, Any]:
    """CHAIR_i / CHAIR_s / recall of generated detailed descriptions against the ground-truth objects (``root``
    "val": the validation scenes), and ``cut``: how many descriptions ``max_new_tokens`` stopped before their end."""
    from tuna.eval.chair import chair_metrics, chair_vocabulary
    from tuna.readers.coco import coco_files, coco_objects_by_image, load_coco
    from tuna.readers.coco_classes import COCO_SYNONYMS
    from tuna.world.taxonomy import load_taxonomies

    out = {}
    for group in sources(cfg).splits("captions", validation=root == "val"):
        src = sources(cfg).eval_set("captions", group, validation=root == "val")
        if src.from_world:   # the world's class names; real COCO: its 80 classes and their synonyms
            a, b = load_taxonomies(sources(cfg)["taxonomy"].path.read_text())
            vocab: Any = chair_vocabulary(a, b)
        else:
            vocab = COCO_SYNONYMS
        files = coco_files(src.path, src.image_root, captions=False)
        truth = coco_objects_by_image(load_coco(files.instances))   # file name -> GT objects
        names = sorted(truth)
        tags = retrieved_tags(cfg, tag_mode, [files.images / n for n in names],
                         f"captions-{group}" if root == "eval" else f"{root}-captions-{group}", cfg.model.datastore)
        answers = asker.answers([Query(files.images / n, CAPTION_PROMPT) for n in names], tags, max_new_tokens,
                                desc=f"chair {group}")
        out[group] = chair_metrics({n: a.text if a else "" for n, a in zip(names, answers)}, truth, vocab)
        out[group].update(cut=sum(1 for a in answers if a is not None and not a.finished), max_new_tokens=max_new_tokens)
    return out


def evaluate_model(cfg: Recipe, model_dir: Path, tag_mode: str, b_datastores: Sequence[str | None] = (),
                   tasks: Sequence[str] = ("pope", "finer", "mme", "chair"), progress: bool = False,
                   log: Callable[[str], None] = print, root: str = "eval",
                   answers_dir: Path | None = None) -> dict[str, Any]:
    """Every task for one trained model on the eval splits (``root`` "eval") or, for FINER and POPE, the
    validation splits ("val"; CHAIR on the validation scenes); returns the metrics (and how long each task took).
    ``answers_dir``: POPE's answers are also written there, one file per split (:func:`write_answers`)."""
    from tuna.inference import Predictor

    predictor = Predictor(model_dir, cfg.train.system_prompt, threads=cfg.eval.threads)
    if predictor.uses_tags != (tag_mode != "none"):
        raise EvalError(f"{model_dir} was trained with tag_mode {predictor.model.config.tag_mode!r} but is evaluated with "
                        f"{tag_mode!r}; evaluate each variant with its own tag mode")
    asker = Asker(predictor, cfg.eval.batch_size, progress)
    runners = {"pope": lambda: eval_pope(cfg, asker, tag_mode, root, answers_dir),
               "finer": lambda: eval_finer(cfg, asker, tag_mode, b_datastores, cfg.eval.attrseek, root),
               "mme": lambda: eval_mme(cfg, asker, tag_mode, root),
               "chair": lambda: eval_chair(cfg, asker, tag_mode, root, cfg.eval.chair_max_new_tokens)}
    swap = cfg.eval.swap_datastore if cfg.eval.swap_datastore in b_datastores else None
    out: dict[str, Any] = {"model": str(model_dir), "tag_mode": tag_mode, "swap_datastore": swap, "seconds": {}}
    bad = [t for t in tasks if t not in runners]
    if bad:
        raise EvalError(f"unknown eval task {bad[0]!r}; known: {', '.join(runners)}")
    source = {"chair": "captions"}   # the eval task -> the data sources it reads (the others by their own name)
    unvalidated = [t for t in tasks if root != "eval" and source.get(t, t) not in VALIDATED]
    if unvalidated:
        raise EvalError(f"eval task {unvalidated[0]!r} has no validation split; validate with "
                        f"{' or '.join({s: t for t, s in source.items()}.get(v, v) for v in VALIDATED)}")
    from tuna.retrieval.attach import RetrievalSession

    # One encoder and one Milvus connection for the whole evaluation (opened only if tags are retrieved).
    _SESSION["open"] = RetrievalSession(cfg) if tag_mode in ("tags", "captions") else None
    try:
        for task in tasks:
            if not sources(cfg).splits(source.get(task, task), validation=root != "eval"):
                log(f"  {task}: skipped (every {task} split is disabled in the recipe's data: section)")
                continue
            t0 = time.perf_counter()
            out[task] = runners[task]()
            out["seconds"][task] = round(time.perf_counter() - t0, 1)
            log(f"  {task}: {out['seconds'][task]}s")
    finally:
        session = _SESSION.pop("open", None)
        if session is not None:
            session.close()
    out["unreadable_images"] = asker.unreadable
    return out


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The numbers of the summary table for one model's metrics."""
    row: dict[str, float] = {}
    if "pope" in m:
        for g in (g for g in ("id", "ood") if g in m["pope"]):   # a disabled split is not in the metrics
            row[f"pope_{g}_f1"] = m["pope"][g]["f1"]
            row[f"pope_{g}_acc"] = m["pope"][g]["accuracy"]
            if "yes_ratio" in m["pope"][g]:
                row[f"pope_{g}_yes"] = m["pope"][g]["yes_ratio"]
            by_tags = m["pope"][g].get("by_tags", {}).values()
            for part in ("named", "unnamed"):   # recall on present objects a tag names / no tag names (mean of splits)
                recalls = [b[part]["recall"] for b in by_tags if "recall" in b[part]]
                if recalls:
                    row[f"pope_{g}_recall_tag_{part}"] = sum(recalls) / len(recalls)
            adversarial = m["pope"][g].get("per_split", {}).get("adversarial")
            if adversarial:
                row[f"pope_{g}_adv_acc"] = adversarial["accuracy"]
    if "finer" in m:
        for key, res in m["finer"].items():
            row[f"finer_{key}_fine_em"] = res["direct"]["fine_em"]            # FINER's eval_fgvc.py rule
            row[f"finer_{key}_fine_em_word"] = res["direct"]["fine_em_word"]  # the whole-word rule
            row[f"finer_{key}_coarse_em"] = res["direct"]["coarse_em"]
            if "attrseek" in res:
                row[f"finer_{key}_attrseek_fine_em"] = res["attrseek"]["fine_em"]
            if "tags" in res:
                row[f"finer_{key}_gold_in_tags"] = res["tags"]["gold_in_tags"]
                row[f"finer_{key}_gold_majority"] = res["tags"]["gold_majority"]
        # Domain B as the variant is served: tags from the swapped-in datastore (whatever the recipe names it), no tags
        # for a model without them; metrics written before the name was recorded called it "B".
        swap = m.get("swap_datastore", "B" if "b@B" in m["finer"] else None)
        served = m["finer"].get(f"b@{swap}") if swap else m["finer"].get("b@none")
        if served:
            row["finer_b_fine_em"] = served["direct"]["fine_em"]
    if "mme" in m:
        for g in (g for g in ("id", "ood") if g in m["mme"]):
            row[f"mme_{g}_total"] = m["mme"][g]["total"]
    if "chair" in m:
        for g in (g for g in ("id", "ood") if g in m["chair"]):
            row[f"chair_{g}_i"] = m["chair"][g]["chair_i"]
            row[f"chair_{g}_s"] = m["chair"][g]["chair_s"]
    return row


def write_answers(path: Path, rows: Sequence[dict[str, Any]], answers: Sequence[str], category: str,
                  tags: Sequence[Sequence[str]]) -> None:
    """One JSON line per question in LLaVA's answer-file format (``question_id``, ``prompt``, ``text``: what
    ``llava/eval/eval_pope.py`` reads beside the question file), plus its ``image``, gold ``label``, ``category``
    (the POPE split) and the ``tags`` the model was shown, in the question file's order."""
    with staged_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row, text, shown in zip(rows, answers, tags, strict=True):
            f.write(json.dumps({"question_id": row["question_id"], "prompt": row["text"], "text": text,
                                "image": row["image"], "label": row["label"], "category": category,
                                "tags": list(shown)}) + "\n")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["Asker", "EvalError", "Query", "eval_chair", "eval_finer", "eval_mme", "eval_pope", "evaluate_model",
           "headline", "write_answers", "write_json"]
