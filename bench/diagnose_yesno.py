"""POPE-style yes/no and seen-class naming of a trained variant on TRAINING-distribution images (never an eval split).

Images: the alignment set (stage 1 saw them with captions only; no question was ever asked about them),
ground truth from its instances.json. Per image 3 present ID classes ("yes") and 3 absent ("no"), negatives
drawn two ways: random absent ID classes, and adversarial = absent siblings (same coarse class) of present
objects. Answers are read with POPE's rule (tuna.eval.pope.parse_yes_no). Also "What is the object in the
image?" on single-object alignment images: fine-name hit rate (gold name among the answer's words).

Usage:
  .venv/bin/python bench/diagnose_yesno.py --model /tmp/see/x/train/baseline/stage2/model \
      --world /tmp/see/mini/world --out /tmp/see/yesno_x.json [--images 150] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(1)

SHORT = "\nAnswer the question using a single word or phrase."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--offset", type=int, default=3000, help="first alignment image used (skip the head)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", default="alignment", help="alignment (held out from QA) or instruction (stage-2 images)")
    ap.add_argument("--system", default="A chat between a human and an assistant.")
    args = ap.parse_args()
    t0 = time.perf_counter()

    from tuna.eval.pope import pope_metrics
    from tuna.inference import Predictor
    from tuna.world.language import article

    world = Path(args.world)
    tax = json.loads((world / "taxonomy.json").read_text())["A"]["classes"]
    coarse = {c["name"]: c["coarse"] for c in tax}
    id_names = [c["name"] for c in tax if not c["ood"]]
    d = json.loads((world / args.set / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in d["categories"]}
    per: dict[int, list[str]] = {}
    for a in d["annotations"]:
        per.setdefault(a["image_id"], []).append(cats[a["category_id"]])
    ims = d["images"][args.offset:]
    multi = [im for im in ims if len(set(per[im["id"]])) >= 1][: args.images]
    single = [im for im in ims if len(per[im["id"]]) == 1][: args.images]

    predictor = Predictor(args.model, args.system, threads=1)
    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[tuple[str, str, str]]] = {"random": [], "adversarial": []}
    for im in multi:
        present = sorted(set(per[im["id"]]))
        yes = [present[j] for j in rng.permutation(len(present))[:3]]
        absent = [n for n in id_names if n not in present]
        sib = [n for n in absent if coarse[n] in {coarse[p] for p in present}] or absent
        for split, pool in (("random", absent), ("adversarial", sib)):
            no = [pool[j] for j in rng.permutation(len(pool))[:len(yes)]]
            rows[split] += [(im["file_name"], y, "yes") for y in yes] + [(im["file_name"], n, "no") for n in no]

    def ask(items: list[tuple[str, str]], max_new: int) -> list[str]:
        out = []
        for s in range(0, len(items), 32):
            chunk = items[s:s + 32]
            imgs = [Image.open(world / args.set / "images" / f).convert("RGB") for f, _ in chunk]
            ans = predictor.answer(imgs, [[] for _ in chunk], [q for _, q in chunk], [[] for _ in chunk],
                                   max_new_tokens=max_new)
            out += [a.text for a in ans]
        return out

    res: dict[str, object] = {"model": args.model, "seed": args.seed, "set": args.set, "images": len(multi)}
    for split, rs in rows.items():
        answers = ask([(f, f"Is there {article(o)} {o} in the image?{SHORT}") for f, o, _ in rs], 4)
        m = pope_metrics(answers, [lab for _, _, lab in rs])
        res[f"pope_{split}"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
        res[f"pope_{split}_examples"] = [[o, lab, a] for (_, o, lab), a in list(zip(rs, answers))[:6]]
        print(f"{split}: acc {m['accuracy']:.3f} f1 {m['f1']:.3f} yes {m['yes_ratio']:.2f} [{time.perf_counter() - t0:.0f}s]",
              flush=True)
    answers = ask([(im["file_name"], "What is the object in the image?") for im in single], 12)
    gold = [per[im["id"]][0] for im in single]
    hit = [g in re.findall(r"[a-z]+", a.lower()) for g, a in zip(gold, answers)]
    coarse_hit = [any(coarse.get(w) == coarse[g] for w in re.findall(r"[a-z]+", a.lower())) for g, a in zip(gold, answers)]
    res["naming_single_object"] = {"fine_hit": round(float(np.mean(hit)), 4),
                                   "coarse_of_named_class_right": round(float(np.mean(coarse_hit)), 4),
                                   "n": len(single), "examples": list(zip(gold[:8], answers[:8]))}
    print(f"naming: fine {np.mean(hit):.3f}, coarse-consistent {np.mean(coarse_hit):.3f} (n={len(single)})")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out} in {res['seconds']:.0f}s")


if __name__ == "__main__":
    main()
