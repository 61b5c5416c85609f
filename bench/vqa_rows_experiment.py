"""Issue 13 experiment (e13): rebuild an instruct.json's VQA rows with POPE-like negatives (one random, one popular =
the training set's most frequent absent class, one look-alike sibling per image) and five phrasings.

Validation result (seed 0, baseline stage 2 retrained from mini's stage 1): POPE val ID accuracy 0.529 -> 0.658
(popular 0.363 -> 0.672); OOD unchanged. The next step moves this into tuna.world.language.vqa_existence.

Usage:
  .venv/bin/python bench/vqa_rows_experiment.py data/mini/world/instruction /tmp/vqa2
  .venv/bin/tuna train --stage 2 --variant baseline run.data_dir=<copy> data.instruction.path=/tmp/vqa2/instruct.json
"""
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

src, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [r for r in json.loads((src / "instruct.json").read_text()) if r["kind"] != "vqa"]
inst = json.loads((src / "instances.json").read_text())
cats = {c["id"]: c for c in inst["categories"]}
idc = [c for c in cats.values() if c["domain"] == "A" and not c["ood"]]
present = {}
for a in inst["annotations"]:
    present.setdefault(a["image_id"], set()).add(cats[a["category_id"]]["name"])
freq = Counter(n for s in present.values() for n in s)
popular = [c["name"] for c in sorted(idc, key=lambda c: -freq[c["name"]])]
file_of = {im["file_name"]: im["id"] for im in inst["images"]}
rng = np.random.default_rng(1)


def art(n: str) -> str:
    return "an" if n[0] in "aeiou" else "a"


T = ["Is there {a} {n} in the image?", "Is there {a} {n} in this image?", "Is there {a} {n} in the image? Please answer yes or no.",
     "Is there {a} {n} in this image? Please answer yes or no.", "Does the image contain {a} {n}?"]
SUF = "\nAnswer the question using a single word or phrase."
extra = []
for r in rows:
    names = sorted(present[file_of[r["image"]]])
    coarse = {c["supercategory"] for c in idc if c["name"] in names}
    sib = [c["name"] for c in idc if c["supercategory"] in coarse and c["name"] not in names]
    absent = [c["name"] for c in idc if c["name"] not in names]
    yes = [names[i] for i in rng.permutation(len(names))[:3]]
    pools = [[absent[i] for i in rng.permutation(len(absent))], [p for p in popular if p not in names], [sib[i] for i in rng.permutation(len(sib))]]
    no = []
    for k in range(len(yes)):
        for cand in pools[k % 3] + pools[0]:
            if cand not in no:
                no.append(cand)
                break
    qs = [(n, "Yes") for n in yes] + [(n, "No") for n in no]
    qs = [qs[i] for i in rng.permutation(len(qs))]
    conv = []
    for t, (n, a) in enumerate(qs):
        q = T[int(rng.integers(len(T)))].format(a=art(n), n=n)
        conv.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + q + SUF})
        conv.append({"from": "gpt", "value": a})
    extra.append({"id": r["id"] + "-vqa", "image": r["image"], "kind": "vqa", "conversations": conv})
out.mkdir(parents=True, exist_ok=True)
(out / "instruct.json").write_text(json.dumps(rows + extra))
if not (out / "images").exists():
    (out / "images").symlink_to((src / "images").resolve())
(out / "instances.json").write_text((src / "instances.json").read_text())
print(len(rows), "+", len(extra))
