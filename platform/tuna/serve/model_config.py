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
    ("stream", "TYPE_BOOL", [1], True),   # true: a response per new-token chunk (a decoupled LLM step, serve.vllm_stream)
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
    ("streaming", "TYPE_BOOL", [1], True),
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


def retrieval(b: Batching, table_dtype: str, instances: int, stream: bool = False) -> pb.ModelConfig:
    """``stream``: the provenance also as UTF-8 JSON bytes (PROVENANCE_BYTES, UINT8) for the decoupled LLM step to carry
    (see :func:`ensemble`)."""
    cfg = _base("retrieval", "python", b, instances)
    # Ragged (as the vLLM step's ids and TensorRT-LLM's templates): without it Triton's dynamic batcher groups only
    # prompts of one length; the step pads each batch itself.
    _tensor(cfg.input, "INPUT_ID", "TYPE_INT32", [-1], ragged=True)
    _tensor(cfg.input, "PIXEL_VALUES", "TYPE_FP32", [-1, -1, -1])
    _tensor(cfg.input, "DATASTORE", "TYPE_STRING", [1], optional=True)
    _tensor(cfg.output, "INPUT_ID", "TYPE_INT32", [-1])
    _tensor(cfg.output, "INPUT_LENGTH", "TYPE_INT32", [1])
    _tensor(cfg.output, "PROMPT_EMBEDDING_TABLE", table_dtype, [-1, -1])
    _tensor(cfg.output, "PROMPT_VOCAB_SIZE", "TYPE_INT32", [1])
    _tensor(cfg.output, "PROVENANCE", "TYPE_STRING", [1])
    if stream:
        _tensor(cfg.output, "PROVENANCE_BYTES", "TYPE_UINT8", [-1])
    return cfg


VLLM_ENV_FILE = "vllm_env.tar.gz"   # the LLM step's python-backend execution environment when serve.engine=vllm


def llm_python(b: Batching, table_dtype: str, engine: str = "hf", stream: bool = False) -> pb.ModelConfig:
    """The CPU LLM: a python model with the LLM step's tensor interface (LLM_INPUTS). ``engine`` vllm: one instance
    (one vLLM engine batches everything) whose stub runs in the vLLM venv (EXECUTION_ENV_PATH, see tuna.serve.export),
    no queue delay (``execute`` returns at once and the engine batches in flight: tuna.serve.vllm_step); ``stream``
    makes it decoupled (a response per new-token chunk; the ``tuna`` ensemble is then decoupled too: gRPC streaming
    only, Triton refuses unary and HTTP inference on it)."""
    vllm = engine == "vllm"
    cfg = _base("tensorrt_llm", "python", b, 1 if vllm else None, wait=not vllm)
    if vllm:
        cfg.parameters["EXECUTION_ENV_PATH"].string_value = f"$$TRITON_MODEL_DIRECTORY/{VLLM_ENV_FILE}"
        if stream:
            cfg.model_transaction_policy.decoupled = True
    elif stream:
        raise ValueError("stream: only the vllm engine streams (serve.vllm_stream needs serve.engine=vllm)")
    # Ragged: Triton's dynamic batcher only groups requests whose variable dims agree, i.e. prompts of one length
    # (measured on the vLLM step, 8 clients: 67 executes for 80 requests without it, 25 with it; 16 -> 35 req/s). The
    # python step takes each request's tensors separately anyway. (The HF step keeps today's config.)
    for name, dtype, dims, optional in LLM_INPUTS:
        _tensor(cfg.input, name, dtype.format(table=table_dtype), dims, optional,
                ragged=vllm and name in ("input_ids", "prompt_embedding_table"))
    for name, dtype, dims in LLM_OUTPUTS:
        _tensor(cfg.output, name, dtype, dims)
    if stream:   # the retrieval step's provenance, carried through (UINT8: no strings cross the vLLM venv's stub)
        _tensor(cfg.input, "provenance_in", "TYPE_UINT8", [-1], optional=True, ragged=True)
        _tensor(cfg.output, "provenance_out", "TYPE_UINT8", [-1])
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


def postprocessing(b: Batching, stream: bool = False) -> pb.ModelConfig:
    """``stream``: the provenance comes as UTF-8 JSON bytes from the decoupled LLM step (PROVENANCE_BYTES)."""
    cfg = _base("postprocessing", "python", b, wait=False)
    _tensor(cfg.input, "TOKENS_BATCH", "TYPE_INT32", [-1, -1], ragged=True)   # answers of any length in one batch
    _tensor(cfg.input, "SEQUENCE_LENGTH", "TYPE_INT32", [-1])
    if stream:
        _tensor(cfg.input, "PROVENANCE_BYTES", "TYPE_UINT8", [-1], ragged=True)
    else:
        _tensor(cfg.input, "PROVENANCE", "TYPE_STRING", [1])
    _tensor(cfg.output, "OUTPUT", "TYPE_STRING", [1])
    _tensor(cfg.output, "PROVENANCE_OUT", "TYPE_STRING", [1])
    return cfg


def ensemble(b: Batching, stream: bool = False) -> pb.ModelConfig:
    """The public model ``tuna``: preprocessing -> retrieval -> tensorrt_llm -> postprocessing.

    ``stream`` (a decoupled LLM step): every postprocessing response follows one LLM response, and Triton requires
    the inputs of a step after a decoupled model to come from that model alone ("receives inputs originated from
    different decoupled models", triton-inference-server/server#7275, measured on 2.51): the provenance travels
    retrieval -> LLM step -> postprocessing as bytes instead of straight to postprocessing."""
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
                          "runtime_top_k": "top_k", "random_seed": "seed", "streaming": "stream"},
         {"output_ids": "_OUTPUT_IDS", "sequence_length": "_SEQUENCE_LENGTH"}),
        ("postprocessing", {"TOKENS_BATCH": "_OUTPUT_IDS", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH", "PROVENANCE": "_PROVENANCE"},
         {"OUTPUT": "text_output", "PROVENANCE_OUT": "provenance"}),
    )
    if stream:
        del wiring[1][2]["PROVENANCE"]
        wiring[1][2]["PROVENANCE_BYTES"] = "_PROVENANCE_BYTES"
        wiring[2][1]["provenance_in"] = "_PROVENANCE_BYTES"
        wiring[2][2]["provenance_out"] = "_LLM_PROVENANCE"
        del wiring[3][1]["PROVENANCE"]
        wiring[3][1]["PROVENANCE_BYTES"] = "_LLM_PROVENANCE"
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
    # Which decoupled model each tensor's responses follow ('' = one per request): a step (or the ensemble's outputs)
    # must read tensors of one origin only (Triton: "receives inputs originated from different decoupled models").
    origin = {t.name: "" for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        sources = {origin.get(v, "") for v in step.input_map.values()}
        if len(sources) > 1:
            problems.append(f"{step.model_name} reads tensors that follow different decoupled models ({sorted(sources)}); "
                            f"route them through the decoupled step")
        out = step.model_name if model is not None and model.model_transaction_policy.decoupled else next(iter(sources), "")
        origin.update({v: out for v in step.output_map.values()})
    if len({origin.get(t.name, "") for t in ens.output}) > 1:
        problems.append("the ensemble's outputs follow different decoupled models; route them through the decoupled step")
    used = {v for step in ens.ensemble_scheduling.step for v in step.input_map.values()} | {t.name for t in ens.output}
    for step in ens.ensemble_scheduling.step:
        problems += [f"ensemble tensor {v!r} ({step.model_name}.{k}) is unused: Triton refuses the ensemble"
                     for k, v in step.output_map.items() if v not in used]
    for t in ens.output:
        if t.name not in produced:
            problems.append(f"ensemble output {t.name!r} is produced by no step")
        elif produced[t.name] != (t.data_type, len(t.dims)):
            problems.append(f"ensemble output {t.name!r} type/rank differs from its producer")
    return problems


__all__ = ["Batching", "ENSEMBLE", "VLLM_ENV_FILE", "ENSEMBLE_INPUTS", "ENSEMBLE_OUTPUTS", "STEPS", "check_wiring", "ensemble",
           "llm_llmapi", "llm_python", "parse", "postprocessing", "preprocessing", "retrieval", "to_text"]
