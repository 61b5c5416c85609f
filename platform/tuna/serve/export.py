"""`tuna export`: a trained model folder -> a Triton model repository (and, with --trtllm, its TensorRT-LLM GPU twin).

Layout (``<data_dir>/serve/<variant>/``)::

    model_repository/            what `tuna serve` and the Helm chart's init container load
      tuna/config.pbtxt          the ensemble (public inputs/outputs)
      preprocessing/             python: image bytes -> pixels, question -> prompt ids
      retrieval/                 python: CLIP -> Milvus -> tag encoder + tuner -> prompt table + provenance;
                                 assets: the prompt encoder (no LM layers) and the Milvus Lite datastores
      tensorrt_llm/              python on CPU: the LM on ids + prompt table (serve.engine hf or vllm)
      postprocessing/            python: token ids -> text, provenance passed on
    trtllm/model_repository/     with --trtllm: the same ensemble for GPUs; its tensorrt_llm step runs TensorRT-LLM's
                                 PyTorch LLM API laid out like TensorRT-LLM's llmapi model (1/model.yaml, no engine
                                 build: tuna.serve.llmapi_repository)
    export.json                  what was exported: variant, model digest, datastore versions, file digests

Exports are deterministic: the same model and recipe give byte-identical repositories. The folder is
self-contained (no path of the export machine inside): copied or moved elsewhere, it serves the same.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tuna.errors import TunaError
from tuna.layout import Layout, layout
from tuna.recipe import Recipe
from tuna.serve import llmapi_repository, model_config

EXPORT_VERSION = "tuna.serve/2"   # 2: the retrieval step holds the prompt encoder and the datastores
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
BACKEND_CLASSES = {
    "preprocessing": "PreprocessingModel", "retrieval": "RetrievalModel",
    "tensorrt_llm": "LLMModel", "postprocessing": "PostprocessingModel",
}


class ExportError(TunaError):
    """The model or datastores to export are missing or do not fit together."""


def model_folder(cfg: Recipe, variant: str | None = None) -> Path:
    """The stage-2 model folder `tuna train` wrote for ``variant`` (default: serve.variant)."""
    return layout(cfg).model(variant or cfg.serve.variant, 2)


def export_dir(cfg: Recipe, variant: str | None = None) -> Path:
    return layout(cfg).export(variant or cfg.serve.variant)


def repository_dir(cfg: Recipe, variant: str | None = None) -> Path:
    return layout(cfg).repository(variant or cfg.serve.variant)


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _datastores(cfg: Recipe, tag_mode: str, clip_dim: int) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The datastores a request may pick (name -> version info) and the default one."""
    from tuna.retrieval.attach import datastore_fingerprint, source_of
    from tuna.retrieval.datastore import declared, read_manifest

    if tag_mode == "none":
        return {}, None
    specs = declared(cfg)
    default = cfg.serve.datastore or source_of(cfg, tag_mode)
    values = "captions" if tag_mode == "captions" else "tags"   # what the model was trained to read
    wanted = [default] + [n for n, s in specs.items() if s.values == values and n != default]
    found: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name not in specs:
            raise ExportError(f"serve.datastore: unknown datastore {name!r}; the recipe declares {', '.join(specs)}")
        manifest = read_manifest(cfg, name)
        if manifest is None:
            if name == default:
                raise ExportError(f"datastore {name!r} is not built under {layout(cfg).datastore(name)}; "
                                  f"run `tuna index --config <recipe>` first")
            continue
        dim = int(manifest["encoder"]["dim"])
        if dim != clip_dim:
            raise ExportError(f"datastore {name!r} holds {dim}-d keys but the model's CLIP embeds in {clip_dim}-d: the "
                              f"model and datastore come from different encoders; rebuild with `tuna index --rebuild`")
        found[name] = {"version": datastore_fingerprint(cfg, name), "rows": manifest["rows"],
                       "values": manifest["values"], "collection": manifest["collection"]}
    return found, default


def _serve_fingerprint(cfg: Recipe) -> str:
    """What in the recipe shapes the exported files: the serve section, the system prompt, the index settings."""
    from tuna.recipe import section_fingerprint

    return "-".join(section_fingerprint(x) for x in (cfg.serve, cfg.index)) + "-" + \
        hashlib.sha256(cfg.train.system_prompt.encode()).hexdigest()[:8]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _copy_files(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _recipe(cfg: Recipe) -> str:
    data = cfg.to_dict()
    data["run"]["data_dir"] = "."   # the retrieval step sets its own folder (the datastores are copied into it)
    data["index"]["retries"] = min(cfg.index.retries, 1)          # a request fails fast when Milvus is down
    data["index"]["backoff_seconds"] = min(cfg.index.backoff_seconds, 0.2)
    return yaml.safe_dump(data, sort_keys=True)


def _forget_paths(config: Any) -> None:
    """Blank ``_name_or_path`` (where training loaded each part from, on its machine) in a config and its sub-configs."""
    from transformers import PretrainedConfig

    config._name_or_path = ""
    for value in vars(config).values():
        if isinstance(value, PretrainedConfig):
            _forget_paths(value)


def _repository(cfg: Recipe, model_dir: Path, root: Path, lm_dir: Path, encoder_dir: Path, settings: dict[str, Any],
                gpu_dtype: str | None) -> dict[str, Any]:
    """Write one repository under ``root``: the LLM step on serve.engine (CPU), or on TensorRT-LLM when ``gpu_dtype``."""
    from tuna.serve.ensemble import SERVING_FILE  # torch: not imported by the up-to-date check

    s = cfg.serve
    batching = model_config.Batching(s.max_batch_size, s.queue_delay_us, s.instances)
    table = "TYPE_FP32"   # the retrieval step's rows, float32 on the wire; the GPU engine casts them to gpu_dtype
    stream = not gpu_dtype and s.engine == "vllm" and s.vllm_stream   # a decoupled LLM step (tuna.serve.vllm_step)
    models = {
        model_config.ENSEMBLE: model_config.ensemble(batching, stream),
        "preprocessing": model_config.preprocessing(batching),
        # Milvus Lite folders are locked to one process: one retrieval instance unless Milvus is a server.
        "retrieval": model_config.retrieval(batching, table, s.instances if cfg.index.uri else 1, stream),
        "tensorrt_llm": model_config.llm_llmapi(batching) if gpu_dtype else model_config.llm_python(batching, table, s.engine, stream),
        "postprocessing": model_config.postprocessing(batching, stream),
    }
    problems = model_config.check_wiring(models)
    if problems:
        raise ExportError("the ensemble is miswired: " + "; ".join(problems))  # a bug here, never user input
    for name, model in models.items():
        _write(root / name / "config.pbtxt", model_config.to_text(model))
        (root / name / "1").mkdir(parents=True, exist_ok=True)
    for step, cls in BACKEND_CLASSES.items():
        module = "python_backend"
        if step == "tensorrt_llm" and gpu_dtype:
            module, cls = "trtllm_step", "TrtllmLLMModel"
        elif step == "tensorrt_llm" and s.engine == "vllm":
            module, cls = "vllm_step", "VllmLLMModel"
            _write_vllm_env(root / step / model_config.VLLM_ENV_FILE)
        steps_path = STEPS_PATH if module == "python_backend" else ""
        _write(root / step / "1" / "model.py", MODEL_PY.format(step=step, cls=cls, module=module, steps_path=steps_path))
    pre = root / "preprocessing" / "1" / "assets"
    _copy_files(model_dir, pre, TOKENIZER_FILES + ("preprocessor_config.json",))
    _write(pre / SERVING_FILE, json.dumps(settings["preprocessing"], indent=1, sort_keys=True))
    ret = root / "retrieval" / "1" / "assets"
    shutil.copytree(encoder_dir, ret / "model", dirs_exist_ok=True)   # the prompt encoder and its tokenizers
    if not cfg.index.uri:   # Milvus Lite folders travel with the repository; a Milvus server is named by its URI
        for name in settings["retrieval"]["datastores"]:   # the step reads them as a run folder rooted at ret
            shutil.copytree(layout(cfg).milvus_lite(name), Layout(ret).milvus_lite(name), dirs_exist_ok=True)
    _write(ret / "recipe.yaml", _recipe(cfg))
    _write(ret / SERVING_FILE, json.dumps(settings["retrieval"], indent=1, sort_keys=True))
    if gpu_dtype:
        llm_settings = {k: v for k, v in settings["tensorrt_llm"].items() if k != "engine"}   # the engine is model.yaml's
        llmapi_repository.write_llm_step(cfg, root / "tensorrt_llm", lm_dir, llm_settings, gpu_dtype)
    else:
        shutil.copytree(lm_dir, root / "tensorrt_llm" / "1" / "assets", dirs_exist_ok=True)
        _write(root / "tensorrt_llm" / "1" / "assets" / SERVING_FILE, json.dumps(settings["tensorrt_llm"], indent=1, sort_keys=True))
    _copy_files(model_dir, root / "postprocessing" / "1" / "assets", TOKENIZER_FILES)
    return {name: model_config.to_text(m) for name, m in models.items()}


# Each step's model.py. Triton's python stubs ignore PYTHONPATH: TUNA_SOURCE_ROOT (set by tuna.serve.server to its own
# source tree; unset in the serving and serving-vllm images; the serving-trtllm image's tuna source) goes first on
# sys.path, so the served code is the code that started the server. The steps tuna runs in the image's own Python
# (python_backend: preprocessing, retrieval, postprocessing, the hf LLM step) also put TUNA_STEPS_PATH first: in the
# serving-trtllm image, the venv with their packages over the NGC image's (docker/serving-trtllm.Dockerfile), which
# the TensorRT-LLM and vLLM steps never see.
MODEL_PY = '''"""Triton python model `{step}` of the TUNA ensemble (written by `tuna export`)."""

import os
import sys

sys.path[:0] = [p for p in os.environ.get("TUNA_SOURCE_ROOT", "").split(os.pathsep) if p and p not in sys.path]
{steps_path}
from tuna.serve.{module} import {cls} as TritonPythonModel  # noqa: E402, F401
'''
STEPS_PATH = 'sys.path[:0] = [p for p in os.environ.get("TUNA_STEPS_PATH", "").split(os.pathsep) if p and p not in sys.path]\n'

VLLM_ACTIVATE = """# Written by `tuna export` (serve.engine=vllm). Triton's python backend sources this bin/activate before it starts
# the stub of the LLM step: the stub's Python becomes the vLLM venv's ($TUNA_VLLM_VENV: `make vllm-env`, or the
# serving image's venv), so vllm and its numpy 2 never meet the project venv of the other steps (PYTHONPATH is
# dropped: vLLM's engine-core process is a plain Python of that venv). Nothing here names a path of the export machine.
# Without the venv the stub still starts (a failed `source` leaves Triton waiting for a stub that never comes: the
# load hung, measured) and refuses to load with TUNA_VLLM_ERROR, so tritonserver exits with this one line.
if [ -z "${TUNA_VLLM_VENV:-}" ] || [ ! -x "${TUNA_VLLM_VENV}/bin/python" ]; then
  export TUNA_VLLM_ERROR="the LLM step runs on vLLM (serve.engine=vllm) but TUNA_VLLM_VENV='${TUNA_VLLM_VENV:-}' is not a\\
 venv; on a host run make vllm-env and set TUNA_VLLM_VENV; in a container run the serving-vllm image (tuna image\\
 --target serving-vllm with serve.engine=vllm)"
  echo "tuna: ${TUNA_VLLM_ERROR}" >&2
  return 0
fi
export VIRTUAL_ENV="${TUNA_VLLM_VENV}"
export PATH="${TUNA_VLLM_VENV}/bin:${PATH}"
unset PYTHONPATH PYTHONHOME
"""


def _write_vllm_env(path: Path) -> None:
    """The LLM step's execution environment (a python-backend EXECUTION_ENV_PATH archive): only ``bin/activate``
    (:data:`VLLM_ACTIVATE`), written byte-for-byte the same on every export (fixed times, owners and modes)."""
    import gzip
    import io
    import tarfile

    data = VLLM_ACTIVATE.encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, size, kind, mode in (("bin", 0, tarfile.DIRTYPE, 0o755), ("bin/activate", len(data), tarfile.REGTYPE, 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.type, info.mode, info.mtime = size, kind, mode, 0
            tar.addfile(info, io.BytesIO(data) if size else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def export_repository(cfg: Recipe, variant: str | None = None, out: Path | None = None, trtllm: bool = False,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export ``variant``'s stage-2 model as a Triton model repository; returns the export manifest."""
    import torch
    from transformers.utils import logging as hf_logging

    from tuna.model import TunaForConditionalGeneration, TunaPromptEncoder
    from tuna.variants import VARIANTS

    hf_logging.disable_progress_bar()   # "Loading weights" / "Writing model shards" bars say nothing here

    variant = variant or cfg.serve.variant
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    model_dir = model_folder(cfg, variant)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"no trained model at {model_dir}; run `tuna train --variant {variant}` first")
    gpu_dtype = llmapi_repository.engine_dtype(cfg) if trtllm else None
    target = out or export_dir(cfg, variant)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.set_num_threads(1)
    model = TunaForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    mc = model.config
    datastores, default = _datastores(cfg, mc.tag_mode, int(mc.clip_config.projection_dim))
    lm_dir, encoder_dir = tmp / "lm", tmp / "prompt_encoder"
    model.language_model.save_pretrained(str(lm_dir))
    encoder = TunaPromptEncoder.from_model(model)
    _forget_paths(encoder.config)
    encoder.save_pretrained(encoder_dir)
    _copy_files(model_dir, encoder_dir, TOKENIZER_FILES)
    if mc.tag_mode != "none":
        shutil.copytree(model_dir / "clip_tokenizer", encoder_dir / "clip_tokenizer")
    model_digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    model_info = {"name": cfg.track.registered_model, "variant": variant, "digest": model_digest, "tag_mode": mc.tag_mode}
    from transformers import AutoTokenizer

    from tuna.model.processing_tuna import silent_token_ids

    silent = silent_token_ids(AutoTokenizer.from_pretrained(str(model_dir)))
    llm_settings: dict[str, Any] = {"silent_token_ids": silent}
    if cfg.serve.engine == "vllm":   # what the vLLM step starts its engine with (tuna.serve.vllm_step.VllmLLMModel)
        llm_settings["engine"] = {"name": "vllm", "max_model_len": cfg.serve.vllm_max_model_len,
                                  "kv_cache_gib": cfg.serve.vllm_kv_cache_gib, "dtype": cfg.serve.vllm_dtype,
                                  "memory_fraction": cfg.serve.vllm_memory_fraction,
                                  "engine_process": cfg.serve.vllm_engine_process,
                                  # running sequences: the step's loop adds requests across execute() calls
                                  "max_num_seqs": max(cfg.serve.max_batch_size, 64)}
    settings = {
        "tensorrt_llm": llm_settings,
        "preprocessing": {"system_prompt": cfg.train.system_prompt, "max_tokens_limit": cfg.serve.max_tokens_limit,
                          "max_image_bytes": cfg.serve.max_image_bytes, "max_text_chars": cfg.serve.max_text_chars},
        "retrieval": {"recipe": "recipe.yaml", "default_datastore": default,
                      "datastores": datastores, "uses_tags": mc.tag_mode != "none", "model": model_info},
    }
    repo = tmp / "model_repository"
    texts = _repository(cfg, model_dir, repo, lm_dir, encoder_dir, settings, None)
    manifest: dict[str, Any] = {
        "export": EXPORT_VERSION, "variant": variant, "model": model_info, "engine": cfg.serve.engine,
        "datastores": datastores, "default_datastore": default, "ensemble": model_config.ENSEMBLE,
        "repository": "model_repository", "configs": sorted(texts), "serve_config": _serve_fingerprint(cfg),
    }
    if gpu_dtype:
        _repository(cfg, model_dir, tmp / "trtllm" / "model_repository", lm_dir, encoder_dir, settings, gpu_dtype)
        manifest["trtllm"] = {"repository": "trtllm/model_repository", "llm": "tensorrt_llm.LLM (PyTorch backend)",
                              "model_yaml": "trtllm/model_repository/tensorrt_llm/1/model.yaml", "dtype": gpu_dtype}
    shutil.rmtree(lm_dir)
    shutil.rmtree(encoder_dir)
    manifest["files"] = _digest_tree(tmp)
    _write(tmp / "export.json", json.dumps(manifest, indent=1, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    n = len(manifest["files"])
    log(f"exported {variant} ({model_digest}) -> {target / 'model_repository'} ({n} files; datastores "
        f"{', '.join(datastores) or 'none'}, default {default}){' + trtllm/model_repository (GPU, ' + gpu_dtype + ')' if gpu_dtype else ''}")
    return manifest





def is_up_to_date(cfg: Recipe, variant: str | None = None) -> bool:
    """True when the exported repository holds the current model and datastore versions."""
    variant = variant or cfg.serve.variant
    try:
        manifest = json.loads((export_dir(cfg, variant) / "export.json").read_text(encoding="utf-8"))
        digest = hashlib.sha256((model_folder(cfg, variant) / "model.safetensors").read_bytes()).hexdigest()[:16]
    except (OSError, ValueError):
        return False
    if (manifest.get("export") != EXPORT_VERSION or manifest["model"]["digest"] != digest
            or manifest.get("serve_config") != _serve_fingerprint(cfg)):
        return False
    from tuna.retrieval.attach import datastore_fingerprint

    try:
        return all(datastore_fingerprint(cfg, name) == info["version"] for name, info in manifest["datastores"].items())
    except TunaError:
        return False
__all__ = ["ExportError", "export_dir", "export_repository", "is_up_to_date", "model_folder", "repository_dir"]
