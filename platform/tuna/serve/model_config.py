"""Triton ``config.pbtxt`` of every model in the repository, built as ``ModelConfig`` protobufs.

Building the protobuf (Triton's own schema, shipped with tritonclient) instead of formatting text means
every written config parses by construction, field names are checked, and the output is deterministic.
The LLM step keeps its historical name ``tensorrt_llm`` and the tensor names of TensorRT-LLM's former multimodal
ensemble (ids + prompt-embedding table in, token ids out) on every engine: the hf and vllm python steps on CPU
(:func:`llm_python`) and TensorRT-LLM's PyTorch LLM API on GPUs (:func:`llm_llmapi`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

ENSEMBLE = "tuna"
STEPS = ("preprocessing", "retrieval", "tensorrt_llm", "postprocessing")

# (name, Triton type, dims, optional) of the ensemble's public inputs and outputs.
ENSEMBLE_INPUTS = (
    ("text_input", "TYPE_STRING", [1], False),
    ("image_bytes_input", "TYPE_STRING", [1], False),
    ("max_tokens", "TYPE_INT32", [1], False),
    ("datastore", "TYPE_STRING", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("top_k", "TYPE_INT32", [1], True),
    ("seed", "TYPE_UINT64", [1], True),
)
ENSEMBLE_OUTPUTS = (("text_output", "TYPE_STRING", [1]), ("provenance", "TYPE_STRING", [1]))

# The LLM step's interface on every engine (the names TensorRT-LLM's deleted engine backend used, kept as our contract).
LLM_INPUTS = (
    ("input_ids", "TYPE_INT32", [-1], False),
    ("input_lengths", "TYPE_INT32", [1], False),
    ("request_output_len", "TYPE_INT32", [1], False),
    ("end_id", "TYPE_INT32", [1], True),
    ("pad_id", "TYPE_INT32", [1], True),
    ("prompt_embedding_table", "{table}", [-1, -1], True),
    ("prompt_vocab_size", "TYPE_INT32", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("runtime_top_k", "TYPE_INT32", [1], True),
    ("random_seed", "TYPE_UINT64", [1], True),
)
LLM_OUTPUTS = (("output_ids", "TYPE_INT32", [-1, -1]), ("sequence_length", "TYPE_INT32", [-1]))


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    queue_delay_us: int
    instances: int


def _tensor(msg: Any, name: str, dtype: str, dims: list[int], optional: bool | None = None, ragged: bool = False) -> None:
    t = msg.add()
    t.name = name
    t.data_type = pb.DataType.Value(dtype)
    t.dims.extend(dims)
    if optional:
        t.optional = True
    if ragged:
        t.allow_ragged_batch = True


def _base(name: str, backend: str, batching: Batching, instances: int | None = None, wait: bool = True) -> pb.ModelConfig:
    """``wait``: the step batches real work (one Milvus search, one generate) and may wait serve.queue_delay_us
    to fill a batch; per-request steps (decode, detokenize) never wait: under load they batch what is queued."""
    cfg = pb.ModelConfig(name=name, backend=backend, max_batch_size=batching.max_batch_size)
    cfg.dynamic_batching.max_queue_delay_microseconds = batching.queue_delay_us if wait else 0
    group = cfg.instance_group.add()
    group.count = instances or batching.instances
    group.kind = pb.ModelInstanceGroup.KIND_CPU
    return cfg


def preprocessing(b: Batching) -> pb.ModelConfig:
    cfg = _base("preprocessing", "python", b, wait=False)
    _tensor(cfg.input, "QUERY", "TYPE_STRING", [1])
    _tensor(cfg.input, "IMAGE_BYTES", "TYPE_STRING", [1])
    _tensor(cfg.input, "REQUEST_OUTPUT_LEN", "TYPE_INT32", [1])
    _tensor(cfg.output, "INPUT_ID", "TYPE_INT32", [-1])
    _tensor(cfg.output, "PIXEL_VALUES", "TYPE_FP32", [-1, -1, -1])
    _tensor(cfg.output, "REQUEST_OUTPUT_LEN", "TYPE_INT32", [1])
    _tensor(cfg.output, "OUT_END_ID", "TYPE_INT32", [1])
    _tensor(cfg.output, "OUT_PAD_ID", "TYPE_INT32", [1])
    return cfg


def retrieval(b: Batching, table_dtype: str, instances: int) -> pb.ModelConfig:
    cfg = _base("retrieval", "python", b, instances)
    _tensor(cfg.input, "INPUT_ID", "TYPE_INT32", [-1])
    _tensor(cfg.input, "PIXEL_VALUES", "TYPE_FP32", [-1, -1, -1])
    _tensor(cfg.input, "DATASTORE", "TYPE_STRING", [1], optional=True)
    _tensor(cfg.output, "INPUT_ID", "TYPE_INT32", [-1])
    _tensor(cfg.output, "INPUT_LENGTH", "TYPE_INT32", [1])
    _tensor(cfg.output, "PROMPT_EMBEDDING_TABLE", table_dtype, [-1, -1])
    _tensor(cfg.output, "PROMPT_VOCAB_SIZE", "TYPE_INT32", [1])
    _tensor(cfg.output, "PROVENANCE", "TYPE_STRING", [1])
    return cfg


VLLM_ENV_FILE = "vllm_env.tar.gz"   # the LLM step's python-backend execution environment when serve.engine=vllm


def llm_python(b: Batching, table_dtype: str, engine: str = "hf") -> pb.ModelConfig:
    """The CPU LLM: a python model with the LLM step's tensor interface (LLM_INPUTS). ``engine`` vllm: one instance
    (one vLLM engine batches everything) whose stub runs in the vLLM venv (EXECUTION_ENV_PATH, see tuna.serve.export)."""
    cfg = _base("tensorrt_llm", "python", b, 1 if engine == "vllm" else None)
    vllm = engine == "vllm"
    if vllm:
        cfg.parameters["EXECUTION_ENV_PATH"].string_value = f"$$TRITON_MODEL_DIRECTORY/{VLLM_ENV_FILE}"
    # Ragged: Triton's dynamic batcher only groups requests whose variable dims agree, i.e. prompts of one length
    # (measured on the vLLM step, 8 clients: 67 executes for 80 requests without it, 25 with it; 16 -> 35 req/s). The
    # python step takes each request's tensors separately anyway. (The HF step keeps today's config.)
    for name, dtype, dims, optional in LLM_INPUTS:
        _tensor(cfg.input, name, dtype.format(table=table_dtype), dims, optional,
                ragged=vllm and name in ("input_ids", "prompt_embedding_table"))
    for name, dtype, dims in LLM_OUTPUTS:
        _tensor(cfg.output, name, dtype, dims)
    return cfg


def llm_llmapi(b: Batching) -> pb.ModelConfig:
    """The GPU LLM: TensorRT-LLM's PyTorch LLM API in a python model laid out like its ``llmapi`` Triton model (one
    CPU-kind instance: the engine places work on the GPUs; engine arguments in ``1/model.yaml``, see
    :mod:`tuna.serve.llmapi_repository`), with the tensors of :func:`llm_python`. Scalars are reshaped to ``[]`` so a
    batch of B requests reaches the step as (B,) tensors; the table is float32 on the wire (numpy has no bfloat16)
    and cast once to the engine's dtype on the GPU. No queue delay: the engine batches in flight."""
    cfg = pb.ModelConfig(name="tensorrt_llm", backend="python", max_batch_size=b.max_batch_size)
    cfg.model_transaction_policy.decoupled = False
    cfg.dynamic_batching.max_queue_delay_microseconds = 0
    group = cfg.instance_group.add()
    group.count = 1
    group.kind = pb.ModelInstanceGroup.KIND_CPU
    for name, dtype, dims, optional in LLM_INPUTS:
        _tensor(cfg.input, name, dtype.format(table="TYPE_FP32"), dims, optional,
                ragged=name in ("input_ids", "prompt_embedding_table"))
        if dims == [1]:
            cfg.input[-1].reshape.SetInParent()   # reshape: { shape: [ ] }
    for name, dtype, dims in LLM_OUTPUTS:
        _tensor(cfg.output, name, dtype, dims)
    return cfg


def postprocessing(b: Batching) -> pb.ModelConfig:
    cfg = _base("postprocessing", "python", b, wait=False)
    _tensor(cfg.input, "TOKENS_BATCH", "TYPE_INT32", [-1, -1])
    _tensor(cfg.input, "SEQUENCE_LENGTH", "TYPE_INT32", [-1])
    _tensor(cfg.input, "PROVENANCE", "TYPE_STRING", [1])
    _tensor(cfg.output, "OUTPUT", "TYPE_STRING", [1])
    _tensor(cfg.output, "PROVENANCE_OUT", "TYPE_STRING", [1])
    return cfg


def ensemble(b: Batching) -> pb.ModelConfig:
    """The public model ``tuna``: preprocessing -> retrieval -> tensorrt_llm -> postprocessing."""
    cfg = pb.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=b.max_batch_size)
    for name, dtype, dims, optional in ENSEMBLE_INPUTS:
        _tensor(cfg.input, name, dtype, dims, optional)
    for name, dtype, dims in ENSEMBLE_OUTPUTS:
        _tensor(cfg.output, name, dtype, dims)
    wiring = (
        ("preprocessing", {"QUERY": "text_input", "IMAGE_BYTES": "image_bytes_input", "REQUEST_OUTPUT_LEN": "max_tokens"},
         {"INPUT_ID": "_RAW_INPUT_ID", "PIXEL_VALUES": "_PIXEL_VALUES", "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
          "OUT_END_ID": "_END_ID", "OUT_PAD_ID": "_PAD_ID"}),
        ("retrieval", {"INPUT_ID": "_RAW_INPUT_ID", "PIXEL_VALUES": "_PIXEL_VALUES", "DATASTORE": "datastore"},
         {"INPUT_ID": "_INPUT_ID", "INPUT_LENGTH": "_INPUT_LENGTH", "PROMPT_EMBEDDING_TABLE": "_PROMPT_TABLE",
          "PROMPT_VOCAB_SIZE": "_PROMPT_VOCAB_SIZE", "PROVENANCE": "_PROVENANCE"}),
        ("tensorrt_llm", {"input_ids": "_INPUT_ID", "input_lengths": "_INPUT_LENGTH", "request_output_len": "_REQUEST_OUTPUT_LEN",
                          "end_id": "_END_ID", "pad_id": "_PAD_ID", "prompt_embedding_table": "_PROMPT_TABLE",
                          "prompt_vocab_size": "_PROMPT_VOCAB_SIZE", "temperature": "temperature",
                          "runtime_top_k": "top_k", "random_seed": "seed"},
         {"output_ids": "_OUTPUT_IDS", "sequence_length": "_SEQUENCE_LENGTH"}),
        ("postprocessing", {"TOKENS_BATCH": "_OUTPUT_IDS", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH", "PROVENANCE": "_PROVENANCE"},
         {"OUTPUT": "text_output", "PROVENANCE_OUT": "provenance"}),
    )
    for model, inputs, outputs in wiring:
        step = cfg.ensemble_scheduling.step.add()
        step.model_name = model
        step.model_version = -1
        for k, v in inputs.items():
            step.input_map[k] = v
        for k, v in outputs.items():
            step.output_map[k] = v
    return cfg


def to_text(cfg: pb.ModelConfig) -> str:
    """The config.pbtxt text of ``cfg`` (deterministic: protobuf text format, map keys sorted)."""
    return text_format.MessageToString(cfg)


def parse(text: str) -> pb.ModelConfig:
    """Parse config.pbtxt text with Triton's schema; raises ``text_format.ParseError`` on a bad file."""
    return text_format.Parse(text, pb.ModelConfig())


def check_wiring(configs: dict[str, pb.ModelConfig]) -> list[str]:
    """Problems in how the ensemble's steps connect: unknown models, tensors a step does not have, type or
    rank mismatches between a producer and its consumers, inputs nothing produces. Empty when sound."""
    problems: list[str] = []
    ens = configs[ENSEMBLE]
    produced: dict[str, tuple[int, int]] = {t.name: (t.data_type, len(t.dims)) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"step {step.model_name!r} is not in the repository")
            continue
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for k, v in step.input_map.items():
            if k not in inputs:
                problems.append(f"{step.model_name} has no input {k!r}")
            elif v not in produced:
                problems.append(f"{step.model_name}.{k} reads {v!r}, which no earlier step produces")
            elif produced[v] != (inputs[k].data_type, len(inputs[k].dims)):
                problems.append(f"{step.model_name}.{k} expects {pb.DataType.Name(inputs[k].data_type)} rank "
                                f"{len(inputs[k].dims)}, {v!r} is {pb.DataType.Name(produced[v][0])} rank {produced[v][1]}")
        for name, t in inputs.items():
            if not t.optional and name not in step.input_map:
                problems.append(f"{step.model_name}.{name} is required but not wired")
        for k, v in step.output_map.items():
            if k not in outputs:
                problems.append(f"{step.model_name} has no output {k!r}")
            else:
                produced[v] = (outputs[k].data_type, len(outputs[k].dims))
    for t in ens.output:
        if t.name not in produced:
            problems.append(f"ensemble output {t.name!r} is produced by no step")
        elif produced[t.name] != (t.data_type, len(t.dims)):
            problems.append(f"ensemble output {t.name!r} type/rank differs from its producer")
    return problems


__all__ = ["Batching", "ENSEMBLE", "VLLM_ENV_FILE", "ENSEMBLE_INPUTS", "ENSEMBLE_OUTPUTS", "STEPS", "check_wiring", "ensemble",
           "llm_llmapi", "llm_python", "parse", "postprocessing", "preprocessing", "retrieval", "to_text"]
