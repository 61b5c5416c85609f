"""Stage 2's reading conversations (``train.stage2.reading_*``): tags written from the world's taxonomy and the
answers they support, on blank images or counterfactual training scenes (tuna.world.reading builds the text)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuna.errors import TrainError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.sources import sources

if TYPE_CHECKING:
    from tuna.train.data import Prepared


def world_inputs(cfg: Recipe, setting: str, instances: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The world's taxonomy and (``instances``) its instruction instances.json that ``train.stage2.<setting>`` reads;
    a one-line TrainError naming both the missing input and the fix."""
    from tuna.errors import DataFormatError
    from tuna.formats import load_coco

    src = sources(cfg)
    try:
        taxonomy = json.loads(src["taxonomy"].path.read_text(encoding="utf-8"))
        coco = load_coco(src["instruction"].folder / "instances.json") if instances else None
    except (OSError, json.JSONDecodeError, DataFormatError) as err:
        raise TrainError(f"train.stage2.{setting} needs the world's taxonomy and instruction instances ({err}); "
                         f"run `tuna world` first, or set train.stage2.{setting}=0 for other data") from None
    return taxonomy, coco


def _boxes(coco: dict[str, Any], folder: Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    from tuna.errors import DataFormatError
    from tuna.formats import coco_boxes_by_image

    try:
        return coco_boxes_by_image(coco)
    except DataFormatError as err:
        raise TrainError(f"train.stage2.reading_scenes reads {folder / 'instances.json'}: {err}; "
                         f"run `tuna world` again, or set train.stage2.reading_scenes=0") from None


def reading_rows(cfg: Recipe, tokenizer: Any, sc: Any) -> Prepared:
    """Stage 2's reading conversations: tags written from the world's taxonomy (tuna.world.reading) on a
    blank image, on a training scene of the same coarse class (``scene``: counterfactual tags, the answer
    follows the tags, not the scene's own class), or (``own``) on a scene of the named class itself when
    it has training images (seen classes), counterfactual only for the others; a share ``reading_other_coarse`` of
    them shows a training image of another coarse class instead (the answer still follows the tags)."""
    import numpy as np

    from tuna.formats import coco_objects_by_image
    from tuna.train.data import reading_examples, write_blank_image
    from tuna.world.reading import reading_samples

    src = sources(cfg)
    instruction, instruction_images = src["instruction"].folder, src["instruction"].images
    taxonomy, instances = world_inputs(cfg, "reading_per_class", sc.reading_image in ("scene", "own"))
    whole = cfg.model.whole_image_tags   # region retrieval fills the last slots: the reading tags look the same
    samples = reading_samples(taxonomy, sc.reading_per_class, cfg.run.seed + 1, whole, sc.reading_existence,
                              sc.reading_attrseek, region_tags=cfg.model.num_tags - whole, describe=sc.reading_describe)
    if instances is None:
        blank = write_blank_image(layout(cfg).reading_image(f"blank-{cfg.world.image_size}.png"),
                                  cfg.world.image_size)
        images = [blank] * len(samples)
    else:
        coarse = {c["name"]: c["coarse"] for dom in taxonomy.values() for c in dom.get("classes", [])}
        by_coarse: dict[str, list[Path]] = {}
        by_class: dict[str, list[Path]] = {}
        class_of: dict[Path, str] = {}
        for file_name, names in coco_objects_by_image(instances).items():   # in image order
            if len(names) == 1:
                path = instruction_images / file_name
                by_coarse.setdefault(coarse[names[0]], []).append(path)
                by_class.setdefault(names[0], []).append(path)
                class_of[path] = names[0]
        every = [p for paths in by_coarse.values() for p in paths]
        if not every:
            raise TrainError(f"train.stage2.reading_image=scene needs single-object instruction images; "
                             f"{instruction} has none (use reading_image=blank)")
        rng = np.random.default_rng(cfg.run.seed + 2)
        other = np.random.default_rng(cfg.run.seed + 3)   # its own stream: at reading_other_coarse=0 the rows stay as they were
        elsewhere = {c: [p for o, paths in by_coarse.items() if o != c for p in paths] for c in by_coarse}
        images = []
        for r in samples:
            pool = by_class.get(r.name) if sc.reading_image == "own" else None
            pool = pool or by_coarse.get(coarse.get(r.name, ""), every)
            if sc.reading_other_coarse and other.random() < sc.reading_other_coarse:
                pool = elsewhere.get(coarse.get(r.name, ""), every) or pool
            if r.answer == "No":   # an existence question must not ask about the object the image shows
                pool = [p for p in pool if class_of[p] != r.asked] or [p for p in every if class_of[p] != r.asked]
            images.append(pool[int(rng.integers(len(pool)))])
    return reading_examples(samples, images, tokenizer, sc.max_length, cfg.train.system_prompt)


def scene_rows(cfg: Recipe, records: Sequence[Any], tokenizer: Any, sc: Any) -> Prepared:
    """Stage 2's scene readings (``train.stage2.reading_scenes``): the world's detailed descriptions of multi-object
    instruction scenes, their classes swapped for look-alikes in the tags and the answer (tuna.world.reading)."""
    from tuna.train.data import reading_examples
    from tuna.world.reading import DescribedScene, scene_readings

    src = sources(cfg)
    taxonomy, coco = world_inputs(cfg, "reading_scenes", True)
    objects = _boxes(coco, src["instruction"].folder)
    size = {im["file_name"]: (int(im["width"]), int(im["height"])) for im in coco["images"]}
    described, paths = [], {}
    for r in records:   # the world's "detail" conversations: one prompt, the detailed description
        turns = [t["value"] for t in r.conversations]
        if r.image is not None and len(turns) == 2 and r.image.name in objects and turns[1].startswith("The image shows "):
            described.append(DescribedScene(r.image.name, turns[1], objects[r.image.name], size[r.image.name]))
            paths[r.image.name] = r.image
    try:
        pairs = scene_readings(described, taxonomy, sc.reading_scenes, cfg.run.seed + 3, cfg.model.whole_image_tags,
                               cfg.model.region_grid)
    except ValueError as err:
        raise TrainError(f"train.stage2.reading_scenes={sc.reading_scenes}: {err} in {src['instruction'].path}; "
                         f"set train.stage2.reading_scenes=0 for data without the world's detailed descriptions") from None
    return reading_examples([p for p, _ in pairs], [paths[f] for _, f in pairs], tokenizer,
                            sc.max_length, cfg.train.system_prompt)


__all__ = ["reading_rows", "scene_rows", "world_inputs"]
