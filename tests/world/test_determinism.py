"""Same seed and config -> byte-identical world (whatever the worker count); another seed -> another world."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from support import World, make_world


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def recompute_digests(root: Path) -> dict[str, str]:
    """The manifest's per-corpus digests, recomputed from the files on disk (manifest.json excluded)."""
    groups: dict[str, hashlib._Hash] = {}
    for rel, data in sorted(tree(root).items()):
        if rel == "manifest.json":
            continue
        top = "/".join(rel.split("/")[:2]) if rel.startswith(("eval/", "web/")) else rel.split("/")[0]
        groups.setdefault(top, hashlib.sha256()).update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return {k: h.hexdigest() for k, h in sorted(groups.items())}


@pytest.fixture(scope="module")
def again(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world generated a second time, same seed and config, into another folder."""
    return make_world(tmp_path_factory.mktemp("again"))


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("workers2"), "world.workers=2")


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("seed1"), "run.seed=1")


def test_smoke_runs_in_one_process(world: World) -> None:
    assert world.cfg.world.workers == 1  # so the two_workers comparison really compares 1 vs 2


def test_manifest_digests_match_the_files_on_disk(world: World) -> None:
    assert world.manifest["digests"] == recompute_digests(world.root)
    expected = {"taxonomy.json", "text", "alignment", "instruction", "web/A", "web/B",
                "eval/pope", "eval/finer", "eval/mme", "eval/captions"} | ({"val"} if world.cfg.world.sizes.finer_val else set())
    assert set(world.manifest["digests"]) == expected


def test_same_seed_same_digests(world: World, again: World) -> None:
    assert again.manifest["digests"] == world.manifest["digests"]


def test_same_seed_same_bytes(world: World, again: World) -> None:
    first, second = tree(world.root), tree(again.root)
    assert sorted(first) == sorted(second)
    different = [rel for rel in first if first[rel] != second[rel]]
    assert different == []
    # Spot checks that the comparison covered every kind of file.
    for rel in ("taxonomy.json", "manifest.json", "web/A/00000.tar", "web/A/00000.parquet", "alignment/pretrain.json",
                "instruction/instruct.json", "eval/pope/ood/world_pope_adversarial.json", "eval/finer/b/finer.jsonl",
                "text/corpus.jsonl", "alignment/images/000000000.png"):
        assert rel in first and first[rel] == second[rel]


def test_worker_count_does_not_change_the_output(world: World, two_workers: World) -> None:
    assert two_workers.cfg.world.workers == 2
    assert two_workers.manifest["digests"] == world.manifest["digests"]
    first, second = tree(world.root), tree(two_workers.root)
    assert sorted(first) == sorted(second)
    # manifest.json records the config (workers included); every data file is identical.
    assert [rel for rel in first if rel != "manifest.json" and first[rel] != second[rel]] == []
    assert two_workers.manifest["counts"] == world.manifest["counts"]
    assert two_workers.manifest["corrupt"] == world.manifest["corrupt"]


def test_another_seed_gives_another_world(world: World, other_seed: World) -> None:
    assert other_seed.manifest["digests"].keys() == world.manifest["digests"].keys()
    same = [k for k, v in other_seed.manifest["digests"].items() if world.manifest["digests"][k] == v]
    assert same == [], f"corpora unchanged by the seed: {same}"
    assert {c.name for c in other_seed.a.classes} != {c.name for c in world.a.classes}
    # Same config, so the same sizes.
    assert other_seed.manifest["counts"]["web_A"] == world.manifest["counts"]["web_A"]
