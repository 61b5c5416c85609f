"""`tuna export --format hf|llava`: a trained variant as a Hugging Face folder instead of a Triton repository.

- ``hf``: the stage-2 TUNA as ``save_pretrained`` writes it (``config.json`` with ``model_type: tuna``, safetensors,
  generation config) with its tokenizer, CLIP image processor and ``clip_tokenizer/``, and no path of the export
  machine inside. It loads with ``AutoModel`` / ``AutoModelForImageTextToText`` once ``tuna.model`` is imported
  (:mod:`tuna.model.auto`).
- ``llava``: the baseline (tag_mode none) as a plain ``LlavaForConditionalGeneration`` (``tuna.model.to_llava``)
  that transformers alone loads, with a ``LlavaProcessor`` (tokenizer + ``<image>`` token, CLIP image processor):
  when training used LLaVA's never-embedded -200, the tokenizer's own ``<image>`` is used (a LLaVA-started model's
  llava-hf tokenizer has it at 32000), else the token is appended at id V.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.serve.export import ExportError, _forget_paths, model_folder

FORMATS = ("triton", "hf", "llava")
PROCESSOR_FILES = ("preprocessor_config.json",)
LLAVA_IMAGE_TOKEN = "<image>"


def hf_export_dir(cfg: Recipe, variant: str, fmt: str) -> Path:
    """Default folder of a Hugging Face export: ``<data_dir>/serve/<variant>-<fmt>``."""
    return layout(cfg).hf_export(variant, fmt)


def _load(cfg: Recipe, variant: str) -> tuple[Any, Path]:
    from transformers.utils import logging as hf_logging

    from tuna.model import TunaForConditionalGeneration
    from tuna.variants import VARIANTS

    hf_logging.disable_progress_bar()
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    model_dir = model_folder(cfg, variant)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"no trained model at {model_dir}; run `tuna train --variant {variant}` first")
    return TunaForConditionalGeneration.from_pretrained(str(model_dir)).eval(), model_dir


def _finish(tmp: Path, target: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["files"] = {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / "export.json").write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return manifest


def export_hf(cfg: Recipe, variant: str | None = None, out: Path | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``variant``'s stage-2 TUNA as a standalone Hugging Face folder; returns the export manifest."""
    from tuna.serve.export import TOKENIZER_FILES

    variant = variant or cfg.serve.variant
    model, model_dir = _load(cfg, variant)
    target = out or hf_export_dir(cfg, variant, "hf")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _forget_paths(model.config)
    model.save_pretrained(str(tmp))
    for name in TOKENIZER_FILES + PROCESSOR_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, tmp / name)
    if (model_dir / "clip_tokenizer").is_dir():
        shutil.copytree(model_dir / "clip_tokenizer", tmp / "clip_tokenizer")
    manifest = _finish(tmp, target, {"format": "hf", "variant": variant, "model_type": "tuna",
                                     "load": "import tuna.model; AutoModel.from_pretrained(folder)"})
    log(f"exported {variant} as a Hugging Face TUNA folder -> {target} (AutoModel after `import tuna.model`)")
    return manifest


def export_llava(cfg: Recipe, variant: str = "baseline", out: Path | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the baseline as a plain ``LlavaForConditionalGeneration`` folder with a ``LlavaProcessor``."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor

    from tuna.model import to_llava

    model, model_dir = _load(cfg, variant)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = model.config.text_config.vocab_size
    known = tokenizer.get_vocab().get(LLAVA_IMAGE_TOKEN)
    if known is not None and 0 <= known < vocab and not 0 <= model.config.image_token_index < vocab:
        model.config.image_token_index = known   # a llava-hf tokenizer already has <image> (32000): use it, grow nothing
    try:
        llava = to_llava(model, add_image_token=True)
    except ValueError as err:
        raise ExportError(f"--format llava: {err} (variant {variant!r}; the baseline is `--variant baseline`)") from None
    cfg_l = llava.config
    if cfg_l.image_token_index == vocab:       # the token was appended: the tokenizer must end where the LM does
        if len(tokenizer) != vocab:
            raise ExportError(f"--format llava: the tokenizer in {model_dir} has {len(tokenizer)} tokens but the LM "
                              f"{vocab} rows, so {LLAVA_IMAGE_TOKEN} cannot take id {vocab}; export a model whose "
                              f"tokenizer covers its vocabulary")
        tokenizer.add_special_tokens({"additional_special_tokens": [LLAVA_IMAGE_TOKEN]})
    elif tokenizer.convert_ids_to_tokens(cfg_l.image_token_index) != LLAVA_IMAGE_TOKEN:
        tokenizer.add_special_tokens({"additional_special_tokens": [LLAVA_IMAGE_TOKEN]})
    if tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN) != cfg_l.image_token_index:
        raise ExportError(f"--format llava: {LLAVA_IMAGE_TOKEN} tokenises to {tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN)} "
                          f"but the model's image token is {cfg_l.image_token_index}; rebuild with image_token_index "
                          f"set to the tokenizer's {LLAVA_IMAGE_TOKEN} id")
    processor = LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(str(model_dir)), tokenizer=tokenizer,
        patch_size=cfg_l.vision_config.patch_size, vision_feature_select_strategy=cfg_l.vision_feature_select_strategy,
        image_token=LLAVA_IMAGE_TOKEN, num_additional_image_tokens=1)
    target = out or hf_export_dir(cfg, variant, "llava")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _forget_paths(cfg_l)
    llava.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    manifest = _finish(tmp, target, {"format": "llava", "variant": variant, "model_type": "llava",
                                     "image_token_index": cfg_l.image_token_index, "image_seq_length": cfg_l.image_seq_length,
                                     "load": "LlavaForConditionalGeneration.from_pretrained(folder)"})
    log(f"exported {variant} as LlavaForConditionalGeneration -> {target} (<image> = id {cfg_l.image_token_index}, "
        f"{cfg_l.image_seq_length} image tokens per image)")
    return manifest


__all__ = ["FORMATS", "export_hf", "export_llava", "hf_export_dir"]
