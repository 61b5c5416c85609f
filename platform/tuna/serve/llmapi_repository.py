"""The ``tensorrt_llm`` step of the GPU repository (`tuna export --trtllm`), laid out like TensorRT-LLM's ``llmapi``
Triton model (``triton_backend/all_models/llmapi/tensorrt_llm``)::

    tensorrt_llm/config.pbtxt      python backend, one KIND_CPU instance (model_config.llm_llmapi)
    tensorrt_llm/1/model.py        tuna.serve.trtllm_step.TrtllmLLMModel (TensorRT-LLM's PyTorch LLM API)
    tensorrt_llm/1/model.yaml      the tensorrt_llm.LLM(...) arguments + triton_config, as in the released template
    tensorrt_llm/1/assets/         the exported LM (plain HF Llama weights; config.json names TunaLlamaForCausalLM)

No engine is built: the PyTorch backend loads the Hugging Face folder at model load. One dtype, from the recipe
(``serve.trtllm_dtype``: bf16 or fp16, whatever precision training used), sets the engine's weights and activations;
the prompt rows arrive as float32 (numpy has no bfloat16) and are cast to it once on the GPU. This module writes files only: nothing here imports tensorrt_llm.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.recipe import Recipe

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}   # serve.trtllm_dtype -> tensorrt_llm.LLM(dtype=...)
ENGINE_MAX_BATCH = 64                              # sequences the engine batches in flight (at least serve.max_batch_size)
KV_CACHE_FRACTION = 0.85                           # free GPU memory the engine's KV cache may take after the weights


def engine_dtype(cfg: Recipe) -> str:
    """The GPU engine's dtype: ``serve.trtllm_dtype`` (checked when the recipe loads: bf16 or fp16)."""
    return DTYPES[cfg.serve.trtllm_dtype]


def model_yaml(cfg: Recipe, lm_config: dict[str, Any], dtype: str) -> str:
    """The step's ``1/model.yaml``: every key but ``triton_config`` goes to ``tensorrt_llm.LLM(...)`` (TensorRT-LLM's
    released template has model, backend, the parallel sizes and triton_config; the rest are LLM API arguments)."""
    s = cfg.serve
    max_seq_len = int(lm_config.get("max_position_embeddings") or 2048)
    lines = [
        "# TensorRT-LLM's PyTorch LLM API arguments of the TUNA `tensorrt_llm` step (written by `tuna export --trtllm`, laid",
        "# out like TensorRT-LLM's triton_backend/all_models/llmapi/tensorrt_llm/1/model.yaml). Every key but triton_config",
        "# goes to tensorrt_llm.LLM(...); tuna.serve.trtllm_step reads it.",
        "model: assets                  # the exported LM, relative to this file (architecture TunaLlamaForCausalLM, registered by tuna)",
        'backend: "pytorch"             # the PyTorch backend: no engine build, the HF folder loads at model load',
        f"dtype: {dtype}               # serve.trtllm_dtype: weights and activations; the prompt rows are cast to it",
        "tensor_parallel_size: 1        # GPUs per replica (raise with the chart's gpu.count for a model that needs several)",
        "pipeline_parallel_size: 1",
        f"max_batch_size: {max(ENGINE_MAX_BATCH, s.max_batch_size)}             # sequences in flight in the engine (in-flight batching)",
        f"max_seq_len: {max_seq_len}             # prompt + answer positions (the LM's max_position_embeddings)",
        "skip_tokenizer_init: true      # ids in, ids out: the preprocessing and postprocessing steps hold the tokenizer",
        "enable_chunked_prefill: false  # a prompt's rows are fused in one context step",
        "kv_cache_config:",
        "  enable_block_reuse: false    # required: equal virtual ids carry different image/tag rows per request",
        f"  free_gpu_memory_fraction: {KV_CACHE_FRACTION}",
        "triton_config:                 # as in the released template; config.pbtxt says the same",
        f"  max_batch_size: {s.max_batch_size}            # serve.max_batch_size: requests per execute() (the ensemble's batch)",
        "  decoupled: false             # one response per request",
    ]
    return "\n".join(lines) + "\n"


def write_llm_step(cfg: Recipe, step: Path, lm_dir: Path, serving: dict[str, Any], dtype: str) -> None:
    """Write ``step``/1/{model.yaml, assets/} (config.pbtxt and model.py are written with the other steps)."""
    from tuna.serve.ensemble import SERVING_FILE
    from tuna.serve.trtllm_engine import ARCHITECTURE, MODEL_YAML

    assets = step / "1" / "assets"
    shutil.copytree(lm_dir, assets, dirs_exist_ok=True)
    config = json.loads((assets / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise TunaError(f"the exported LM is a {config.get('model_type')!r} model; the TensorRT-LLM step serves Llama LMs "
                        f"(TunaLlamaForCausalLM); export without --trtllm")
    config["architectures"] = [ARCHITECTURE]
    (assets / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (assets / SERVING_FILE).write_text(json.dumps(serving, indent=1, sort_keys=True), encoding="utf-8")
    (step / "1" / MODEL_YAML).write_text(model_yaml(cfg, config, dtype), encoding="utf-8")


__all__ = ["DTYPES", "engine_dtype", "model_yaml", "write_llm_step"]
