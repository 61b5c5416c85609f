"""COCO annotation files (``instances_*.json``, ``captions_*.json``) and where a COCO source keeps them.

A ``coco_captions`` source is either the bundled world's folder (``captions.json``, ``instances.json``, ``images/``)
or a COCO release folder (``annotations/captions_val2014.json``, ``annotations/instances_val2014.json``,
``val2014/`` or ``val2017/``); the image root may also be declared (the source's ``images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.errors import DataFormatError
from tuna.readers.jsonio import read_json


@dataclass(frozen=True)
class CocoFiles:
    """The files of one COCO source."""

    captions: Path | None   # None: a folder with instances only (CHAIR reads only those)
    instances: Path
    images: Path


def _one(folder: Path, world_name: str, kind: str) -> Path:
    if (folder / world_name).is_file():
        return folder / world_name
    found = sorted((folder / "annotations").glob(f"{kind}_*.json")) + sorted(folder.glob(f"{kind}_*.json"))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise DataFormatError(f"{folder}: expected one {world_name} or annotations/{kind}_<split>.json, found {what}; "
                              "point the source at a folder holding one split")
    return found[0]


def coco_files(folder: Path, images: Path | None = None, captions: bool = True) -> CocoFiles:
    """Captions, instances and image root of a COCO source folder (``images`` overrides the image root); with
    ``captions`` False a folder without a captions file is accepted (its ``captions`` is None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: does not exist; point the source at a COCO folder (annotations/ + val2014/)")
    instances = _one(folder, "instances.json", "instances")
    if images is None:
        split = instances.stem.removeprefix("instances_") if instances.name != "instances.json" else ""
        candidates = [folder / "images", *([folder / split] if split else [])]
        images = next((c for c in candidates if c.is_dir()), candidates[-1])
    has_captions = captions or (folder / "captions.json").is_file() or any(
        [*(folder / "annotations").glob("captions_*.json"), *folder.glob("captions_*.json")])
    return CocoFiles(_one(folder, "captions.json", "captions") if has_captions else None, instances, Path(images))


def load_coco(path: Path) -> dict[str, Any]:
    """COCO instances or captions JSON, checked for the keys later steps use."""
    data = read_json(Path(path))
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a COCO object with 'images' and 'annotations', got {type(data).__name__}")
    for key in ("images", "annotations"):
        if key not in data or not isinstance(data[key], list):
            raise DataFormatError(f"{path}: COCO file lacks the '{key}' list")
    ids = set()
    for n, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DataFormatError(f"{path}: images[{n}] needs 'id' and 'file_name'")
        ids.add(im["id"])
    cats = {c.get("id") for c in data.get("categories", []) if isinstance(c, dict)}
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in ids:
            raise DataFormatError(f"{path}: annotations[{n}] refers to unknown image_id "
                                  f"{ann.get('image_id') if isinstance(ann, dict) else ann!r}")
        if "category_id" in ann and ann["category_id"] not in cats:
            raise DataFormatError(f"{path}: annotations[{n}] refers to unknown category_id {ann['category_id']!r}")
    return data


def _instances_by_image(coco: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """file_name -> (category name, annotation) of its instances, every image present (in file order)."""
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {f: [] for f in files.values()}
    for ann in coco["annotations"]:
        out[files[ann["image_id"]]].append((names[ann["category_id"]], ann))
    return out


def coco_objects_by_image(coco: dict[str, Any]) -> dict[str, list[str]]:
    """file_name -> category names of its instances (the ground truth CHAIR and POPE use)."""
    return {f: [name for name, _ in anns] for f, anns in _instances_by_image(coco).items()}


def coco_boxes_by_image(coco: dict[str, Any]) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """file_name -> (category name, [x, y, width, height] box) of its instances; DataFormatError for a box-less one."""
    out: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
    for f, anns in _instances_by_image(coco).items():
        out[f] = []
        for name, ann in anns:
            box = ann.get("bbox")
            if not (isinstance(box, list | tuple) and len(box) == 4):
                raise DataFormatError(f"annotation {ann.get('id', '?')} of {f} needs a 'bbox' [x, y, width, height], "
                                      f"got {box!r}")
            out[f].append((name, (float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
    return out


__all__ = ["CocoFiles", "coco_boxes_by_image", "coco_files", "coco_objects_by_image", "load_coco"]
