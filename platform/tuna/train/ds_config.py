"""DeepSpeed JSON configs: the repo's zero1/2/3 templates (LLaVA style, ``"auto"`` fields) resolved from the recipe.

``"auto"`` means "take it from the recipe": batch sizes and accumulation from ``train.stage<N>``,
clipping from ``train.gradient_clipping``, fp16/bf16 from ``train.precision``, and the ZeRO-3 bucket
sizes from the LM width (the Hugging Face Trainer's rule). A field left ``"auto"`` that nothing
resolves is an error naming it, never a silent default.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from tuna.errors import ConfigError
from tuna.recipe import Recipe


def template_path(zero_stage: int) -> Path:
    """The repo's DeepSpeed template for ``zero_stage`` (platform/tuna/train/ds_configs/zero<N>.json)."""
    return Path(str(resources.files("tuna.train") / "ds_configs" / f"zero{zero_stage}.json"))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"train.deepspeed_config: {str(path)!r} does not exist; give a DeepSpeed JSON file or null") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"train.deepspeed_config: {str(path)!r} is not valid JSON ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"train.deepspeed_config: {str(path)!r} must hold a JSON object")
    return data


def _find_auto(data: Any, path: str = "") -> list[str]:
    if isinstance(data, dict):
        return [k for key, v in data.items() for k in _find_auto(v, f"{path}.{key}" if path else key)]
    return [path] if data == "auto" else []


def resolve(cfg: Recipe, stage: int, world_size: int, hidden_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config of training stage ``stage`` on ``world_size`` ranks, every "auto" resolved."""
    sc = cfg.train.stage(stage)
    path = Path(cfg.train.deepspeed_config) if cfg.train.deepspeed_config else template_path(sc.zero_stage)
    ds = _load(path)
    zero = ds.setdefault("zero_optimization", {})
    file_stage = zero.get("stage", 0)
    if cfg.train.deepspeed_config and file_stage != sc.zero_stage:
        raise ConfigError(f"train.stage{stage}.zero_stage is {sc.zero_stage} but {str(path)!r} sets zero_optimization.stage "
                          f"{file_stage}; make them agree")
    zero["stage"] = sc.zero_stage
    if cfg.train.precision == "fp16" and cfg.train.ranks and not _has_gpu():
        raise ConfigError("train.precision: fp16 is refused by DeepSpeed on CPU; use fp32 here (bf16 on GPUs)")
    values = {
        "train_micro_batch_size_per_gpu": sc.batch_size,
        "gradient_accumulation_steps": sc.grad_accum,
        "train_batch_size": sc.batch_size * sc.grad_accum * world_size,
        "gradient_clipping": cfg.train.gradient_clipping,
    }
    for key, value in values.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ConfigError(f"{str(path)!r} sets {key} = {ds[key]} but the recipe gives {value}; set it to \"auto\"")
    for kind in ("fp16", "bf16"):
        block = ds.setdefault(kind, {})
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = cfg.train.precision == kind
    if hidden_size:
        for key, value in (("reduce_bucket_size", hidden_size * hidden_size),
                           ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
                           ("stage3_param_persistence_threshold", 10 * hidden_size)):
            if zero.get(key) == "auto":
                zero[key] = value
    left = _find_auto(ds)
    if left:
        raise ConfigError(f"{str(path)!r}: {', '.join(left)} stayed \"auto\" and nothing in the recipe resolves it; "
                          f"give a value")
    return ds


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["resolve", "template_path"]
