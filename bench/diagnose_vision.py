"""Where does the class information get lost on the vision path? (issue 13 diagnosis)

Linear probes on the frozen CLIP's features, per feature source:
  pooled        post-LayerNorm CLS of the last layer (CLIPVisionModel pooler_output)
  embed         CLIP image embedding (visual projection of pooled, L2-normalised)
  cls_L<l>      CLS token of hidden_states[l]         (l = 0 embeddings .. n layers)
  mean_L<l>     mean of the patch tokens of hidden_states[l] (CLS dropped: what the connector reads at l)
  max_L<l>      max over patch tokens
  grid_L<l>     the patch grid, flattened (P x Dv)
  grid4_L<l>    the grid average-pooled to 4x4, flattened
  conn_L<last>  CLS + the grid average-pooled to 2x2 of the last layer (what mini's connector reads, 5 tokens)

Two probes:
  fine     multinomial logistic regression for the fine class, trained on single-object web-A images
           (ground truth from the shard's .json, all 60 classes), scored on the FINER *validation*
           images (ID and OOD). C chosen on a held-out 20% of the training images.
  exist    one-vs-rest logistic regression for "is class c in the image", trained on web-A images
           (multi-label), scored POPE-style on instruction-set images (training distribution, never an
           eval split): per image 3 present + 3 absent ID classes (random absent, and adversarial =
           absent siblings of present objects); accuracy at p > 0.5 and yes-ratio.

Usage:
  .venv/bin/python bench/diagnose_vision.py --encoder /tmp/see/enc0 --world /tmp/see/world \
      --out /tmp/see/probe_enc0.json [--seed 0] [--web-shards 8]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ data


def read_web(folder: Path, shards: int) -> tuple[list[Image.Image], list[list[str]]]:
    images, objects = [], []
    for shard in sorted(folder.glob("*.tar"))[:shards]:
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if not name.endswith(".json"):
                    continue
                key = name[:-5]
                img = members.get(key + ".png") or members.get(key + ".jpg")
                if img is None:
                    continue
                try:
                    meta = json.loads(tar.extractfile(members[name]).read())
                    pil = Image.open(io.BytesIO(tar.extractfile(img).read())).convert("RGB")
                    pil.load()
                except Exception:
                    continue
                images.append(pil)
                objects.append(list(meta.get("objects", [])))
    return images, objects


def read_finer(folder: Path) -> tuple[list[Image.Image], list[str]]:
    images, labels = [], []
    for line in (folder / "finer.jsonl").read_text().splitlines():
        row = json.loads(line)
        p = folder / "images" / row["image"]
        try:
            images.append(Image.open(p).convert("RGB"))
        except Exception:
            continue
        labels.append(row["fine-level-lbl"])
    return images, labels


def read_coco(folder: Path, limit: int) -> tuple[list[Image.Image], list[list[str]]]:
    d = json.loads((folder / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in d["categories"]}
    per: dict[int, list[str]] = {}
    for a in d["annotations"]:
        per.setdefault(a["image_id"], []).append(cats[a["category_id"]])
    images, objects = [], []
    for im in d["images"][:limit]:
        images.append(Image.open(folder / "images" / im["file_name"]).convert("RGB"))
        objects.append(sorted(set(per.get(im["id"], []))))
    return images, objects


# -------------------------------------------------------------------------------------------- features


@torch.inference_mode()
def features(model, processor, images: list[Image.Image], batch: int = 256) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        px = processor(images=images[i:i + batch], return_tensors="pt")["pixel_values"]
        vo = model.vision_model(pixel_values=px, output_hidden_states=True)
        hs = vo.hidden_states
        n = len(hs)
        feats = {"pooled": vo.pooler_output,
                 "embed": F.normalize(model.visual_projection(vo.pooler_output), dim=-1)}
        for layer in range(n):
            h = hs[layer]
            p = h[:, 1:]
            g = int(round(p.shape[1] ** 0.5))
            feats[f"cls_L{layer}"] = h[:, 0]
            feats[f"mean_L{layer}"] = p.mean(1)
            feats[f"max_L{layer}"] = p.amax(1)
            grid = p.reshape(p.shape[0], g, g, -1).permute(0, 3, 1, 2)
            feats[f"grid4_L{layer}"] = F.adaptive_avg_pool2d(grid, 4).flatten(1)
            if layer >= n - 2:
                feats[f"grid_L{layer}"] = p.flatten(1)
            if layer == n - 1:  # what mini's connector reads: CLS + the grid pooled to 2x2 (vision_feature_pool 4)
                feats[f"conn_L{layer}"] = torch.cat([h[:, 0], F.adaptive_avg_pool2d(grid, 2).flatten(1)], 1)
            # post-LayerNorm patch tokens of the last layer (what a "post-norm" readout would see)
        last = model.vision_model.post_layernorm(hs[-1][:, 1:])
        feats[f"mean_L{n - 1}_postln"] = last.mean(1)
        for k, v in feats.items():
            out.setdefault(k, []).append(v.float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- probes


def _standardize(tr: np.ndarray, *rest: np.ndarray) -> list[np.ndarray]:
    mu, sd = tr.mean(0), tr.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [(x - mu) / sd for x in (tr, *rest)]


def fit_softmax(x: np.ndarray, y: np.ndarray, n_cls: int, wd: float, steps: int = 150) -> torch.Tensor:
    """Multinomial logistic regression (L2 = wd * |W|^2 / 2 per sample mean), LBFGS; returns (d+1, C) weights."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    w = torch.zeros(x.shape[1] + 1, n_cls, requires_grad=True)
    xb = torch.cat([xt, torch.ones(len(xt), 1)], 1)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, yt) + 0.5 * wd * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def predict(w: torch.Tensor, x: np.ndarray) -> np.ndarray:
    xt = torch.as_tensor(x, dtype=torch.float32)
    return (torch.cat([xt, torch.ones(len(xt), 1)], 1) @ w).numpy()


def fit_multilabel(x: np.ndarray, y: np.ndarray, wd: float, steps: int = 150) -> torch.Tensor:
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    w = torch.zeros(x.shape[1] + 1, y.shape[1], requires_grad=True)
    xb = torch.cat([xt, torch.ones(len(xt), 1)], 1)
    pos = yt.mean(0).clamp(1e-3, 1 - 1e-3)
    pos_weight = (1 - pos) / pos          # class-balanced: p > 0.5 is the balanced yes/no decision
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xb @ w, yt, pos_weight=pos_weight) + 0.5 * wd * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


WDS = (1e-4, 1e-3, 1e-2)


def fine_probe(tr_x, tr_y, tests: dict[str, tuple[np.ndarray, np.ndarray]], n_cls: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(tr_x))
    cut = int(0.8 * len(perm))
    a, b = perm[:cut], perm[cut:]
    best = None
    for wd in WDS:
        xa, xb = _standardize(tr_x[a], tr_x[b])
        acc = float((predict(fit_softmax(xa, tr_y[a], n_cls, wd), xb).argmax(1) == tr_y[b]).mean())
        if best is None or acc > best[1]:
            best = (wd, acc)
    wd = best[0]
    std = _standardize(tr_x, *[t[0] for t in tests.values()])
    w = fit_softmax(std[0], tr_y, n_cls, wd)
    res = {"wd": wd, "heldout_train_acc": round(best[1], 4)}
    for (name, (_, ty)), tx in zip(tests.items(), std[1:]):
        res[name] = round(float((predict(w, tx).argmax(1) == ty).mean()), 4)
    return res


def exist_probe(tr_x, tr_y, te_x, te_sets: dict[str, list[tuple[int, int, int]]], seed: int) -> dict:
    """te_sets: name -> list of (image index, class index, label 1/0)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(tr_x))
    cut = int(0.8 * len(perm))
    a, b = perm[:cut], perm[cut:]
    best = None
    for wd in WDS:
        xa, xb = _standardize(tr_x[a], tr_x[b])
        p = predict(fit_multilabel(xa, tr_y[a], wd), xb) > 0
        pos = tr_y[b] > 0.5
        bal = 0.5 * (p[pos].mean() + (~p[~pos]).mean())
        if best is None or bal > best[1]:
            best = (wd, float(bal))
    wd = best[0]
    xtr, xte = _standardize(tr_x, te_x)
    logits = predict(fit_multilabel(xtr, tr_y, wd), xte)
    res = {"wd": wd, "heldout_train_balanced_acc": round(best[1], 4)}
    for name, rows in te_sets.items():
        if not rows:
            continue
        idx = np.array(rows)
        s = logits[idx[:, 0], idx[:, 1]]
        lab = idx[:, 2] == 1
        yes = s > 0
        res[name] = {"acc": round(float((yes == lab).mean()), 4), "yes_ratio": round(float(yes.mean()), 4),
                     "auc": round(_auc(s, lab), 4), "n": int(len(rows))}
    return res


def _auc(s: np.ndarray, lab: np.ndarray) -> float:
    order = np.argsort(s)
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    npos, nneg = lab.sum(), (~lab).sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[lab].sum() - npos * (npos + 1) / 2) / (npos * nneg))


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--web-shards", type=int, default=8)
    ap.add_argument("--exist-images", type=int, default=1000)
    ap.add_argument("--sources", default="", help="comma list of feature sources (default: all)")
    ap.add_argument("--exist-train", choices=("web", "instruction"), default="web",
                    help="existence probe trained on web-A (default) or on instruction images after the --exist-images "
                         "test images (the distribution stage 2 trains on: 1-4 objects, uniform)")
    ap.add_argument("--exist-train-images", type=int, default=3000)
    args = ap.parse_args()
    t0 = time.perf_counter()

    from transformers import AutoImageProcessor, CLIPModel
    model = CLIPModel.from_pretrained(args.encoder).eval()
    processor = AutoImageProcessor.from_pretrained(args.encoder)
    world = Path(args.world)
    tax = json.loads((world / "taxonomy.json").read_text())["A"]["classes"]
    names = [c["name"] for c in tax]
    cidx = {n: i for i, n in enumerate(names)}
    ood = {c["name"] for c in tax if c["ood"]}
    id_names = [n for n in names if n not in ood]
    coarse = {c["name"]: c["coarse"] for c in tax}

    web_imgs, web_objs = read_web(world / "web" / "A", args.web_shards)
    web_objs = [[o for o in objs if o in cidx] for objs in web_objs]
    single = [i for i, o in enumerate(web_objs) if len(set(o)) == 1 and len(o) == 1]
    val_id = read_finer(world / "val" / "finer" / "id")
    val_ood = read_finer(world / "val" / "finer" / "ood")
    ins_imgs, ins_objs = read_coco(world / "instruction", args.exist_images + (
        args.exist_train_images if args.exist_train == "instruction" else 0))
    if args.exist_train == "instruction":   # train images after the test ones, never the same image
        ex_imgs, ex_objs = ins_imgs[args.exist_images:], ins_objs[args.exist_images:]
        ins_imgs, ins_objs = ins_imgs[:args.exist_images], ins_objs[:args.exist_images]
    print(f"web {len(web_imgs)} ({len(single)} single-object), val id {len(val_id[0])}, ood {len(val_ood[0])}, "
          f"instruction {len(ins_imgs)}  [{time.perf_counter() - t0:.0f}s]", flush=True)

    f_web = features(model, processor, web_imgs)
    f_id = features(model, processor, val_id[0])
    f_ood = features(model, processor, val_ood[0])
    f_ins = features(model, processor, ins_imgs)
    if args.exist_train == "instruction":
        f_ex = features(model, processor, ex_imgs)
        ex_ml = np.zeros((len(ex_objs), len(names)), np.float32)
        for i, objs in enumerate(ex_objs):
            for o in objs:
                if o in cidx:
                    ex_ml[i, cidx[o]] = 1
    print(f"features [{time.perf_counter() - t0:.0f}s]", flush=True)

    # fine probe data
    tr_y = np.array([cidx[web_objs[i][0]] for i in single])
    y_id = np.array([cidx[n] for n in val_id[1]])
    y_ood = np.array([cidx[n] for n in val_ood[1]])
    # existence probe data (multi-label over all 60 classes)
    ml = np.zeros((len(web_objs), len(names)), np.float32)
    for i, objs in enumerate(web_objs):
        for o in objs:
            ml[i, cidx[o]] = 1
    rng = np.random.default_rng(args.seed)
    sets: dict[str, list[tuple[int, int, int]]] = {"random": [], "adversarial": []}
    for i, objs in enumerate(ins_objs):
        present = [o for o in objs if o in cidx]
        if not present:
            continue
        yes = [present[j] for j in rng.permutation(len(present))[:3]]
        absent = [n for n in id_names if n not in present]
        rnd = [absent[j] for j in rng.permutation(len(absent))[:len(yes)]]
        sib = [n for n in absent if coarse[n] in {coarse[p] for p in present}]
        adv = [sib[j] for j in rng.permutation(len(sib))[:len(yes)]]
        for y in yes:
            sets["random"].append((i, cidx[y], 1))
            sets["adversarial"].append((i, cidx[y], 1))
        sets["random"] += [(i, cidx[n], 0) for n in rnd]
        sets["adversarial"] += [(i, cidx[n], 0) for n in adv]

    wanted = [s for s in args.sources.split(",") if s] or list(f_web)
    results: dict[str, dict] = {}
    for src in wanted:
        ts = time.perf_counter()
        x = f_web[src]
        fine = fine_probe(x[single], tr_y, {"val_id": (f_id[src], y_id), "val_ood": (f_ood[src], y_ood)},
                          len(names), args.seed)
        ex_x, ex_y = (f_ex[src], ex_ml) if args.exist_train == "instruction" else (x, ml)
        exist = exist_probe(ex_x, ex_y, f_ins[src], sets, args.seed) if not src.startswith("grid_") else None
        results[src] = {"dim": int(x.shape[1]), "fine": fine, "exist": exist}
        ex = "" if exist is None else (f" | exist rnd {exist['random']['acc']:.3f} adv {exist['adversarial']['acc']:.3f}"
                                       f" (yes {exist['random']['yes_ratio']:.2f}, auc {exist['random']['auc']:.3f}"
                                       f"/{exist['adversarial']['auc']:.3f})")
        print(f"{src:18s} d={x.shape[1]:5d} fine val_id {fine['val_id']:.3f} val_ood {fine['val_ood']:.3f}{ex} "
              f"[{time.perf_counter() - ts:.0f}s]", flush=True)

    # zero-shot for reference
    tok_path = args.encoder
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_path)
    with torch.inference_mode():
        t = tok([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
        te = F.normalize(model.get_text_features(**t).pooler_output, dim=-1).numpy()
    zs = {s: round(float(((f @ te.T).argmax(1) == y).mean()), 4) for s, f, y in
          (("val_id", f_id["embed"], y_id), ("val_ood", f_ood["embed"], y_ood))}
    out = {"encoder": args.encoder, "world": args.world, "seed": args.seed, "web_images": len(web_imgs),
           "exist_train": args.exist_train,
           "fine_train_images": len(single), "zero_shot": zs, "probes": results,
           "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"zero-shot {zs}; wrote {args.out} in {out['seconds']:.0f}s")


if __name__ == "__main__":
    main()
