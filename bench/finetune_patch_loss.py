"""Continue training a saved tiny CLIP with the patch loss (encoder.patch_loss) for a few epochs (issue 13 diagnosis).

The cheap route to patch tokens that carry objects without retraining the encoder from scratch.
Usage: .venv/bin/python bench/finetune_patch_loss.py --encoder /tmp/see/mini/encoder --out /tmp/see/enc_patch \
           [--epochs 2 --lr 3e-4 --patch-loss 1.0 --layer -2 --world-config configs/mini.yaml --data-dir /tmp/see/mini]
"""
import argparse
import dataclasses
import json
import time

import torch

torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--patch-loss", type=float, default=1.0)
    ap.add_argument("--layer", type=int, default=-2)
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from tuna.foundation import clip_train
    from tuna.foundation.clip import web_corpora
    from tuna.recipe import load_recipe

    cfg = load_recipe(args.config, [f"run.data_dir={args.data_dir}"])
    enc = dataclasses.replace(cfg.encoder, epochs=args.epochs, lr=args.lr, patch_loss=args.patch_loss,
                              patch_loss_layer=args.layer, threads=1, warmup=0.02)
    model = CLIPModel.from_pretrained(args.encoder)
    tok = AutoTokenizer.from_pretrained(args.encoder)
    proc = AutoImageProcessor.from_pretrained(args.encoder)
    t0 = time.perf_counter()
    pairs = clip_train.load_pairs(web_corpora(cfg), proc, cfg.mine.max_caption_chars, progress=False)
    cleaned = clip_train.clean_captions(pairs.captions, cfg.mine)
    curve = clip_train.train_clip(model, pairs, tok, proc, enc, args.seed, progress=False, cleaned=cleaned)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    with open(f"{args.out}/finetune.json", "w") as f:
        json.dump({"from": args.encoder, "epochs": args.epochs, "lr": args.lr, "patch_loss": args.patch_loss,
                   "layer": args.layer, "curve": {k: curve[k] for k in ("per_epoch", "steps", "train_seconds")},
                   "seconds": round(time.perf_counter() - t0, 1)}, f, indent=1)
    print("saved", args.out, curve["per_epoch"], curve["train_seconds"])


if __name__ == "__main__":
    main()
