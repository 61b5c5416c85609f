"""World knobs for the CLIP encoder's data; at their defaults (0) the world is byte-identical to before.

- world.product_share: a share of web images become single-object product photos;
- world.sizes.clip_web: an extra domain-A web crawl under web/clip that only `tuna encoder` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from support import World, make_world
from tuna.errors import ConfigError
from tuna.formats import iter_web
from tuna.recipe import load_recipe
from tuna.world.generate import _fingerprint

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def clip_crawl(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("clipweb"), "world.sizes.clip_web=150", "world.product_share=0.5")


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("products"), "world.product_share=0.5")


def _web(world: World, domain: str) -> list[tuple[list[str], str]]:
    """(object names, caption) of every web sample of one domain."""
    return [(s.meta["objects"], (s.caption or b"").decode("utf-8", "replace")) for s in iter_web(world.root / "web" / domain)]


def test_off_by_default_and_the_fingerprint_of_older_worlds_is_kept(world: World) -> None:
    cfg = world.cfg
    assert cfg.world.product_share == 0.0
    fields = dataclasses.asdict(cfg.world)
    del fields["product_share"]  # what section_fingerprint(cfg.world) hashed before the knobs existed
    del fields["sizes"]["clip_web"]
    for later in ("yes_no", "mme_val"):   # knobs added after: left out at their off value
        if fields["sizes"][later] == 0:
            del fields["sizes"][later]
    assert cfg.world.sizes.clip_web == 0 and not (world.root / "web" / "clip").exists()
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert _fingerprint(cfg) == f"{before}-seed{cfg.run.seed}" == world.manifest["fingerprint"]
    on = load_recipe(SMOKE, ["world.product_share=0.5"])
    assert _fingerprint(on) != _fingerprint(cfg)


def test_only_the_web_corpora_change(world: World, products: World) -> None:
    changed = {k for k, v in products.manifest["digests"].items() if world.manifest["digests"][k] != v}
    assert changed == {"web/A", "web/B"}
    assert products.manifest["corrupt"] == world.manifest["corrupt"]  # damage is drawn per index, apart


def test_about_that_share_of_web_images_hold_one_large_object(world: World, products: World) -> None:
    for domain in ("A", "B"):
        base, prod = _web(world, domain), _web(products, domain)
        assert len(base) == len(prod)
        swapped = [i for i, (a, b) in enumerate(zip(base, prod)) if a != b]
        assert 0.3 < len(swapped) / len(prod) < 0.7, domain
        assert all(len(prod[i][0]) == 1 for i in swapped)
        singles = sum(len(objs) == 1 for objs, _ in prod) / len(prod)
        assert singles > sum(len(objs) == 1 for objs, _ in base) / len(base) + 0.2
        # Drawn large, like the FINER images: alt-text that names a size says "large".
        sizes = {w for i in swapped for w in prod[i][1].lower().split() if w in ("small", "medium", "large")}
        assert sizes <= {"large"}, domain


def test_clip_crawl_is_an_extra_domain_a_corpus_and_changes_nothing_else(products: World, clip_crawl: World) -> None:
    digests = clip_crawl.manifest["digests"]
    assert {k: v for k, v in digests.items() if k != "web/clip"} == products.manifest["digests"]
    assert "web/clip" in digests and clip_crawl.manifest["counts"]["web_clip"] == 150
    rows = _web(clip_crawl, "clip")
    assert len(rows) == 150
    assert {n for objs, _ in rows for n in objs} <= clip_crawl.a_names
    assert rows != _web(clip_crawl, "A")[:150], "its own samples, not a copy of web A"
    singles = sum(len(objs) == 1 for objs, _ in rows) / len(rows)
    assert singles > 0.5, "world.product_share applies to it too"
    assert _fingerprint(clip_crawl.cfg) != _fingerprint(products.cfg)


def test_share_must_be_a_probability(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="world.product_share"):
        load_recipe(SMOKE, ["world.product_share=1.5"])
    with pytest.raises(ConfigError, match="world.sizes.clip_web"):
        load_recipe(SMOKE, ["world.sizes.clip_web=-1"])
    with pytest.raises(ConfigError, match="world.sizes.web"):
        load_recipe(SMOKE, ["world.sizes.web=0"])
