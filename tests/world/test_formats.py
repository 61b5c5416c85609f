"""Every corpus the world writes parses back with the loader later steps use (tuna.formats)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from support import World
from tuna.errors import CorruptSample, DataFormatError
from tuna.formats import (
    coco_objects_by_image,
    iter_text,
    iter_web,
    load_coco,
    load_finer,
    load_llava,
    load_mme,
    load_pope,
)
from tuna.world.questions import MME_TASKS, POPE_SPLITS

OVERSIZED_BYTES = 10 * 1024  # the generator's "10 KB caption" damage


def decodes(data: bytes | None, size: int | None = None) -> bool:
    """True when ``data`` is a complete image (of ``size`` x ``size`` pixels, when given)."""
    if not data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return size is None or img.size == (size, size)
    except (OSError, SyntaxError, ValueError):
        return False


def check_image_file(path: Path, size: int) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        img.load()
        assert img.size == (size, size), path
        assert img.mode == "RGB", path


# --------------------------------------------------------------------------------------------- web


@pytest.mark.parametrize("domain, size_key", [("A", "web"), ("B", "web_b")])
def test_web_shards_parse(world: World, domain: str, size_key: str) -> None:
    samples = list(iter_web(world.root / "web" / domain))
    n = getattr(world.cfg.world.sizes, size_key)
    assert len(samples) == n == world.manifest["counts"][f"web_{domain}"]
    assert [s.key for s in samples] == [f"{i:09d}" for i in range(n)]
    shards = sorted(p.name for p in (world.root / "web" / domain).glob("*.tar"))
    assert len(shards) == -(-n // world.cfg.world.shard_size)
    assert {s.shard for s in samples} == set(shards)
    names = world.a_names if domain == "A" else world.b_names
    for s in samples:
        assert s.image_ext == world.cfg.world.image_format
        assert s.meta["key"] == s.key
        assert s.meta["width"] == s.meta["height"] == world.cfg.world.image_size
        assert s.meta["source"] == f"world-{domain}"
        assert 1 <= len(s.meta["objects"]) <= world.cfg.world.objects_per_image[1]
        assert set(s.meta["objects"]) <= names


def test_web_shard_parquet_metadata_matches_the_tar(world: World) -> None:
    import pyarrow.parquet as pq

    for domain in ("A", "B"):
        by_shard: dict[str, list[str]] = {}
        for s in iter_web(world.root / "web" / domain):
            by_shard.setdefault(s.shard, []).append(s.key)
        for shard, keys in by_shard.items():
            table = pq.read_table(world.root / "web" / domain / shard.replace(".tar", ".parquet")).to_pydict()
            assert table["key"] == keys
            assert set(table["status"]) == {"success"}
            assert set(table["width"]) == {world.cfg.world.image_size}


def test_corrupt_web_samples_are_exactly_the_listed_ones(world: World) -> None:
    listed = {c["key"]: c["kind"] for c in world.manifest["corrupt"]}
    assert len(listed) == world.manifest["counts"]["web_A_corrupt"] > 0
    # The smoke world damages samples in every way the generator knows.
    assert set(listed.values()) == {"truncated_image", "empty_caption", "non_utf8_caption", "oversized_caption"}
    limit = world.cfg.mine.max_caption_chars

    bad_caption, bad_image, oversized = set(), set(), set()
    for s in iter_web(world.root / "web" / "A"):
        try:
            text = s.text()
        except CorruptSample as err:
            assert err.key == s.key
            bad_caption.add(s.key)
        else:
            if len(s.caption) >= OVERSIZED_BYTES:
                oversized.add(s.key)
            else:
                assert len(text) <= limit, f"{s.key}: a clean caption longer than mine.max_caption_chars"
        if not decodes(s.image, world.cfg.world.image_size):
            bad_image.add(s.key)

    # Both directions: everything unreadable is listed, and everything listed is unreadable.
    assert bad_caption | bad_image | oversized == set(listed)
    assert bad_image == {k for k, kind in listed.items() if kind == "truncated_image"}
    assert bad_caption == {k for k, kind in listed.items() if kind in ("empty_caption", "non_utf8_caption")}
    assert oversized == {k for k, kind in listed.items() if kind == "oversized_caption"}
    # An oversized caption is past the limit the miner enforces, so it is quarantined there.
    for s in iter_web(world.root / "web" / "A"):
        if s.key in oversized:
            assert len(s.text()) > limit


def test_domain_b_web_corpus_is_clean(world: World) -> None:
    for s in iter_web(world.root / "web" / "B"):
        assert s.text().strip()
        assert decodes(s.image, world.cfg.world.image_size), s.key


# ------------------------------------------------------------------------------------------- llava


@pytest.mark.parametrize("rel, size_key", [("alignment/pretrain.json", "alignment"),
                                           ("instruction/instruct.json", "instruction")])
def test_llava_files_parse(world: World, rel: str, size_key: str) -> None:
    records = load_llava(world.root / rel)
    sizes = world.cfg.world.sizes
    extra = sizes.vqa + sizes.yes_no + sum(r.id.endswith("-attrseek") for r in records) if size_key == "instruction" else 0
    assert len(records) == getattr(sizes, size_key) + extra
    assert len({r.id for r in records}) == len(records)
    for r in records:
        check_image_file(r.image, world.cfg.world.image_size)
        assert r.conversations[0]["from"] == "human" and "<image>" in r.conversations[0]["value"]
        assert all("<image>" not in t["value"] for t in r.conversations[1:])
        assert len(r.conversations) % 2 == 0
        assert all(t["value"].strip() for t in r.conversations)
    if size_key == "alignment":
        assert all(len(r.conversations) == 2 for r in records)


def test_instruction_kinds(world: World) -> None:
    rows = json.loads((world.root / "instruction" / "instruct.json").read_text())
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) <= {"conversation", "detail", "reasoning", "short", "vqa", "attrseek", "yes_no"}
    assert kinds["yes_no"] == world.cfg.world.sizes.yes_no > 0
    assert {"conversation", "detail", "short"} <= set(kinds)
    assert kinds["vqa"] == world.cfg.world.sizes.vqa > 0
    assert 0.25 * world.cfg.world.sizes.attrseek <= kinds["attrseek"] <= world.cfg.world.sizes.attrseek   # a unique superordinate needed


def test_attrseek_rows_teach_the_two_turns_finer_is_asked(world: World) -> None:
    """ATTRSEEK rows: FINER's two turns as the eval asks them (tuna.eval.finer.attrseek_prompts), about an object
    whose superordinate no other object in the image shares; "Attributes: ..." its class's look, "Answer: <name>"."""
    from tuna.eval.finer import attrseek_prompts

    rows = [r for r in json.loads((world.root / "instruction" / "instruct.json").read_text()) if r["kind"] == "attrseek"]
    coco = json.loads((world.root / "instruction" / "instances.json").read_text())
    taxonomy = json.loads((world.root / "taxonomy.json").read_text())
    classes = {c["name"]: c for dom in taxonomy.values() for c in dom["classes"]}
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    image_id = {im["file_name"]: im["id"] for im in coco["images"]}
    present: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        present.setdefault(a["image_id"], []).append(cats[a["category_id"]])
    assert rows
    for r in rows:
        assert r["id"].endswith("-attrseek") and len(r["conversations"]) == 4
        q1, a1, q2, a2 = (t["value"] for t in r["conversations"])
        name = a2.removeprefix("Answer: ")
        c = classes[name]
        assert (q1, q2) == ("<image>\n" + attrseek_prompts(c["superordinate"])[0], attrseek_prompts(c["superordinate"])[1])
        objects = present[image_id[r["image"]]]
        assert name in objects and [classes[o]["superordinate"] for o in objects].count(c["superordinate"]) == 1
        assert a1.startswith("Attributes: ") and all(x in a1 for x in (c["shape"], c["pattern"], c["accent"]))


def test_yes_no_rows_are_true_of_their_image(world: World) -> None:
    """VQA-style yes/no rows beyond existence (world.sizes.yes_no): a count, a relative position and a colour per
    image, each answer checked against the image's instances (counts, box centres, instance colours); Yes and No
    about even; every question ends with LLaVA's short-answer line, about half say "Please answer yes or no."."""
    rows = [r for r in json.loads((world.root / "instruction" / "instruct.json").read_text()) if r["kind"] == "yes_no"]
    coco = json.loads((world.root / "instruction" / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    image_id = {im["file_name"]: im["id"] for im in coco["images"]}
    objects: dict[int, list[tuple[str, float, float, float, str]]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        objects.setdefault(a["image_id"], []).append((cats[a["category_id"]], x + w / 2, y + h / 2, w / 2, a["attributes"]["colour"]))
    words = {w: n for n, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven"))}
    count = re.compile(r"(?:Are there|Do you see|Is the number of) (?:(\w+) (\w+?)e?s|(\w+?)e?s (\w+))(?: in (?:the|this) image)?\?$")
    one = re.compile(r"Is there (?:exactly|only) one (\w+)(?: in (?:the|this) image)?\?$")
    where = re.compile(r"Is the (\w+) (?:placed )?(to the left of|to the right of|above|below) the (\w+)(?: in this image)?\?$")
    colour = re.compile(r"Is (?:the colour of )?the (\w+) (\w+)(?: in this image)?\?$")
    answers: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    suffixed = 0
    assert len(rows) == world.cfg.world.sizes.yes_no
    for r in rows:
        objs = objects[image_id[r["image"]]]
        names = [o[0] for o in objs]
        turns = [t["value"].removeprefix("<image>\n") for t in r["conversations"]]
        for q, a in zip(turns[::2], turns[1::2]):
            assert a in ("Yes", "No") and q.endswith("\nAnswer the question using a single word or phrase."), q
            q = q.split("\n")[0]
            suffixed += q.endswith(" Please answer yes or no.")
            q = q.removesuffix(" Please answer yes or no.")
            answers[a] += 1
            if m := one.match(q):
                kinds["count"] += 1
                assert (names.count(m[1]) == 1) == (a == "Yes"), (q, names)
            elif m := count.match(q):
                kinds["count"] += 1
                k, name = (m[1], m[2]) if m[1] else (m[4], m[3])
                assert (names.count(name) == words[k]) == (a == "Yes"), (q, names)
            elif m := where.match(q):
                kinds["position"] += 1
                (_, ax, ay, ar, _), (_, bx, by, br, _) = (next(o for o in objs if o[0] == n) for n in (m[1], m[3]))
                gap = 0.5 * (ar + br)
                truth = {"to the left of": ax < bx - gap, "to the right of": ax > bx + gap, "above": ay < by - gap,
                         "below": ay > by + gap}[m[2]]
                assert truth == (a == "Yes"), (q, objs)
            else:
                m = colour.match(q)
                assert m, q
                kinds["colour"] += 1
                assert names.count(m[1]) == 1 and (next(o[4] for o in objs if o[0] == m[1]) == m[2]) == (a == "Yes"), (q, objs)
    n = sum(answers.values())
    assert kinds["count"] == len(rows) and kinds["position"] > 0.2 * len(rows) and kinds["colour"] > 0.5 * len(rows), kinds
    assert 0.35 < answers["Yes"] / n < 0.65 and 0.3 < suffixed / n < 0.7, (answers, suffixed)


def test_vqa_rows_ask_present_and_absent_objects_in_equal_numbers(world: World) -> None:
    """LLaVA-1.5's VQA share, existence only: per image up to 3 present objects answered Yes and as many absent
    ones answered No, the absent ones POPE's three kinds in turn (random, popular, look-alike sibling), each
    question in one of five phrasings."""
    rows = json.loads((world.root / "instruction" / "instruct.json").read_text())
    coco = json.loads((world.root / "instruction" / "instances.json").read_text())
    cats = {c["id"]: c for c in coco["categories"]}
    image_id = {im["file_name"]: im["id"] for im in coco["images"]}
    present: dict[int, set[str]] = {}
    for a in coco["annotations"]:
        present.setdefault(a["image_id"], set()).add(cats[a["category_id"]]["name"])
    frequency = Counter(n for names in present.values() for n in names)
    coarse_of = {c["name"]: c["supercategory"] for c in cats.values()}
    phrasing = re.compile(r"(?:<image>\n)?(?:Is there an? (\w+) in (?:the|this) image\?(?: Please answer yes or no\.)?"
                          r"|Does the image contain an? (\w+)\?)\nAnswer the question using a single word or phrase\.")
    vqa = [r for r in rows if r["kind"] == "vqa"]
    siblings = popular = n_no = 0
    forms: Counter[str] = Counter()
    for r in vqa:
        assert r["id"].endswith("-vqa") and any(x["id"] == r["id"].removesuffix("-vqa") and x["image"] == r["image"] for x in rows)
        truth = present[image_id[r["image"]]]
        matches = [phrasing.fullmatch(t["value"]) for t in r["conversations"][0::2]]
        assert all(matches), r["conversations"]
        asked = [m.group(1) or m.group(2) for m in matches]
        forms.update(re.sub(r"an? \w+", "X", m.group(0).removeprefix("<image>\n")) for m in matches)
        answers = [t["value"] for t in r["conversations"][1::2]]
        assert answers.count("Yes") == answers.count("No") == min(3, len(truth))
        assert all((a == "Yes") == (n in truth) for n, a in zip(asked, answers))
        assert not any(c["ood"] or c["domain"] != "A" for c in cats.values() if c["name"] in asked)   # seen classes only
        no = [n for n, a in zip(asked, answers) if a == "No"]
        siblings += sum(coarse_of[n] in {coarse_of[t] for t in truth} for n in no)
        top = sorted((n for n in frequency if n not in truth), key=lambda n: -frequency[n])[:3]
        popular += sum(n in top for n in no)
        n_no += len(no)
    assert len(forms) == 5 and min(forms.values()) > 0.1 * sum(forms.values())
    # the kinds go random, popular, sibling: an image with k present objects gets the first k of them
    assert siblings >= 0.2 * n_no and popular >= 0.2 * n_no, (siblings, popular, n_no)


# -------------------------------------------------------------------------------------------- coco


def coco_files(world: World) -> list[Path]:
    return sorted(world.root.rglob("instances.json")) + sorted(world.root.rglob("captions.json"))


def test_every_coco_file_parses(world: World) -> None:
    files = coco_files(world)
    rels = {str(p.relative_to(world.root)) for p in files}
    assert rels == {"alignment/instances.json", "instruction/instances.json", "eval/pope/id/instances.json",
                    "eval/pope/ood/instances.json", "eval/captions/id/instances.json", "eval/captions/ood/instances.json",
                    "eval/captions/id/captions.json", "eval/captions/ood/captions.json",
                    "val/pope/id/instances.json", "val/pope/ood/instances.json"}
    size = world.cfg.world.image_size
    for path in files:
        coco = load_coco(path)
        images = {im["id"]: im for im in coco["images"]}
        assert len(images) == len(coco["images"]) > 0, path
        for im in coco["images"]:
            check_image_file(path.parent / "images" / im["file_name"], size)
            assert im["width"] == im["height"] == size
        if path.name == "captions.json":
            per_image = Counter(a["image_id"] for a in coco["annotations"])
            assert set(per_image) == set(images), f"{path}: an image without a caption"
            assert all(a["caption"].strip() for a in coco["annotations"])
            continue
        cats = {c["id"]: c for c in coco["categories"]}
        assert {c["name"] for c in cats.values()} == world.a_names | world.b_names
        objects = coco_objects_by_image(coco)
        assert set(objects) == {im["file_name"] for im in coco["images"]}
        assert all(objects.values()), f"{path}: an image without objects"
        for ann in coco["annotations"]:
            assert ann["category_id"] in cats
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size and w > 0 and h > 0, ann


def test_coco_files_cover_their_image_folders(world: World) -> None:
    for path in sorted(world.root.rglob("instances.json")):
        named = {im["file_name"] for im in load_coco(path)["images"]}
        on_disk = {p.name for p in (path.parent / "images").iterdir()}
        assert named == on_disk, path


# -------------------------------------------------------------------------------------- eval files


@pytest.mark.parametrize("root, size_key", [("eval", "pope_images"), ("val", "pope_val")])
@pytest.mark.parametrize("split", ["id", "ood"])
@pytest.mark.parametrize("pope", POPE_SPLITS)
def test_pope_files_parse(world: World, root: str, size_key: str, split: str, pope: str) -> None:
    path = world.root / root / "pope" / split / f"world_pope_{pope}.json"
    rows = load_pope(path)
    name = f"pope_{split}" if root == "eval" else f"pope_val_{split}"
    assert len(rows) == 6 * getattr(world.cfg.world.sizes, size_key) == world.manifest["counts"][f"{name}_{pope}"]
    assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        check_image_file(path.parent / "images" / r["image"], world.cfg.world.image_size)
        assert r["text"].startswith("Is there ") and r["text"].endswith(" in the image?")


def test_pope_validation_images_are_not_eval_images(world: World) -> None:
    """Settings are chosen on the validation split: its scenes are drawn apart from the eval split's."""
    def scenes(root: str) -> set[bytes]:
        return {p.read_bytes() for p in (world.root / root / "pope" / "id" / "images").iterdir()}
    assert scenes("val") and not scenes("val") & scenes("eval")


@pytest.mark.parametrize("split, size_key", [("id", "finer"), ("ood", "finer"), ("b", "finer_b")])
def test_finer_files_parse(world: World, split: str, size_key: str) -> None:
    path = world.root / "eval" / "finer" / split / "finer.jsonl"
    rows = load_finer(path)
    assert len(rows) == getattr(world.cfg.world.sizes, size_key)
    for r in rows:
        check_image_file(path.parent / "images" / r["image"], world.cfg.world.image_size)
        assert isinstance(r["attributes"], list) and r["attributes"]


@pytest.mark.parametrize("split", ["id", "ood"])
def test_mme_folders_parse(world: World, split: str) -> None:
    items = load_mme(world.root / "eval" / "mme" / split)
    assert len(items) == 2 * len(MME_TASKS) * world.cfg.world.sizes.mme_images
    assert {i.task for i in items} == set(MME_TASKS)
    for task in MME_TASKS:
        assert len({i.image for i in items if i.task == task}) == world.cfg.world.sizes.mme_images
    for i in items:
        check_image_file(i.image, world.cfg.world.image_size)
        assert i.question.endswith("Please answer yes or no.")


def test_text_corpus_parses(world: World) -> None:
    docs = list(iter_text(world.root / "text" / "corpus.jsonl"))
    n_classes = len(world.a.classes) + len(world.b.classes)
    assert len(docs) == world.cfg.world.sizes.text_docs_per_class * n_classes == world.manifest["counts"]["text_docs"]
    assert all(isinstance(d, str) and d.strip() for d in docs)


def test_every_image_decodes_at_the_configured_size(world: World) -> None:
    images = sorted(world.root.rglob(f"*.{world.cfg.world.image_format}"))
    assert len(images) > 100
    for path in images:
        check_image_file(path, world.cfg.world.image_size)


# -------------------------------------------------------------------------------- malformed input


def test_jsonl_line_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "pope.json"
    path.write_text('{"question_id": 1, "image": "a.png", "text": "Is there a x in the image?", "label": "yes"}\n'
                    '{"question_id": 2, "image": \n')
    with pytest.raises(DataFormatError) as info:
        load_pope(path)
    assert f"{path}:2:" in str(info.value) and "not valid JSON" in str(info.value)


def test_pope_label_must_be_yes_or_no(tmp_path: Path) -> None:
    path = tmp_path / "pope.json"
    path.write_text('{"question_id": 7, "image": "a.png", "text": "Is there a x in the image?", "label": "maybe"}\n')
    with pytest.raises(DataFormatError) as info:
        load_pope(path)
    assert str(path) in str(info.value) and "'maybe'" in str(info.value) and "question 7" in str(info.value)


def test_jsonl_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "finer.jsonl"
    path.write_text('\n{"id": "1", "image": "a.png", "basic-level-lbl": "fruit", "coarse-level-lbl": "berry"}\n')
    with pytest.raises(DataFormatError) as info:
        load_finer(path)
    assert f"{path}:2:" in str(info.value) and "fine-level-lbl" in str(info.value)


def test_jsonl_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('["a", "list"]\n')
    with pytest.raises(DataFormatError, match="expected a JSON object"):
        list(iter_text(path))


@pytest.mark.parametrize(
    "sample, problem",
    [
        ({"id": "1", "image": "a.png"}, "'id' and 'conversations'"),
        ({"image": "a.png", "conversations": []}, "'id' and 'conversations'"),
        ({"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]}, "at least one"),
        ({"id": "1", "image": "a.png", "conversations": [{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "x"}]},
         "conversations[0]"),
        ({"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]},
         "<image>"),
    ],
)
def test_malformed_llava_sample(tmp_path: Path, sample: dict, problem: str) -> None:
    path = tmp_path / "llava.json"
    good = {"id": "0", "image": "b.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    path.write_text(json.dumps([good, sample]))
    with pytest.raises(DataFormatError) as info:
        load_llava(path)
    assert f"{path}:1 (sample 1)" in str(info.value) and problem in str(info.value)   # file:line, then the index


def test_llava_file_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "llava.json"
    path.write_text('{"id": "0"}')
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        load_llava(path)


@pytest.mark.parametrize("loader", [load_llava, load_coco, load_pope, load_finer])
def test_missing_or_non_json_file(tmp_path: Path, loader) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(DataFormatError, match="file not found") as info:
        loader(missing)
    assert str(missing) in str(info.value)
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"\xff\xfe{not json")
    with pytest.raises(DataFormatError) as info:
        loader(broken)
    assert str(broken) in str(info.value)


def test_coco_annotation_with_unknown_image(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                "annotations": [{"id": 1, "image_id": 2, "category_id": 1}], "categories": []}))
    with pytest.raises(DataFormatError) as info:
        load_coco(path)
    assert str(path) in str(info.value) and "image_id 2" in str(info.value)


def test_coco_without_annotations(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataFormatError, match="'annotations'"):
        load_coco(path)


def test_coco_boxes_by_image_names_each_instance_with_its_box_and_refuses_a_boxless_one() -> None:
    from tuna.formats import coco_boxes_by_image

    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 5, "name": "dog"}, {"id": 6, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 2, 30, 40]},
                            {"id": 2, "image_id": 1, "category_id": 6, "bbox": [50, 2, 10.5, 8]}]}
    assert coco_boxes_by_image(coco) == {"a.png": [("dog", (1.0, 2.0, 30.0, 40.0)), ("cat", (50.0, 2.0, 10.5, 8.0))],
                                         "b.png": []}
    assert coco_objects_by_image(coco) == {"a.png": ["dog", "cat"], "b.png": []}
    del coco["annotations"][1]["bbox"]
    with pytest.raises(DataFormatError, match=r"annotation 2 of a.png needs a 'bbox'"):
        coco_boxes_by_image(coco)


def test_web_folder_without_shards(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError) as info:
        list(iter_web(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_web_shard_that_is_not_a_tar(tmp_path: Path) -> None:
    shard = tmp_path / "00000.tar"
    shard.write_bytes(b"this is not a tar archive at all" * 20)
    with pytest.raises(DataFormatError) as info:
        list(iter_web(tmp_path))
    assert str(shard) in str(info.value)


def test_mme_line_without_an_answer(tmp_path: Path) -> None:
    task = tmp_path / "existence"
    (task / "images").mkdir(parents=True)
    (task / "questions_answers_YN").mkdir()
    Image.new("RGB", (8, 8)).save(task / "images" / "000.png")
    qa = task / "questions_answers_YN" / "000.txt"
    qa.write_text("Is there a zedul in this image?\tYes\nIs there a kaborain in this image?\tMaybe\n")
    with pytest.raises(DataFormatError) as info:
        load_mme(tmp_path)
    assert f"{qa}:2:" in str(info.value)


def test_mme_question_without_its_image(tmp_path: Path) -> None:
    qa_dir = tmp_path / "count" / "questions_answers_YN"
    qa_dir.mkdir(parents=True)
    (tmp_path / "count" / "images").mkdir()
    (qa_dir / "001.txt").write_text("Is there exactly one zedul in this image?\tYes\n")
    with pytest.raises(DataFormatError, match="no image named 001"):
        load_mme(tmp_path)


def test_mme_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no MME subtask folders"):
        load_mme(tmp_path / "nope")
