"""Tiny copies of the upstream data layouts, written the way each upstream project publishes them (schemas from
img2dataset's README, haotian-liu/LLaVA docs/Data.md + llava_v1_5_mix665k.json, RUCAIBox/POPE output/coco,
MME_Benchmark_release_version as LLaVA's convert_answer_to_mme.py reads it, wjdghks950/Finer's README, COCO 2014
annotations). Images are generated, a few pixels each."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def image_bytes(fmt: str = "JPEG", colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = fmt or {".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "JPEG")
    path.write_bytes(image_bytes(kind))
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def img2dataset_shard(folder: Path, shard: int, n: int, ext: str = "jpg", failed: int = 0) -> Path:
    """``{shard:05d}.tar`` with keys ``{shard:05d}{i:04d}`` (img2dataset's key: shard id, then index in the shard),
    ``.{ext}`` + ``.txt`` + ``.json``; the parquet beside it also lists ``failed`` URLs that did not download."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shard:05d}.tar"
    rows = []
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            caption = f"a photo of a red dog number {i}"
            meta = {"url": f"http://example.com/{key}.jpg", "caption": caption, "key": key, "status": "success",
                    "error_message": None, "width": 8, "height": 8, "original_width": 640, "original_height": 480,
                    "exif": "{}", "sha256": "0" * 64}
            _add(tar, f"{key}.{ext}", image_bytes({"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]))
            _add(tar, f"{key}.txt", caption.encode())
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            rows.append(meta)
    for i in range(n, n + failed):
        key = f"{shard:05d}{i:04d}"
        rows.append({"url": f"http://example.com/{key}.jpg", "caption": "gone", "key": key, "status": "failed_to_download",
                     "error_message": "HTTP Error 404: Not Found", "width": None, "height": None, "original_width": None,
                     "original_height": None, "exif": None, "sha256": None})
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": n + failed, "successes": n, "failed_to_download": failed}))
    return path


def llava_pretrain(root: Path) -> tuple[Path, Path]:
    """LCS-558K style: blip_laion_cc_sbu_558k.json + images/<5-digit folder>/<9-digit>.jpg."""
    images = root / "LLaVA-Pretrain" / "images"
    samples = []
    for i, name in enumerate(["00453/004539375.jpg", "00223/002239345.jpg", "00453/004538901.jpg"]):
        write_image(images / name)
        samples.append({"id": name.split("/")[1].removesuffix(".jpg"), "image": name, "conversations": [
            {"from": "human", "value": "Give a brief description of the image.\n<image>" if i % 2
             else "<image>\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": f"a dog sitting on a couch {i}"}]})
    path = root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps(samples))
    return path, images


def llava_665k(root: Path) -> tuple[Path, Path]:
    """llava_v1_5_mix665k.json style under playground/data: several image roots, int and str ids, multi-turn, and a
    text-only ShareGPT sample without ``image``."""
    data = root / "playground" / "data"
    names = ["coco/train2017/000000033471.jpg", "gqa/images/2354786.jpg", "ocr_vqa/images/689852649.jpg",
             "textvqa/train_images/0a0bc91825468c45.jpg", "vg/VG_100K/2356347.jpg", "vg/VG_100K_2/2403005.jpg"]
    samples: list[dict] = []
    for i, name in enumerate(names):
        write_image(data / name)
        conv = [{"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."}]
        samples.append({"id": int(name.split("/")[-1].split(".")[0]) if name.startswith("gqa") else name.split("/")[-1].split(".")[0],
                        "image": name, "conversations": conv if i % 2 == 0 else conv[:2]})
    samples.append({"id": "i6IyJda_0", "model": "", "conversations": [
        {"from": "human", "value": "How to tell if a customer segment is well segmented? In 3 bullet points."},
        {"from": "gpt", "value": "1. Homogeneity 2. Distinctiveness 3. Stability"}]})
    path = data / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(samples, indent=2))
    return path, data


POPE_OBJECTS = ("snowboard", "dog", "fork")


def pope_official(root: Path) -> tuple[Path, Path]:
    """POPE/output/coco/coco_pope_{random,popular,adversarial}.json (JSON lines) over coco/val2014/."""
    out = root / "POPE" / "output" / "coco"
    out.mkdir(parents=True)
    val = root / "coco" / "val2014"
    images = [f"COCO_val2014_{n:012d}.jpg" for n in (310196, 42, 131089)]
    for name in images:
        write_image(val / name)
    for split in ("random", "popular", "adversarial"):
        lines = []
        qid = 1
        for name in images:
            for k, obj in enumerate(POPE_OBJECTS):
                lines.append(json.dumps({"question_id": qid, "image": name, "text": f"Is there a {obj} in the image?",
                                         "label": "yes" if k < 2 else "no"}))
                qid += 1
        (out / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    return out, val


def mme_release(root: Path) -> Path:
    """MME_Benchmark_release_version with both layouts: existence/count as image + .txt side by side, artwork and
    celebrity as images/ + questions_answers_YN/."""
    mme = root / "MME_Benchmark_release_version"
    for task, stem in (("existence", "000000006040"), ("count", "000000357060"), ("OCR", "0001")):
        write_image(mme / task / f"{stem}.{'png' if task == 'OCR' else 'jpg'}")
        (mme / task / f"{stem}.txt").write_text(
            "Is there a train in this image? Please answer yes or no.\tYes\n"
            "Is there a bed in this image? Please answer yes or no.\tNo\n")
    for task, stem in (("artwork", "14777"), ("celebrity", "tt0032138_shot_0395_img_0")):
        write_image(mme / task / "images" / f"{stem}.jpg")
        (mme / task / "questions_answers_YN").mkdir(parents=True)
        (mme / task / "questions_answers_YN" / f"{stem}.txt").write_text(
            "Does this artwork belong to the type of religious? Please answer yes or no.\tYes\n"
            "Does this artwork belong to the type of historical? Please answer yes or no.\tNo\n")
    return mme


def finer_unified(root: Path) -> tuple[Path, Path]:
    """data/fgvc-aircraft-2013b/unified-fgvc-aircraft-2013b-test-combined.jsonl (labels as lists, img_path with the
    {data_dir_path} placeholder) over data/."""
    data = root / "data"
    rows = []
    for idx, (coarse, fine, img) in enumerate([(["Boeing"], ["Boeing 737", "737-800"], "1935750"),
                                                (["Airbus"], ["A320"], "0062781"), ("Cessna", "Cessna 172", "1042824")]):
        write_image(data / "fgvc-aircraft-2013b" / "data" / "images" / f"{img}.jpg")
        rows.append({"idx": 278 + idx, "basic-level-lbl": "Airplane", "coarse-level-lbl": coarse, "fine-level-lbl": fine,
                     "img_path": f"{{data_dir_path}}/fgvc-aircraft-2013b/data/images/{img}.jpg", "metadata": {}})
    path = data / "fgvc-aircraft-2013b" / "unified-fgvc-aircraft-2013b-test-combined.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, data


def coco_release(root: Path) -> Path:
    """coco/annotations/{captions,instances}_val2014.json + coco/val2014/ (COCO 2014's layout and keys)."""
    coco = root / "coco"
    names = {139: "COCO_val2014_000000000139.jpg", 285: "COCO_val2014_000000000285.jpg"}
    for name in names.values():
        write_image(coco / "val2014" / name)
    images = [{"id": i, "file_name": n, "width": 8, "height": 8, "license": 1, "coco_url": "", "date_captured": "",
               "flickr_url": ""} for i, n in names.items()]
    cats = [{"supercategory": "person", "id": 1, "name": "person"}, {"supercategory": "animal", "id": 18, "name": "dog"},
            {"supercategory": "animal", "id": 23, "name": "bear"}]
    instances = {"info": {}, "licenses": [], "images": images, "categories": cats, "annotations": [
        {"id": 1, "image_id": 139, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16.0, "iscrowd": 0, "segmentation": []},
        {"id": 2, "image_id": 139, "category_id": 18, "bbox": [0, 0, 4, 4], "area": 16.0, "iscrowd": 0, "segmentation": []},
        {"id": 3, "image_id": 285, "category_id": 23, "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 0, "segmentation": []}]}
    captions = {"info": {}, "licenses": [], "images": images, "annotations": [
        {"id": 10, "image_id": 139, "caption": "A man walking his puppy down a street."},
        {"id": 11, "image_id": 285, "caption": "A big brown bear sitting in the grass."}]}
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_val2014.json").write_text(json.dumps(instances))
    (coco / "annotations" / "captions_val2014.json").write_text(json.dumps(captions))
    return coco
