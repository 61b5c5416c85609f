"""Where does a trained TUNA lose the name of an unseen object? FINER's direct question on the validation split, each
image asked six ways (issue 13, validation splits only):

  photo        the image with its retrieved tags (what `tuna eval --validation` scores)
  gray         a uniform gray image with the same tags: what the tags alone carry
  whole_image  the image with only the whole image's tags (model.whole_image_tags; no region tags)
  clean        the image with every tag slot naming the gold class: whether the model can say the name at all
  tokens_gray    the gray image's visual tokens, but the photo in the tag path (tuner weights, tag encoder)
  tag_path_gray  the photo's visual tokens, but the gray image in the tag path

A photo score under the gray one means the vision path outvotes the tags; the last two say which image path does it.
Scored by FINER's fine-level EM rule (tuna.eval.finer.finer_metrics). The tags are always those retrieved from model.datastore, whatever the variant was
trained on (``random`` included): the question is how the model reads real tags.

Usage (after `tuna run` or `tuna train` + `tuna index` of the recipe):
  .venv/bin/python bench/diagnose_naming.py --config configs/mini.yaml [--split ood|id] [--variant tuna] [--model DIR] \
      [key=value ...]
Prints one JSON line: fine EM (percent) per way, and the n images.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tuna.eval.evaluate import retrieved_tags
    from tuna.eval.finer import direct_prompt, finer_metrics
    from tuna.formats import load_finer
    from tuna.inference import ModelFolderError, Predictor
    from tuna.layout import layout
    from tuna.recipe import load_recipe
    from tuna.samples import decode_image
    from tuna.sources import sources

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--split", default="ood", choices=("ood", "id"))
    ap.add_argument("--variant", default="tuna")
    ap.add_argument("--model", default=None, help="a stage-2 model folder instead of the variant's (e.g. a kept older one)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = load_recipe(args.config, args.overrides)
    folder = args.model or layout(cfg).model(args.variant, 2)
    try:
        predictor = Predictor(folder, cfg.train.system_prompt, threads=cfg.eval.threads)
    except ModelFolderError as err:   # one line naming the folder and the fix, no traceback
        raise SystemExit(str(err)) from None
    if not predictor.uses_tags:
        raise SystemExit(f"variant {args.variant!r} reads no tags; diagnose a tag variant (tuna, tuner_off, ...)")
    src = sources(cfg).eval_set("finer", args.split, validation=True)
    records = load_finer(src.path)
    paths = [src.images / r["image"] for r in records]
    tags = retrieved_tags(cfg, "tags", paths, f"val-finer-{args.split}", cfg.model.datastore)
    photos = [decode_image(p.read_bytes(), p.name) for p in paths]
    gray = [Image.new("RGB", im.size, (128, 128, 128)) for im in photos]
    retrieved = [[t for t, _ in tags.get(str(p), [])] for p in paths]
    gold = [r["fine-level-lbl"] if isinstance(r["fine-level-lbl"], str) else r["fine-level-lbl"][0] for r in records]
    questions = [direct_prompt(r["basic-level-lbl"]) for r in records]
    ways = {"photo": (photos, retrieved), "gray": (gray, retrieved),
            "whole_image": (photos, [t[: cfg.model.whole_image_tags] for t in retrieved]),
            "clean": (photos, [[g] * cfg.model.num_tags for g in gold]),
            "tokens_gray": (gray, retrieved, photos), "tag_path_gray": (photos, retrieved, gray)}
    out: dict[str, Any] = {"split": args.split, "variant": args.variant, "seed": cfg.run.seed, "n": len(records)}
    step = cfg.eval.batch_size
    model = predictor.model
    encode_tags = model.encode_tags
    for way, (images, tag_lists, *tag_path) in ways.items():
        answers = []
        for i in range(0, len(images), step):
            if tag_path:   # the tag path reads this other image's patches and feature (the visual tokens stay)
                with torch.no_grad():
                    other = model.encode_image(predictor.processor.pixel_values(tag_path[0][i:i + step]).to(predictor.device))
                model.encode_tags = lambda _p, _f, *a, other=other, **k: encode_tags(*other, *a, **k)
            try:
                answers += [a.text for a in predictor.answer(images[i:i + step], [[]] * len(images[i:i + step]),
                                                             questions[i:i + step], tag_lists[i:i + step], 16)]
            finally:
                model.__dict__.pop("encode_tags", None)   # the class's method again
        out[way] = round(100 * finer_metrics(answers, records)["fine_em"], 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
