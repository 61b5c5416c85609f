"""Typed recipes: every recipe loads; wrong keys, types and values fail at load with one line naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import RECIPES, SMOKE
from tuna.errors import ConfigError, TunaError
from tuna.recipe import (
    NUM_SHAPES,
    CorpusSizes,
    Recipe,
    WorldConfig,
    apply_override,
    build,
    load_recipe,
    section_fingerprint,
)


def config_error(*overrides: str, path: Path | None = SMOKE) -> str:
    """Load ``path`` with ``overrides``, expect a ConfigError, return its (one-line) message."""
    with pytest.raises(ConfigError) as info:
        load_recipe(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, f"config errors are one line: {message!r}"
    return message


# ------------------------------------------------------------------------------------------ recipes


def test_the_three_recipes_exist() -> None:
    assert {p.name for p in RECIPES} >= {"smoke.yaml", "mini.yaml", "llava7b.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_with_its_values(recipe: Path) -> None:
    cfg = load_recipe(recipe)
    assert isinstance(cfg, Recipe)
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    loaded = cfg.to_dict()

    def check(node: dict[str, Any], got: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            assert key in got, f"{path}{key} was dropped"
            if isinstance(value, dict):
                check(value, got[key], f"{path}{key}.")
            else:
                assert got[key] == value, f"{path}{key}: recipe says {value!r}, config holds {got[key]!r}"

    check(raw, loaded, "")
    # The plain form builds the same config again.
    assert build(Recipe, loaded) == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_key_in_a_recipe_has_a_comment(recipe: Path) -> None:
    uncommented = []
    for n, line in enumerate(recipe.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if ":" in stripped and "#" not in stripped:
            uncommented.append(f"{recipe.name}:{n}: {stripped}")
    assert not uncommented, "keys without a trailing # comment:\n" + "\n".join(uncommented)


def test_recipe_sizes_order() -> None:
    smoke, mini = load_recipe(SMOKE), load_recipe(SMOKE.parent / "mini.yaml")
    assert smoke.world.sizes.web < mini.world.sizes.web
    # mini: on the order of 4 x 3 x 5 fine classes, ~30% held out.
    assert mini.world.taxonomy.num_fine == 60
    assert 0.2 <= mini.world.taxonomy.num_ood / mini.world.taxonomy.num_fine <= 0.4


def test_defaults_without_a_file() -> None:
    cfg = load_recipe(None)
    assert cfg == Recipe()
    assert cfg.data_dir == Path(cfg.run.data_dir)


def test_config_error_is_a_tuna_error_with_exit_code_2() -> None:
    assert issubclass(ConfigError, TunaError)
    assert ConfigError("x").exit_code == 2


# ------------------------------------------------------------------------------------ unknown keys


def test_unknown_key_names_the_dotted_key_and_lists_allowed_keys() -> None:
    message = config_error("world.sizes.webb=5")
    assert "'world.sizes.webb'" in message
    for f in dataclasses.fields(CorpusSizes):
        assert f.name in message


def test_unknown_top_level_section() -> None:
    message = config_error("bogus_section.epochs=3")
    assert "'bogus_section'" in message
    for name in ("run", "world", "model"):
        assert name in message


def test_unknown_key_in_a_recipe_file(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("world:  # w\n  taxonomy:  # t\n    fine_per_coarze: 3  # typo\n")
    message = config_error(path=recipe)
    assert "'world.taxonomy.fine_per_coarze'" in message
    assert "fine_per_coarse" in message and "ood_fraction" in message


# -------------------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("world.image_size=big", "world.image_size", "integer"),
        ("world.workers=true", "world.workers", "integer"),  # a bool is not an int
        ("world.image_size=64.5", "world.image_size", "integer"),
        ("run.name=5", "run.name", "string"),
        ("world.taxonomy.ood_fraction=abc", "world.taxonomy.ood_fraction", "number"),
        ("model.tuner=1", "model.tuner", "true or false"),
        ("world.objects_per_image=3", "world.objects_per_image", "list of 2"),
        ("world.objects_per_image=[1, 2, 3]", "world.objects_per_image", "list of 2"),
        ("world.objects_per_image=[1, x]", "world.objects_per_image[1]", "integer"),
        ("world.sizes=5", "world.sizes", "mapping"),
        ("model.vision_tower=[a, b]", "model.vision_tower", "string"),
    ],
)
def test_wrong_type(override: str, key: str, expected: str) -> None:
    message = config_error(override)
    assert message.startswith(f"{key}:"), message
    assert expected in message


def test_int_is_accepted_where_a_number_is_expected() -> None:
    cfg = load_recipe(SMOKE, ["world.noise.omit_rate=1"])
    assert cfg.world.noise.omit_rate == 1.0 and isinstance(cfg.world.noise.omit_rate, float)


def test_optional_value_accepts_null_and_a_string() -> None:
    assert load_recipe(SMOKE, ["model.vision_tower=null"]).model.vision_tower is None
    assert load_recipe(SMOKE, ["model.vision_tower=/ckpt/clip"]).model.vision_tower == "/ckpt/clip"


@pytest.mark.parametrize("uri, fix", [("127.0.0.1:19530", "use http://127.0.0.1:19530"),
                                      ("grpc://milvus:19530", "http://host:19530")])
def test_a_milvus_uri_without_a_usable_scheme_names_the_fix(uri: str, fix: str) -> None:
    message = config_error(f"index.uri={uri}")
    assert message.startswith("index.uri:") and uri in message and fix in message


def test_milvus_uris_that_work_are_accepted() -> None:
    for uri in ("http://127.0.0.1:19530", "https://milvus.example:443", "data/shared.db"):
        assert load_recipe(SMOKE, [f"index.uri={uri}"]).index.uri == uri


# ----------------------------------------------------------------------------------- literal values


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("world.image_format=gif", "world.image_format", ["png", "jpg"]),
        ("model.projector=conv", "model.projector", ["linear", "mlp2x_gelu"]),
        ("model.tag_mode=all", "model.tag_mode", ["tags", "captions", "random", "none"]),
    ],
)
def test_value_not_allowed_lists_the_allowed_values(override: str, key: str, allowed: list[str]) -> None:
    message = config_error(override)
    assert message.startswith(f"{key}:")
    for value in allowed:
        assert value in message
    assert repr(override.split("=")[1]) in message  # and says what it got


# --------------------------------------------------------------------------------- impossible sizes


@pytest.mark.parametrize(
    "overrides, key, hint",
    [
        (["world.taxonomy.ood_fraction=1.0"], "world.taxonomy.ood_fraction", "(0, 1)"),
        (["world.taxonomy.ood_fraction=1.5"], "world.taxonomy.ood_fraction", "(0, 1)"),
        (["world.taxonomy.ood_fraction=0"], "world.taxonomy.ood_fraction", "(0, 1)"),
        # smoke: 12 fine classes in 4 coarse classes, so at most 8 can be held out; 0.9 holds out 11.
        (["world.taxonomy.ood_fraction=0.9"], "world.taxonomy.ood_fraction", "seen class"),
        # 4 coarse x 2 fine: one held out per coarse class is the most possible; 0.6 asks for 5 of 8.
        (["world.taxonomy.fine_per_coarse=2", "world.taxonomy.ood_fraction=0.6"], "world.taxonomy.ood_fraction", "seen class"),
        # 2 x 1 x 3 = 6 classes, 2 held out: POPE's OOD split cannot ask about 3 held-out objects.
        (["world.taxonomy.coarse_per_superordinate=1"], "world.taxonomy.ood_fraction", "POPE"),
        (["world.sizes.web=0"], "world.sizes.web", "1..10000000"),
        (["world.sizes.pope_images=0"], "world.sizes.pope_images", "1..10000000"),
        (["world.sizes.text_docs_per_class=-3"], "world.sizes.text_docs_per_class", "1..10000000"),
        (["world.objects_per_image=[1, 2]"], "world.objects_per_image", "max must be >= 3"),
        (["world.objects_per_image=[4, 3]"], "world.objects_per_image", "min <= max"),
        (["world.objects_per_image=[0, 4]"], "world.objects_per_image", "1 <= min"),
        (["world.objects_per_image=[1, 7]"], "world.objects_per_image", "<= 6"),
        (["world.taxonomy.fine_per_coarse=1"], "world.taxonomy.fine_per_coarse", "2..7"),
        (["world.taxonomy.superordinates=7"], "world.taxonomy.superordinates", "1..6"),
        (["world.domain_b.coarse_per_superordinate=5"], "world.domain_b.coarse_per_superordinate", "1..4"),
        (["world.image_size=16"], "world.image_size", "32..1024"),
        (["world.shard_size=0"], "world.shard_size", "1..100000"),
        (["world.workers=0"], "world.workers", "1..64"),
        (["world.noise.omit_rate=1.5"], "world.noise.omit_rate", "[0, 1]"),
        (["world.noise.corrupt_rate=0.6"], "world.noise.corrupt_rate", "0.5"),
        (["model.vision_feature_layer=0"], "model.vision_feature_layer", "-2"),
        (["model.num_tags=0"], "model.num_tags", "1..64"),
        (["run.seed=-1"], "run.seed", ">= 0"),
        (["run.name=' '"], "run.name", "non-empty"),
        (["eval.chair_max_new_tokens=0"], "eval.chair_max_new_tokens", "1..4096"),
    ],
)
def test_impossible_value(overrides: list[str], key: str, hint: str) -> None:
    message = config_error(*overrides)
    assert message.startswith(f"{key}:"), message
    assert hint in message


@pytest.mark.parametrize(
    "overrides",
    [
        # Domain A alone needs 6 x 4 = 24 coarse shapes.
        ["world.taxonomy.superordinates=6", "world.taxonomy.coarse_per_superordinate=4"],
        # 4 x 4 = 16 for A, 1 x 3 = 3 for B: 19 > 18.
        ["world.taxonomy.superordinates=4", "world.taxonomy.coarse_per_superordinate=4",
         "world.domain_b.coarse_per_superordinate=3"],
    ],
)
def test_too_many_coarse_classes_for_the_shapes(overrides: list[str]) -> None:
    message = config_error(*overrides)
    assert message.startswith("world.domain_b:")
    assert f"only {NUM_SHAPES} shapes" in message


def test_exactly_all_shapes_is_allowed() -> None:
    # 4 x 4 = 16 for A and 1 x 2 = 2 for B use the 18 shapes exactly.
    cfg = load_recipe(SMOKE, ["world.taxonomy.superordinates=4", "world.taxonomy.coarse_per_superordinate=4"])
    assert cfg.world.taxonomy.num_coarse + cfg.world.domain_b.num_coarse == NUM_SHAPES


def test_the_first_bad_value_is_reported_once() -> None:
    message = config_error("world.sizes.web=0", "world.image_size=16")
    assert message.count("world.") == 1


# ------------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    "override, expected",
    [
        ("a.b=1", {"a": {"b": 1}}),
        ("a.b=[1, 4]", {"a": {"b": [1, 4]}}),
        ("a.b=0.25", {"a": {"b": 0.25}}),
        ("a.b=hello", {"a": {"b": "hello"}}),
        ("a.b=true", {"a": {"b": True}}),
        ("a.b=null", {"a": {"b": None}}),
        ("a.b=", {"a": {"b": ""}}),
        ("a.b=x=y", {"a": {"b": "x=y"}}),  # only the first '=' splits
        ("a.c.d=2", {"a": {"b": 0, "c": {"d": 2}}}),
        ("top=3", {"a": {"b": 0}, "top": 3}),
    ],
)
def test_override_parsing(override: str, expected: dict[str, Any]) -> None:
    data: dict[str, Any] = {"a": {"b": 0}} if override.startswith(("a.c", "top")) else {"a": {}}
    apply_override(data, override)
    assert data == expected


@pytest.mark.parametrize("override", ["world.sizes.web", "=3", " =3", "noequals"])
def test_override_without_key_or_equals(override: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override({}, override)


def test_override_into_a_value_that_is_not_a_section() -> None:
    with pytest.raises(ConfigError, match="'a' is a value, not a section"):
        apply_override({"a": 1}, "a.b=2")
    message = config_error("world.image_size.x=1")
    assert "'world.image_size' is a value, not a section" in message


def test_override_with_invalid_yaml_value() -> None:
    message = config_error("world.objects_per_image=[1,")
    assert "not valid YAML" in message


def test_overrides_reach_the_typed_config() -> None:
    cfg = load_recipe(SMOKE, ["world.objects_per_image=[1, 5]", "run.seed=7", "world.taxonomy.ood_fraction=0.5",
                              "world.image_format=jpg", "run.seed=8"])
    assert cfg.world.objects_per_image == (1, 5)
    assert cfg.run.seed == 8  # the later override wins
    assert cfg.world.taxonomy.ood_fraction == 0.5
    assert cfg.world.image_format == "jpg"
    # Untouched keys keep the recipe's values.
    assert cfg.world.sizes == load_recipe(SMOKE).world.sizes


# ---------------------------------------------------------------------------------- recipe files


def test_missing_recipe_file(tmp_path: Path) -> None:
    message = config_error(path=tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


def test_recipe_with_bad_yaml_names_the_line(tmp_path: Path) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("run:  # r\n  seed: 0  # s\n  name: [unclosed  # n\n")
    message = config_error(path=recipe)
    assert "broken.yaml" in message and "not valid YAML at line" in message


def test_recipe_that_is_not_a_mapping(tmp_path: Path) -> None:
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- run\n- world\n")
    assert "must hold a mapping" in config_error(path=recipe)


def test_empty_recipe_is_the_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("# nothing\n")
    assert load_recipe(recipe) == Recipe()


def test_section_fingerprint_follows_the_values() -> None:
    a = load_recipe(SMOKE).world
    assert section_fingerprint(a) == section_fingerprint(load_recipe(SMOKE).world)
    assert section_fingerprint(a) != section_fingerprint(dataclasses.replace(a, image_size=96))
    assert isinstance(a, WorldConfig)


# ------------------------------------------------------------------------------------------ declared datastores


def test_the_world_datastores_are_declared_in_the_world_recipes() -> None:
    for path in RECIPES:
        cfg = load_recipe(path)
        world = {"A": ("A", "tags"), "B": ("B", "tags"), "A_captions": ("A", "captions")}
        if path.name == "llava7b.yaml":   # real data: CC3M's tags and captions, no second domain
            world.pop("B")
        assert {n: (d.corpus, d.values) for n, d in cfg.datastores.items()} == world, path
        assert (cfg.model.datastore, cfg.eval.swap_datastore) == ("A", "B" if "B" in world else None)
    assert list(load_recipe(None).datastores) == ["A", "B", "A_captions"]   # the schema's default: the same three


def test_a_new_datastore_with_its_own_corpus_and_index_loads() -> None:
    cfg = load_recipe(SMOKE, ["data.corpora.shop.path=/data/shop/{00000..00009}.tar", "datastores.shop.corpus=shop",
                              "datastores.shop.index.index_type=FLAT", "datastores.shop.index.top_k=3",
                              "eval.swap_datastore=shop", "serve.datastore=shop"])
    assert cfg.datastores["shop"].index.values() == {"index_type": "FLAT", "top_k": 3}
    assert cfg.data.format_of("web_shop") == "webdataset" and "web_shop" in cfg.data.names()


@pytest.mark.parametrize(("overrides", "expected"), [
    (["datastores.C.corpus=C"], "datastores.C.corpus: 'C' is not a web corpus; use A, B or declare it under data.corpora"),
    (["datastores.C.corpus=clip"], "datastores.C.corpus: must name a web corpus"),
    (["datastores.C.values=ids"], "datastores.C.values: must be one of tags, captions"),
    (["datastores.A.index.ef=2"], "datastores.A.index.ef: must be >= top_k (5)"),
    (["datastores.A.index.metric=DOT"], "datastores.A.index.metric: must be one of COSINE, IP, L2"),
    (["datastores.9x.corpus=A"], "datastores.9x: a datastore name is a letter then letters, digits or _"),
    (["model.datastore=A_captions"], "model.datastore: 'A_captions' is not a declared tags datastore"),
    (["model.datastore=Z"], "model.datastore: 'Z' is not a declared tags datastore; declared: A, B, A_captions"),
    (["eval.swap_datastore=A_captions"], "eval.swap_datastore: 'A_captions' is not a declared tags datastore"),
    (["serve.datastore=Z"], "serve.datastore: 'Z' is not declared; declared: A, B, A_captions"),
    (["data.corpora.shop.format=pope", "data.corpora.shop.path=/x"], "data.corpora.shop.format: a web corpus reads webdataset"),
    (["data.corpora.shop.format=webdataset"], "data.corpora.shop.path: the world writes no such corpus"),
    (["data.corpora.B.path=/x"], "data.corpora.B: a corpus name is a letter then letters"),
])
def test_bad_datastore_declarations_are_one_line(overrides: list[str], expected: str) -> None:
    assert expected in config_error(*overrides)


def test_a_recipe_without_datastores_is_refused() -> None:
    assert "datastores: declare at least one datastore" in config_error("datastores={}")
