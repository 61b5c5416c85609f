"""Whether a training stage is up to date is answered without the training stack: `tuna train`, `tuna run`, a KFP
train task and a DVC stage ask before anything starts, so a no-op costs a fraction of a second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import SMOKE, World

CHECK = """
import json, sys
from tuna.layout import layout
from tuna.recipe import load_recipe
from tuna.steps import STEPS, Options
from tuna.train.freshness import fingerprint

cfg = load_recipe(sys.argv[1], [f"run.data_dir={sys.argv[2]}"])
stage1 = layout(cfg).stage("baseline", 1)
stage1.mkdir(parents=True)
(stage1 / "metrics.json").write_text(json.dumps({"fingerprint": fingerprint(cfg, "baseline", 1, cfg.train.ranks)}))
fresh = STEPS["train"].up_to_date(cfg, Options(variants=("baseline",), stages=(1,)))
stale = STEPS["train"].up_to_date(cfg, Options(variants=("baseline",), stages=(1, 2)))
heavy = sorted(m for m in ("torch", "transformers", "deepspeed", "mlflow", "pymilvus") if m in sys.modules)
print(json.dumps({"fresh": fresh, "stale": stale, "heavy": heavy}))
"""


def test_the_train_steps_up_to_date_check_imports_no_training_stack(world: World, tmp_path: Path) -> None:
    (tmp_path / "world").symlink_to(world.root)
    done = subprocess.run([sys.executable, "-c", CHECK, str(SMOKE), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"fresh": True, "stale": False, "heavy": []}
