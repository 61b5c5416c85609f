"""Each upstream layout read by the loader the world's copy goes through (fixtures: tests/upstream.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import upstream
from tuna.errors import DataFormatError
from tuna.eval.chair import chair_metrics
from tuna.formats import iter_web, load_finer, load_llava, load_mme
from tuna.readers.coco import coco_files, coco_objects_by_image, load_coco
from tuna.readers.coco_classes import COCO_CLASSES, COCO_SYNONYMS
from tuna.readers.mme import mme_group
from tuna.readers.pope import load_pope_splits, pope_split_files
from tuna.readers.web import expand_braces, shard_paths, shard_status
from tuna.samples import Quarantine

# ------------------------------------------------------------------------------------------ img2dataset


def test_brace_lists_expand_like_webdataset_urls() -> None:
    assert expand_braces("/d/{00000..00002}.tar") == ["/d/00000.tar", "/d/00001.tar", "/d/00002.tar"]
    assert expand_braces("/d/{a,b}/{8..10}.tar") == ["/d/a/8.tar", "/d/a/9.tar", "/d/a/10.tar", "/d/b/8.tar", "/d/b/9.tar", "/d/b/10.tar"]
    with pytest.raises(DataFormatError, match="runs backwards"):
        expand_braces("{3..1}")


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_img2dataset_shards_by_folder_glob_and_brace_list(tmp_path: Path, ext: str) -> None:
    for shard in range(3):
        upstream.img2dataset_shard(tmp_path, shard, 4, ext, failed=1)
    by_folder = [s.key for s in iter_web(tmp_path)]
    assert by_folder == [f"{s:05d}{i:04d}" for s in range(3) for i in range(4)]
    assert [s.key for s in iter_web(f"{tmp_path}/*.tar")] == by_folder
    assert [s.key for s in iter_web(f"{tmp_path}/{{00000..00002}}.tar")] == by_folder
    first = next(iter(iter_web(tmp_path)))
    assert first.image_ext == ext and first.text().startswith("a photo") and first.meta["status"] == "success"
    assert shard_status(tmp_path / "00000.tar") == {"success": 4, "failed_to_download": 1}


def test_missing_and_damaged_shards_are_quarantined_not_fatal(tmp_path: Path) -> None:
    upstream.img2dataset_shard(tmp_path, 0, 3)
    (tmp_path / "00001.tar").write_bytes(b"not a tar at all" * 10)
    good = upstream.img2dataset_shard(tmp_path, 2, 3)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])          # truncated mid-shard: the samples before the cut are kept
    quarantine = Quarantine()
    keys = [s.key for s in iter_web(f"{tmp_path}/{{00000..00003}}.tar", quarantine.add)]
    assert keys[:3] == ["000000000", "000000001", "000000002"] and len(keys) < 6
    kinds = quarantine.reasons()
    assert kinds["missing_shard"] == 1 and kinds["bad_shard"] == 2, quarantine.rows
    assert shard_paths(f"{tmp_path}/{{00000..00003}}.tar")[1] == [tmp_path / "00003.tar"]
    with pytest.raises(DataFormatError, match="00003.tar"):   # without a quarantine: one line naming the shard
        list(iter_web(f"{tmp_path}/{{00000..00003}}.tar"))


def test_no_shards_is_one_line_naming_the_spec(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError) as info:
        next(iter(iter_web(tmp_path / "nothing" / "*.tar")))
    assert "no WebDataset shards" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- LLaVA


def test_llava_pretrain_558k_images_under_one_root(tmp_path: Path) -> None:
    path, images = upstream.llava_pretrain(tmp_path)
    records = load_llava(path, images)
    assert [r.id for r in records] == ["004539375", "002239345", "004538901"]
    assert all(r.image is not None and r.image.is_file() for r in records)
    assert records[0].image == images / "00453" / "004539375.jpg"


def test_llava_665k_several_roots_int_ids_multi_turn_and_text_only(tmp_path: Path) -> None:
    path, data = upstream.llava_665k(tmp_path)
    records = load_llava(path, data)
    with_image = [r for r in records if r.image is not None]
    assert len(records) == 7 and len(with_image) == 6 and all(r.image.is_file() for r in with_image)
    assert {r.image.relative_to(data).parts[0] for r in with_image} == {"coco", "gqa", "ocr_vqa", "textvqa", "vg"}
    assert "2354786" in [r.id for r in records]                       # int id read as its string
    assert max(len(r.conversations) for r in records) == 4             # multi-turn kept whole
    text_only = [r for r in records if r.image is None]
    assert [r.id for r in text_only] == ["i6IyJda_0"] and text_only[0].line > 1


def test_llava_several_roots_searched_in_order(tmp_path: Path) -> None:
    path, data = upstream.llava_665k(tmp_path)
    records = load_llava(path, [tmp_path / "elsewhere", data])
    assert all(r.image is None or r.image.is_file() for r in records)


def test_text_only_samples_are_skipped_and_counted_by_training(tmp_path: Path) -> None:
    from support import word_tokenizer
    from tuna.train.data import prepare

    path, data = upstream.llava_665k(tmp_path)
    out = prepare(load_llava(path, data), word_tokenizer(), 2, 512, "chat")
    assert out.skipped.get("text_only") == 1


def test_llava_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mix.json"
    good = {"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    bad = {"id": 2, "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    path.write_text("[\n" + json.dumps(good) + ",\n\n" + json.dumps(bad) + "\n]\n")
    with pytest.raises(DataFormatError) as info:
        load_llava(path)
    assert str(info.value).startswith(f"{path}:4 (sample 1): a text-only sample") and "\n" not in str(info.value)
    jsonl = tmp_path / "mix.jsonl"
    jsonl.write_text(json.dumps(good) + "\n")
    with pytest.raises(DataFormatError, match="expected a JSON list of samples"):
        load_llava(jsonl)


# ------------------------------------------------------------------------------------------------ POPE


def test_pope_official_files_over_coco_val2014(tmp_path: Path) -> None:
    out, val = upstream.pope_official(tmp_path)
    splits = load_pope_splits(out)
    assert sorted(splits) == ["adversarial", "popular", "random"] and all(len(rows) == 9 for rows in splits.values())
    row = splits["random"][0]
    assert row == {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
                   "label": "yes"}
    assert (val / row["image"]).is_file()
    assert list(pope_split_files(out / "coco_pope_popular.json")) == ["popular"]   # one file = one split


def test_pope_file_with_another_name_says_how_to_name_it(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_text("")
    with pytest.raises(DataFormatError, match=r"\*_pope_\{random,popular,adversarial\}.json"):
        pope_split_files(path)


# ------------------------------------------------------------------------------------------------- MME


def test_mme_release_in_both_layouts(tmp_path: Path) -> None:
    items = load_mme(upstream.mme_release(tmp_path))
    assert sorted({i.task for i in items}) == ["OCR", "artwork", "celebrity", "count", "existence"]
    assert len(items) == 10 and all(i.image.is_file() and i.answer in ("Yes", "No") for i in items)
    side_by_side = [i for i in items if i.task == "OCR"]
    assert side_by_side[0].image.suffix == ".png" and side_by_side[0].question.endswith("Please answer yes or no.")
    assert next(i for i in items if i.task == "artwork").image.parent.name == "images"
    assert mme_group("OCR") == "perception" and mme_group("code_reasoning") == "cognition" and mme_group("shapes") is None


def test_mme_line_without_a_tab_names_file_and_line(tmp_path: Path) -> None:
    mme = upstream.mme_release(tmp_path)
    (mme / "count" / "000000357060.txt").write_text("Is there a train? Yes\n")
    with pytest.raises(DataFormatError, match=r"000000357060.txt:1: expected 'question<TAB>Yes\|No'"):
        load_mme(mme)


# ----------------------------------------------------------------------------------------------- FINER


def test_finer_unified_jsonl_with_list_labels_and_data_dir_placeholder(tmp_path: Path) -> None:
    path, data = upstream.finer_unified(tmp_path)
    rows = load_finer(path)
    assert [r["id"] for r in rows] == [278, 279, 280]
    assert rows[0]["fine-level-lbl"] == ["Boeing 737", "737-800"] and rows[2]["coarse-level-lbl"] == "Cessna"
    assert all((data / r["image"]).is_file() for r in rows)
    assert load_finer(path.parent) == rows      # the folder holding the one unified-*-combined.jsonl


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fine-level-lbl", 737, "fine-level-lbl must be a non-empty string or a non-empty list of strings, got int 737"),
    ("coarse-level-lbl", [], "coarse-level-lbl must be a non-empty string or a non-empty list of strings, got list []"),
    ("coarse-level-lbl", {"name": "Boeing"}, "got dict"),
    ("basic-level-lbl", ["Airplane"], "basic-level-lbl must be a non-empty string, got list"),
])
def test_finer_unexpected_label_types_are_one_line(tmp_path: Path, field: str, value: object, message: str) -> None:
    path, _ = upstream.finer_unified(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError) as info:
        load_finer(path)
    text = str(info.value)
    assert text.startswith(f"{path}:2: ") and message in text and "fix" in text and "\n" not in text


# ------------------------------------------------------------------------------------------ COCO + CHAIR


def test_coco_release_folder_and_chair_with_synonyms(tmp_path: Path) -> None:
    files = coco_files(upstream.coco_release(tmp_path))
    assert files.instances.name == "instances_val2014.json" and files.images.name == "val2014"
    truth = coco_objects_by_image(load_coco(files.instances))
    assert truth == {"COCO_val2014_000000000139.jpg": ["person", "dog"], "COCO_val2014_000000000285.jpg": ["bear"]}
    assert len(load_coco(files.captions)["annotations"]) == 2
    captions = {"COCO_val2014_000000000139.jpg": "A woman walks two puppies past a parked taxi.",
                "COCO_val2014_000000000285.jpg": "A grizzly in the grass."}
    m = chair_metrics(captions, truth, COCO_SYNONYMS)
    # woman -> person, puppies -> dog (plural of a synonym), taxi -> car (hallucinated), grizzly -> bear
    assert (m["mentions"], m["hallucinated"], m["recall"]) == (4, 1, 1.0)
    assert m["chair_s"] == 0.5
    files.captions.unlink()   # CHAIR reads only the instances: a folder without captions is one for CHAIR alone
    assert coco_files(files.instances.parent.parent, captions=False).captions is None
    with pytest.raises(DataFormatError, match="expected one captions.json or annotations/captions_<split>.json, found none"):
        coco_files(files.instances.parent.parent)


def test_coco_classes_are_cocos_80_and_each_word_names_one_class() -> None:
    from tuna.eval.chair import mention_index

    assert len(COCO_CLASSES) == 80 and COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
    words = [w for ws in COCO_SYNONYMS.values() for w in ws]
    assert len(words) == len(set(words))
    assert mention_index(COCO_SYNONYMS)[("hair", "dryer")] == "hair drier"
