"""TensorRT-LLM's PyTorch LLM API as the LLM engine of the served ensemble: the ONE module that imports ``tensorrt_llm``.

It runs in the GPU serving image (the NGC ``tritonserver:<ver>-trtllm-python-py3`` image with ``tuna`` installed), in
the ``tensorrt_llm`` step of the GPU repository `tuna export --trtllm` writes (``trtllm/model_repository``). That
step is laid out like TensorRT-LLM's ``llmapi`` Triton model (``triton_backend/all_models/llmapi/tensorrt_llm``): a
python-backend model whose ``1/model.yaml`` holds the ``tensorrt_llm.LLM`` arguments (``backend: pytorch``, parallel
sizes, dtype, KV cache) and a ``triton_config`` block. Only the model class differs: TensorRT-LLM's takes text
(``text_input``), ours takes the retrieval step's prompt (ids + prompt-embedding table), so the ensemble keeps its
names and tensors on every engine (hf, vllm, trtllm).

Why an out-of-tree model: LLaVA-1.5 is not on TensorRT-LLM's PyTorch model list, and TUNA's merged input
([visual tokens][tag block][prompt]) is not something any listed model's input processor builds. The LLM API has
no ``prompt_embeds`` input either. What it has is the multimodal path every PyTorch VLM uses: an input processor
returns prompt ids in which out-of-vocabulary ids (``>= vocab_size``) stand for embedding rows, plus
``multimodal_data["multimodal_embedding"]`` (one row per such id, in order); the model's forward writes those rows
over the word embeddings (``fuse_input_embeds`` in ``tensorrt_llm/_torch/models/modeling_multimodal_utils.py``).
That is exactly our prompt-table convention (id ``vocab_size + j`` = row ``j``), so :func:`register_tuna_llama`
registers ``TunaLlamaForCausalLM`` = TensorRT-LLM's own PyTorch ``LlamaForCausalLM`` (all its kernels, paged KV
cache, in-flight batching) whose forward first fuses the rows, and an input processor that passes our ids and
rows through. The exported LM stays a plain Hugging Face Llama; only its ``config.json`` names the architecture.

The KV cache must not reuse blocks across requests here: two requests with the same virtual ids carry different
rows (the image and tags), so ``enable_block_reuse: false`` (model.yaml) is required, not a tuning choice.

Verified offline only (no GPU here): the request preparation (:func:`prompt_rows`) and the step around a stand-in
engine; the classes inside :func:`register_tuna_llama` follow TensorRT-LLM's PyTorch model API as published
(``register_auto_model``, ``register_input_processor``, ``multimodal_params``) and run on a GPU machine
(tests/serve/test_trtllm.py, marker ``gpu``).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuna.errors import InvalidRequest, TunaError

ARCHITECTURE = "TunaLlamaForCausalLM"   # config.json "architectures" of the GPU repository's LM
MODALITY = "tuna"                       # key of our rows in the prompt's multi_modal_data
MODEL_YAML = "model.yaml"               # the llmapi layout's engine arguments, next to model.py in <step>/1/
_REGISTERED = False                     # register_tuna_llama ran in this process


@dataclass(frozen=True)
class PromptRows:
    """One request as the engine takes it: prompt ids (virtual ids renumbered ``vocab_size + k`` in order of
    appearance) and the embedding row of each virtual id, in the same order."""

    input_ids: list[int]           # (L,)
    rows: np.ndarray               # (k, hidden) float32, k = number of ids >= vocab_size


def prompt_rows(input_ids: np.ndarray, table: np.ndarray, vocab_size: int, hidden: int, max_len: int) -> PromptRows:
    """Check one request's ids and prompt-embedding table and lay them out for the engine; InvalidRequest in one
    line (the request's own INVALID_ARGUMENT, before the engine sees it)."""
    ids = np.asarray(input_ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 1 or len(ids) == 0:
        raise InvalidRequest(f"input_ids: need a non-empty 1-D integer id list, got {ids.dtype} shape {list(ids.shape)}")
    tab = np.asarray(table)
    if tab.size == 0:
        tab = np.zeros((0, hidden), np.float32)
    if tab.dtype.kind != "f" or tab.ndim != 2 or tab.shape[1] != hidden:
        raise InvalidRequest(f"prompt_embedding_table: {tab.dtype} shape {list(tab.shape)}, need float (rows, {hidden}): "
                             f"the LM's hidden size")
    if not 1 <= len(ids) < max_len:
        raise InvalidRequest(f"input_ids: {len(ids)} positions, need 1..{max_len - 1} (the engine's max_seq_len {max_len} "
                             f"leaves room for at least one new token); send a shorter question")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size + len(tab):
        raise InvalidRequest(f"input_ids: ids must be in 0..{vocab_size + len(tab) - 1} (vocabulary {vocab_size} + prompt "
                             f"table {len(tab)}), got {int(ids.min())}..{int(ids.max())}")
    virtual = ids >= vocab_size
    rows = tab[ids[virtual] - vocab_size].astype(np.float32)
    if not np.isfinite(rows).all():
        raise InvalidRequest(f"prompt_embedding_table: {int((~np.isfinite(rows)).sum())} values are NaN or infinite")
    out = ids.astype(np.int64).copy()
    out[virtual] = vocab_size + np.arange(int(virtual.sum()))
    return PromptRows([int(i) for i in out], rows)


def read_model_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLM arguments, triton_config) of an llmapi ``model.yaml``; a relative ``model`` is resolved against the yaml's
    folder (the repository names no path of the machine it was exported on)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise TunaError(f"{path}: unreadable llmapi model.yaml ({err}); re-export with `tuna export --trtllm`") from None
    if not isinstance(data, dict) or "model" not in data or "triton_config" not in data:
        raise TunaError(f"{path}: not an llmapi model.yaml (needs `model` and `triton_config`); re-export with `tuna export --trtllm`")
    args = {k: v for k, v in data.items() if k != "triton_config"}
    model = Path(str(args["model"]))
    args["model"] = str(model if model.is_absolute() else (path.parent / model).resolve())
    return args, dict(data["triton_config"])


def register_tuna_llama() -> None:
    """Register ``TunaLlamaForCausalLM`` and its input processor with TensorRT-LLM's PyTorch backend (idempotent).

    The model is TensorRT-LLM's ``LlamaForCausalLM``; in context (prefill) steps it replaces the word embedding of
    every id ``>= vocab_size`` with the request's next row (``multimodal_params[i].multimodal_data
    ["multimodal_embedding"]``, (k, hidden)). The input processor takes ``{"prompt": "", "multi_modal_data":
    {"tuna": {"input_ids": [...], "rows": tensor}}}`` (what :meth:`TrtllmEngine.submit` sends) and returns the ids
    and the rows: no tokenizer, no image processing (the retrieval step did both)."""
    import inspect

    import torch
    from tensorrt_llm._torch.models.modeling_llama import LlamaForCausalLM
    from tensorrt_llm._torch.models.modeling_utils import register_auto_model
    from tensorrt_llm.inputs import registry

    global _REGISTERED
    if _REGISTERED:
        return

    class TunaInputProcessor:
        multimodal_hashing_supported = False   # our rows are not images: no content hashing, no block reuse

        def __init__(self, model_path: Any, model_config: Any, tokenizer: Any, trust_remote_code: bool = True) -> None:
            self.model_path, self.model_config, self.tokenizer = model_path, model_config, tokenizer

        def __call__(self, inputs: dict[str, Any], sampling_params: Any) -> tuple[list[int], dict[str, Any]]:
            mm = inputs["multi_modal_data"][MODALITY]
            return list(mm["input_ids"]), {"multimodal_data": {"multimodal_embedding": mm["rows"]}}

    kwargs: dict[str, Any] = {}
    if "placeholder_metadata" in inspect.signature(registry.register_input_processor).parameters:
        kwargs = {"model_type": "tuna_llama", "placeholder_metadata": registry.MultimodalPlaceholderMetadata(placeholder_map={MODALITY: ""})}

    @register_auto_model(ARCHITECTURE)
    @registry.register_input_processor(TunaInputProcessor, **kwargs)
    class TunaLlamaForCausalLM(LlamaForCausalLM):
        def forward(self, attn_metadata: Any, input_ids: Any = None, position_ids: Any = None, inputs_embeds: Any = None,
                    return_context_logits: bool = False, **rest: Any) -> Any:
            params = rest.pop("multimodal_params", None) or []
            rows = [p.multimodal_data["multimodal_embedding"] for p in params[:attn_metadata.num_contexts]
                    if getattr(p, "multimodal_data", None) and "multimodal_embedding" in p.multimodal_data]
            if rows and input_ids is not None and inputs_embeds is None:
                embed = self.model.embed_tokens
                vocab = int(self.config.vocab_size)
                virtual = input_ids >= vocab
                inputs_embeds = embed(input_ids.masked_fill(virtual, 0))
                fused = torch.cat([r.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype) for r in rows])
                if int(virtual.sum()) != fused.shape[0]:
                    raise ValueError(f"TUNA prompt rows and virtual ids do not match: ids {int(virtual.sum())}, rows {fused.shape[0]}")
                inputs_embeds[virtual] = fused
                input_ids = None
            return super().forward(attn_metadata, input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds,
                                   return_context_logits=return_context_logits, **rest)

    _REGISTERED = True


class TrtllmEngine:
    """``tensorrt_llm.LLM`` (PyTorch backend) on the step's ``model.yaml``, fed :class:`PromptRows`.

    ``folder`` is the step's version folder (``tensorrt_llm/1``: model.yaml, assets/). ``silent_ids`` are never
    generated (``bad_token_ids``; default: the ``silent_token_ids`` `tuna export` wrote to assets/serving.json), as in
    the hf and vllm steps: at least one new token, the end id stops and is dropped."""

    def __init__(self, folder: str | Path) -> None:
        import importlib.util

        if importlib.util.find_spec("tensorrt_llm") is None:
            raise TunaError(f"the tensorrt_llm step runs TensorRT-LLM, which this Python ({sys.version.split()[0]}) does "
                            f"not have: serve a `tuna export --trtllm` repository with the serving-trtllm image (built "
                            f"FROM NGC's tritonserver:<yy.mm>-trtllm-python-py3 by `make image-serving-trtllm`) on a "
                            f"GPU, or the CPU repository (model_repository) with the serving image")
        self.folder = Path(folder)
        self.args, self.triton_config = read_model_yaml(self.folder / MODEL_YAML)
        lm = Path(self.args["model"])
        try:
            config = json.loads((lm / "config.json").read_text(encoding="utf-8"))
            serving = json.loads((lm / "serving.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TunaError(f"{lm}: the exported LM folder is incomplete ({err}); re-export with `tuna export --trtllm`") from None
        if ARCHITECTURE not in config.get("architectures", []):
            raise TunaError(f"{lm}/config.json: architectures {config.get('architectures')} lacks {ARCHITECTURE}; "
                            f"re-export with `tuna export --trtllm`")
        self.hidden, self.vocab_size = int(config["hidden_size"]), int(config["vocab_size"])
        eos = config.get("eos_token_id")
        self.eos_id = int(eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
        self.max_len = int(self.args.get("max_seq_len") or config.get("max_position_embeddings") or 2048)
        self.silent_ids = [int(i) for i in serving.get("silent_token_ids", [])]
        register_tuna_llama()
        from tensorrt_llm import LLM

        self.llm = LLM(**self.args)

    def check(self, input_ids: np.ndarray, table: np.ndarray, max_new_tokens: int, end_id: int, temperature: float,
              top_k: int) -> PromptRows:
        """The request laid out for the engine, or InvalidRequest in one line."""
        rows = prompt_rows(input_ids, table, self.vocab_size, self.hidden, self.max_len)
        if not 1 <= int(max_new_tokens) <= self.max_len:
            raise InvalidRequest(f"max_tokens: {int(max_new_tokens)} is outside 1..{self.max_len}")
        if not 0 <= int(end_id) < self.vocab_size:
            raise InvalidRequest(f"end_id: {int(end_id)} is outside the vocabulary 0..{self.vocab_size - 1}")
        if math.isnan(temperature) or not 0.0 <= temperature <= 10.0:
            raise InvalidRequest(f"temperature: {temperature} is outside 0..10 (0 = greedy)")
        if not 0 <= int(top_k) <= 100_000:
            raise InvalidRequest(f"top_k: {int(top_k)} is outside 0..100000 (0 = no top-k filter)")
        return rows

    def submit(self, rows: PromptRows, max_new_tokens: int, end_id: int, pad_id: int, temperature: float = 0.0,
               top_k: int = 0, seed: int | None = None) -> Any:
        """Start one generation; returns TensorRT-LLM's future (``.result()`` -> RequestOutput)."""
        import torch
        from tensorrt_llm import SamplingParams

        sampled = temperature > 0   # greedy = top_k 1 (explicit: TensorRT-LLM's defaults differ across versions)
        params = SamplingParams(max_tokens=int(min(max_new_tokens, self.max_len - len(rows.input_ids))), min_tokens=1,
                                end_id=int(end_id), pad_id=int(pad_id), bad_token_ids=self.silent_ids or None,
                                temperature=float(temperature) if sampled else None,
                                top_k=(int(top_k) if top_k > 0 else None) if sampled else 1,
                                seed=int(seed) if sampled and seed is not None else None, detokenize=False)
        prompt = {"prompt": "", "multi_modal_data": {MODALITY: {"input_ids": rows.input_ids, "rows": torch.from_numpy(rows.rows)}}}
        return self.llm.generate_async(prompt, sampling_params=params)

    def tokens(self, output: Any, end_id: int) -> np.ndarray:
        """(n,) int32 new token ids of a finished RequestOutput, the end id dropped."""
        ids = list(output.outputs[0].token_ids)
        if ids and ids[-1] == end_id:
            ids = ids[:-1]
        return np.asarray(ids, np.int32)

    def close(self) -> None:
        self.llm.shutdown()


__all__ = ["ARCHITECTURE", "MODALITY", "MODEL_YAML", "PromptRows", "TrtllmEngine", "prompt_rows", "read_model_yaml", "register_tuna_llama"]
