"""The recipe's serve section (`tuna export`, `tuna serve`, `tuna ask`, the Helm chart's values): one frozen
dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass

from tuna.recipe.checks import require as _require
from tuna.variants import VARIANT_NAMES

ENGINES = ("hf", "vllm")   # serve.engine: the LLM step of the served ensemble
VLLM_DTYPES = ("float32", "bfloat16", "float16")   # serve.vllm_dtype: the dtype vLLM loads the LM in


@dataclass(frozen=True)
class ServeConfig:
    """Serving (`tuna export`, `tuna serve`, `tuna ask`): the Triton model repository and the local server."""

    variant: str = "tuna"               # trained variant exported (data/<run>/train/<variant>/stage2/model)
    host: str = "127.0.0.1"             # address the local tritonserver binds (never 0.0.0.0 on a dev machine)
    grpc_port: int = 8001               # gRPC port (0 = a free port)
    http_port: int = 8000               # HTTP port: health, metadata (0 = a free port)
    metrics_port: int = 8002            # Prometheus metrics port (0 = a free port)
    max_batch_size: int = 8             # per model: requests Triton may batch into one execute()
    queue_delay_us: int = 2000          # dynamic batching: longest wait to fill a batch (microseconds)
    instances: int = 1                  # CPU instances of the preprocessing, LLM and postprocessing models
    datastore: str | None = None        # default datastore when a request names none (null = the model's domain A source)
    default_max_tokens: int = 32        # max_tokens used by `tuna ask` when not given
    max_tokens_limit: int = 256         # requests asking for more new tokens are refused
    max_image_bytes: int = 16_777_216   # encoded image size limit (16 MiB): larger requests are refused
    max_text_chars: int = 2000          # question length limit (characters)
    ready_timeout: int = 180            # seconds `tuna serve` waits for every model to load
    question: str = "What is in the image?"  # what `tuna run` asks the served model
    engine: str = "hf"                  # the LLM step's engine: hf (transformers generate) or vllm (vLLM, run in $TUNA_VLLM_VENV)
    vllm_max_model_len: int = 0         # vllm: longest prompt + answer in positions (0 = the LM's max_position_embeddings)
    vllm_kv_cache_gib: int = 1          # vllm on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)
    vllm_stream: bool = False           # vllm: stream tokens (decoupled LLM step); then the ensemble takes gRPC streaming only
    vllm_dtype: str = "float32"         # vllm: the LM's dtype in the engine (float32 on CPU; bfloat16 or float16 on GPUs)
    vllm_memory_fraction: float = 0.1   # vllm: gpu_memory_utilization, the device memory share for weights + KV cache
    vllm_engine_process: bool = True    # vllm: the engine core in a process of its own (false: in the LLM step's, see tuna.serve.vllm_engine)
    trtllm_dtype: str = "bf16"          # `tuna export --trtllm`: the TensorRT-LLM engine's dtype, bf16 | fp16 (weights, activations, prompt rows)
    probe_period: int = 5               # `tuna serve` watchdog: seconds between real-inference probes (0 = no watchdog)
    probe_deadline: int = 10            # seconds a probe's answer may take (gRPC deadline)
    probe_failures: int = 2             # failed probes in a row before the server counts as broken
    on_failure: str = "restart"         # broken server: restart it on the same ports, or exit (non-zero) for the orchestrator
    max_restarts: int = 5               # restarts within 10 minutes before the watchdog gives up and exits

    def __post_init__(self) -> None:
        _require(self.variant in VARIANT_NAMES, "variant", f"must be one of {', '.join(VARIANT_NAMES)}; got {self.variant!r}")
        for name in ("grpc_port", "http_port", "metrics_port"):
            v = getattr(self, name)
            _require(v == 0 or 1024 <= v <= 65535, name, f"must be 0 (free port) or 1024..65535, got {v}")
        _require(1 <= self.max_batch_size <= 1024, "max_batch_size", f"must be in 1..1024, got {self.max_batch_size}")
        _require(0 <= self.queue_delay_us <= 10_000_000, "queue_delay_us", f"must be in 0..10000000, got {self.queue_delay_us}")
        _require(1 <= self.instances <= 64, "instances", f"must be in 1..64, got {self.instances}")
        _require(1 <= self.max_tokens_limit <= 100_000, "max_tokens_limit", f"must be in 1..100000, got {self.max_tokens_limit}")
        _require(1 <= self.default_max_tokens <= self.max_tokens_limit, "default_max_tokens",
                 f"must be in 1..max_tokens_limit ({self.max_tokens_limit}), got {self.default_max_tokens}")
        _require(1024 <= self.max_image_bytes <= 1 << 30, "max_image_bytes", f"must be in 1024..1073741824, got {self.max_image_bytes}")
        _require(1 <= self.max_text_chars <= 1_000_000, "max_text_chars", f"must be in 1..1000000, got {self.max_text_chars}")
        _require(1 <= self.ready_timeout <= 3600, "ready_timeout", f"must be in 1..3600 seconds, got {self.ready_timeout}")
        _require(bool(self.question.strip()), "question", "must be a non-empty question")
        _require(self.engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        _require(self.vllm_max_model_len == 0 or 2 <= self.vllm_max_model_len <= 1_048_576, "vllm_max_model_len",
                 f"must be 0 (the LM's own limit) or 2..1048576, got {self.vllm_max_model_len}")
        _require(not self.vllm_stream or self.engine == "vllm", "vllm_stream",
                 "streams only on the vllm engine: set serve.engine=vllm or serve.vllm_stream=false")
        _require(self.vllm_dtype in VLLM_DTYPES, "vllm_dtype",
                 f"must be one of {', '.join(VLLM_DTYPES)} (float32 on CPU, bfloat16 on GPUs), got {self.vllm_dtype!r}")
        _require(0.01 <= self.vllm_memory_fraction <= 0.99, "vllm_memory_fraction",
                 f"must be in 0.01..0.99 (share of the GPU's memory; ~0.9 for a GPU of its own), got {self.vllm_memory_fraction}")
        _require(1 <= self.vllm_kv_cache_gib <= 1024, "vllm_kv_cache_gib", f"must be in 1..1024 GiB, got {self.vllm_kv_cache_gib}")
        _require(self.trtllm_dtype in ("bf16", "fp16"), "trtllm_dtype",
                 f"must be bf16 or fp16 (TensorRT-LLM's attention kernels take no fp32; fp16 on pre-Ampere GPUs), got {self.trtllm_dtype!r}")
        _require(0 <= self.probe_period <= 3600, "probe_period", f"must be in 0..3600 seconds (0 = no watchdog), got {self.probe_period}")
        _require(1 <= self.probe_deadline <= 600, "probe_deadline", f"must be in 1..600 seconds, got {self.probe_deadline}")
        _require(1 <= self.probe_failures <= 100, "probe_failures", f"must be in 1..100, got {self.probe_failures}")
        _require(self.on_failure in ("restart", "exit"), "on_failure", f"must be restart or exit, got {self.on_failure!r}")
        _require(0 <= self.max_restarts <= 1000, "max_restarts", f"must be in 0..1000, got {self.max_restarts}")


