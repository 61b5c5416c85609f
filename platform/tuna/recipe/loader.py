"""Loading a recipe: YAML plus ``key=value`` overrides, built into :class:`Recipe` with dotted-key errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tuna.errors import ConfigError
from tuna.recipe.checks import KeyCheckError
from tuna.recipe.cluster import ClusterConfig
from tuna.recipe.data import DataConfig
from tuna.recipe.datastores import NAME, DatastoreConfig, default_datastores
from tuna.recipe.plan import PlanConfig
from tuna.recipe.sections import (
    EncoderConfig,
    EvalConfig,
    IndexConfig,
    LMConfig,
    MineConfig,
    ModelConfig,
    RunConfig,
    TrackConfig,
    TrainConfig,
    WorldConfig,
)
from tuna.recipe.serving import ServeConfig


@dataclass(frozen=True)
class Recipe:
    """A whole recipe."""

    run: RunConfig = field(default_factory=RunConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    datastores: dict[str, DatastoreConfig] = field(default_factory=default_datastores)

    def __post_init__(self) -> None:
        _check_datastores(self)
        _check_sources(self)

    @property
    def data_dir(self) -> Path:
        return Path(self.run.data_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tuples become lists), the same shape as the YAML recipe."""
        return _plain(dataclasses.asdict(self))


def _check_datastores(r: Recipe) -> None:
    """The ``datastores:`` entries against each other and the keys that name them (one line per problem)."""
    names = ", ".join(r.datastores) or "none"
    if not r.datastores:
        raise ConfigError("datastores: declare at least one datastore, e.g. A: {corpus: A, values: tags}")
    for name, ds in r.datastores.items():
        if not NAME.fullmatch(name):
            raise ConfigError(f"datastores.{name}: a datastore name is a letter then letters, digits or _ (it names "
                              f"a Milvus collection and a folder)")
        if ds.corpus not in ("A", "B", *r.data.corpora):
            raise ConfigError(f"datastores.{name}.corpus: {ds.corpus!r} is not a web corpus; use A, B or declare it "
                              f"under data.corpora ({ds.corpus}: {{path: <shards>}})")
        try:
            dataclasses.replace(r.index, **ds.index.values())
        except KeyCheckError as err:
            raise ConfigError(f"datastores.{name}.index.{err.key}: {err.detail}") from None
    picked = r.datastores.get(r.model.datastore)
    if picked is None or picked.values != "tags":
        raise ConfigError(f"model.datastore: {r.model.datastore!r} is not a declared tags datastore; declared: {names}")
    swap = r.eval.swap_datastore
    if swap is not None and (swap not in r.datastores or r.datastores[swap].values != "tags"):
        raise ConfigError(f"eval.swap_datastore: {swap!r} is not a declared tags datastore; declared: {names} "
                          f"(null = no swap)")
    if r.serve.datastore is not None and r.serve.datastore not in r.datastores:
        raise ConfigError(f"serve.datastore: {r.serve.datastore!r} is not declared; declared: {names}")


def _check_sources(r: Recipe) -> None:
    """A disabled data source (``enabled: false``) that a setting of the recipe needs: one line naming both."""
    def off(name: str) -> bool:
        src = r.data.source(name)
        return src is not None and not src.enabled

    needs: list[tuple[str, tuple[str, ...], str]] = [
        ("train", ("alignment", "instruction"), "training reads them"),
        *[(f"datastores.{n}.corpus", (f"web_{d.corpus}",), "the datastore is built from it")
          for n, d in r.datastores.items()],
        ("eval.swap_datastore", ("finer_b",) if r.eval.swap_datastore else (), "the swap is scored on FINER's b split; "
                                                                             "set eval.swap_datastore: null"),
        ("eval.probes", ("taxonomy", "finer_id", "finer_ood") if r.eval.probes else (), "set eval.probes: false"),
        ("train.stage2.reading_per_class", ("taxonomy",) if r.train.stage2.reading_per_class else (),
         "the reading conversations name the taxonomy's classes; set it to 0"),
        ("lm (a tiny LM trained on the world text)", ("text", "taxonomy")
         if not (r.model.language_model or r.model.llava) else (), "name model.language_model or model.llava"),
    ]
    for setting, names, fix in needs:
        for name in names:
            if off(name):
                raise ConfigError(f"data.{name} is disabled but {setting} needs it ({fix})")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with dotted-key error messages.

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin is dict:  # dict[str, X]: a YAML mapping (cluster.node_selector)
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {value!r}")
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple and typing.get_args(tp)[-1] is Ellipsis:  # tuple[X, ...]: a YAML list of any length
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in _TYPE_NAMES:
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: must be {_TYPE_NAMES[tp]}, got {value!r}")
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a schema bug, not user input


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; every error names the dotted key ``path.key``."""
    where = path or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key '{full}'; allowed under {where}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            full = f"{path}.{name}" if path else name
            kwargs[name] = _coerce(data[name], hints[name], full)
    try:
        return cls(**kwargs)
    except KeyCheckError as err:
        full = f"{path}.{err.key}" if path else err.key
        raise ConfigError(f"{full}: {err.detail}") from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a raw recipe mapping; the value is parsed as YAML (``3``, ``0.5``, ``[1, 4]``)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. world.sizes.web=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({err.problem})") from None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_recipe(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Load a YAML recipe (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass one of configs/smoke.yaml, configs/mini.yaml, configs/llava7b.yaml")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            at = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {str(p)!r} is not valid YAML{at}; fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections (run, world, mine, encoder, index, track, model)")
        data = loaded or {}
    for override in overrides:
        apply_override(data, override)
    return build(Recipe, data)


def section_fingerprint(section: Any) -> str:
    """A stable hash of one config section, used to tell whether a step's output is up to date. Fields the
    section lists in ``_fingerprint_neutral`` (added later) count only when they differ from the value given there."""
    import hashlib
    import json

    plain = _plain(dataclasses.asdict(section))
    for name, value in getattr(section, "_fingerprint_neutral", {}).items():
        if plain.get(name) == value:
            del plain[name]
    payload = json.dumps(plain, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]
