"""tuna.steps: each step declared once; the CLI, `tuna run` and dvc.yaml agree with the declarations."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from support import REPO, SMOKE, World
from tuna.cli import VERBS
from tuna.errors import ConfigError, TunaError
from tuna.layout import layout
from tuna.recipe import load_recipe
from tuna.steps import RUN_ORDER, STEPS, Options, execute

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _expand(name: str, stage: dict) -> list[tuple[str, dict]]:
    """dvc.yaml's foreach / matrix stages -> (stage@item, body with ${item...} substituted), as DVC does."""
    def sub(value: object, item: dict | str) -> object:
        if isinstance(value, str):
            if isinstance(item, dict):
                for k, v in item.items():
                    value = value.replace(f"${{item.{k}}}", str(v))
                return value
            return value.replace("${item}", item)
        if isinstance(value, list):
            return [sub(v, item) for v in value]
        if isinstance(value, dict):
            return {sub(k, item): sub(v, item) for k, v in value.items()}
        return value

    if "foreach" in stage:   # a list of names, or a dict of name -> fields
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
        return [(f"{name}@{k}", sub(stage["do"], v)) for k, v in pairs]
    if "matrix" in stage:
        (k1, v1), (k2, v2) = stage["matrix"].items()
        body = {k: v for k, v in stage.items() if k != "matrix"}
        return [(f"{name}@{a}-{b}", sub(body, {k1: a, k2: b})) for a in v1 for b in v2]
    return [(name, stage)]


def test_every_dvc_stage_is_a_declared_step_run_by_its_verb() -> None:
    assert set(DVC) <= set(STEPS)
    for name, stage in DVC.items():
        for _, body in _expand(name, stage):
            words = shlex.split(body["cmd"])
            assert words[:2] == ["tuna", name], body["cmd"]
            assert name in VERBS and VERBS[name].help == STEPS[name].summary or name in ("train", "eval")


def test_dvc_outs_are_where_the_layout_puts_the_steps_outputs() -> None:
    for name, stage in DVC.items():
        for label, body in _expand(name, stage):
            recipe = Path(shlex.split(body["cmd"])[shlex.split(body["cmd"]).index("--config") + 1]).stem
            cfg = load_recipe(REPO / "configs" / f"{recipe}.yaml")
            words = shlex.split(body["cmd"])
            opts = Options(datastores=(words[words.index("--datastore") + 1],) if "--datastore" in words else (),
                           variants=(words[words.index("--variant") + 1],) if "--variant" in words else ("tuna", "baseline"))
            declared = {str(p) for p in STEPS[name].outputs(cfg, opts)}
            outs = {next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])}
            assert outs, label
            for out in outs:  # each DVC out lies inside a declared output (train also tracks files of stage 2)
                assert any(out == d or out.startswith(d + "/") or d.startswith(out + "/") for d in declared), (label, out)


def test_run_order_covers_the_chain_and_every_step_has_a_summary() -> None:
    assert RUN_ORDER == ("world", "encoder", "mine", "index", "lm", "train", "eval", "serve")
    for step in STEPS.values():
        assert step.summary and "\n" not in step.summary
        for source in step.inputs:
            assert source in STEPS or source in {f.name for f in __import__("dataclasses").fields(load_recipe(SMOKE).data)}


def test_options_and_execute_refuse_bad_input_in_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown variant 'llava'"):
        Options(variants=("llava",))
    with pytest.raises(ConfigError, match="stages: must be 1, 2 or both"):
        Options(stages=(3,))
    with pytest.raises(TunaError, match="unknown step 'deploy'"):
        execute("deploy", load_recipe(SMOKE))


def test_world_step_skips_when_up_to_date_and_force_redoes_it(world: World, tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    first = execute("world", cfg, Options(progress=False, log=lambda s: None))
    assert first.status == "generated" and first.meta["fingerprint"] == world.manifest["fingerprint"]
    assert STEPS["world"].up_to_date(cfg, Options())
    again = execute("world", cfg, Options(progress=False))
    assert again.status == "up to date" and again.manifest == first.manifest
    forced = execute("world", cfg, Options(force=True, progress=False, log=lambda s: None))
    assert forced.status == "generated" and forced.manifest["digests"] == first.manifest["digests"]
    assert [str(p) for p in STEPS["world"].outputs(cfg, Options())] == [str(layout(cfg).world)]
