"""The TensorRT-LLM GPU repository (`tuna export --trtllm`): its ``tensorrt_llm`` step laid out like TensorRT-LLM's
released ``llmapi`` model (fixtures/llmapi: the upstream config.pbtxt and model.yaml, repo + commit in their headers),
the request preparation, and the Triton step around a stand-in engine - all on CPU in seconds. The tests marked
``gpu`` run the real engine (the NGC ``tritonserver:<ver>-trtllm-python-py3`` image with tuna installed, a CUDA GPU):
the exported repository answers a question over gRPC with provenance."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from triton_fakes import FakePb

from support import SMOKE
from tuna.errors import ConfigError, EngineUnavailable, InvalidRequest
from tuna.recipe import load_recipe
from tuna.serve import llmapi_repository, model_config
from tuna.serve.trtllm_engine import ARCHITECTURE, prompt_rows, read_model_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "llmapi"
HIDDEN, VOCAB = 8, 16
# Our LLM-step tensors that carry what the released llmapi model takes as sampling parameters.
SAME_MEANING = {"request_output_len": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
                "runtime_top_k": "sampling_param_top_k", "random_seed": "sampling_param_seed"}
# The ensemble's public inputs and outputs with a counterpart in the released llmapi model.
PUBLIC = {"max_tokens": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
          "top_k": "sampling_param_top_k", "seed": "sampling_param_seed"}
# tensorrt_llm.LLM arguments model.yaml may add to the released template's keys (TensorRT-LLM's BaseLlmArgs/TorchLlmArgs).
LLM_ARGS = {"dtype", "max_batch_size", "max_seq_len", "skip_tokenizer_init", "enable_chunked_prefill", "kv_cache_config"}


def released_config() -> Any:
    return model_config.parse((FIXTURES / "config.pbtxt").read_text())


def released_yaml() -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / "model.yaml").read_text())


def tensors(msgs: Any) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (model_config.pb.DataType.Name(t.data_type), list(t.dims)) for t in msgs}


# ------------------------------------------------------------------------------------------ layout vs the released template


def test_the_llm_step_config_follows_the_released_llmapi_template() -> None:
    ours, theirs = model_config.llm_llmapi(model_config.Batching(8, 2000, 2)), released_config()
    assert (ours.name, ours.backend) == (theirs.name, theirs.backend) == ("tensorrt_llm", "python")
    assert [(g.count, g.kind) for g in ours.instance_group] == [(g.count, g.kind) for g in theirs.instance_group]
    assert not ours.model_transaction_policy.decoupled   # = the template's triton_config.decoupled
    mine, released = tensors(ours.input), tensors(theirs.input)
    for name, upstream in SAME_MEANING.items():          # same dtype and dims as the released sampling inputs
        assert mine[name] == released[upstream], (name, upstream)
    scalars = [t for t in ours.input if list(t.dims) == [1]]
    assert scalars and all(t.HasField("reshape") and list(t.reshape.shape) == [] for t in scalars)   # batches of B reach the step as (B,)
    assert {t.name for t in ours.input if t.allow_ragged_batch} == {"input_ids", "prompt_embedding_table"}
    assert mine["prompt_embedding_table"] == ("TYPE_FP32", [-1, -1])   # float32 on the wire; the engine casts to its dtype
    assert ours.dynamic_batching.max_queue_delay_microseconds == 0      # the engine batches in flight; Triton never waits
    assert "text_input" in released and "text_input" not in mine         # the one deliberate difference: ids + rows, not text


def test_the_ensemble_public_tensors_carry_the_released_sampling_types() -> None:
    ens, released = model_config.ensemble(model_config.Batching(8, 0, 1)), tensors(released_config().input)
    public = tensors(ens.input)
    for name, upstream in PUBLIC.items():
        assert public[name] == released[upstream], (name, upstream)
    assert tensors(ens.output)["text_output"][0] == tensors(released_config().output)["text_output"][0] == "TYPE_STRING"


def test_model_yaml_has_the_released_keys_and_llm_api_arguments(tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, ["serve.max_batch_size=4"])
    text = llmapi_repository.model_yaml(cfg, {"max_position_embeddings": 512}, "bfloat16")
    ours, theirs = yaml.safe_load(text), released_yaml()
    assert set(theirs) - {"logits_post_processors"} <= set(ours) and set(ours) - set(theirs) <= LLM_ARGS
    assert set(ours["triton_config"]) == set(theirs["triton_config"])
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        assert type(ours[key]) is type(theirs[key]) and ours[key] >= 1
    assert ours["backend"] == theirs["backend"] == "pytorch"
    assert ours["model"] == "assets" and ours["dtype"] == "bfloat16" and ours["max_seq_len"] == 512
    assert ours["triton_config"] == {"max_batch_size": 4, "decoupled": False}   # = the step's config.pbtxt
    assert ours["max_batch_size"] >= 4 and ours["skip_tokenizer_init"] is True
    assert ours["kv_cache_config"]["enable_block_reuse"] is False   # equal virtual ids carry different rows per request
    (tmp_path / "model.yaml").write_text(text)
    args, triton = read_model_yaml(tmp_path / "model.yaml")
    assert args["model"] == str((tmp_path / "assets").resolve()) and "triton_config" not in args and triton["decoupled"] is False


def test_one_dtype_from_the_recipe_and_fp32_is_refused_in_one_line() -> None:
    assert llmapi_repository.engine_dtype(load_recipe(SMOKE)) == "bfloat16"
    assert llmapi_repository.engine_dtype(load_recipe(SMOKE, ["serve.trtllm_dtype=fp16"])) == "float16"
    with pytest.raises(ConfigError, match=r"serve.trtllm_dtype: must be bf16 or fp16 .*got 'fp32'$"):
        load_recipe(SMOKE, ["serve.trtllm_dtype=fp32"])


def test_the_llm_step_folder_holds_a_plain_llama_naming_the_out_of_tree_architecture(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    lm = tmp_path / "lm"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN * 4, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=128)).save_pretrained(lm)
    step = tmp_path / "tensorrt_llm"
    llmapi_repository.write_llm_step(load_recipe(SMOKE), step, lm, {"silent_token_ids": [0, 1]}, "float16")
    assets = step / "1" / "assets"
    assert json.loads((assets / "config.json").read_text())["architectures"] == [ARCHITECTURE]
    assert AutoConfig.from_pretrained(assets).model_type == "llama"
    assert isinstance(AutoModelForCausalLM.from_pretrained(assets), LlamaForCausalLM)   # still a plain HF Llama
    args, _ = read_model_yaml(step / "1" / "model.yaml")
    assert Path(args["model"]) == assets.resolve() and args["dtype"] == "float16" and args["max_seq_len"] == 128
    assert json.loads((assets / "serving.json").read_text()) == {"silent_token_ids": [0, 1]}
    text = "".join(p.read_text(errors="ignore") for p in step.rglob("*") if p.suffix in (".yaml", ".json"))
    assert str(tmp_path) not in text   # nothing names a path of the export machine


# ------------------------------------------------------------------------------------------ request preparation


def test_prompt_rows_gathers_one_row_per_virtual_id_in_order() -> None:
    table = np.arange(3 * HIDDEN, dtype=np.float32).reshape(3, HIDDEN)
    out = prompt_rows(np.array([1, VOCAB + 2, 5, VOCAB, VOCAB + 2], np.int32), table, VOCAB, HIDDEN, 64)
    assert out.input_ids == [1, VOCAB, 5, VOCAB + 1, VOCAB + 2]
    assert np.array_equal(out.rows, table[[2, 0, 2]]) and out.rows.dtype == np.float32
    plain = prompt_rows(np.array([3, 4], np.int32), np.zeros((0,), np.float32), VOCAB, HIDDEN, 64)
    assert plain.input_ids == [3, 4] and plain.rows.shape == (0, HIDDEN)


@pytest.mark.parametrize("ids, table, match", [
    ([1, VOCAB + 3], np.ones((2, HIDDEN)), r"ids must be in 0\.\.17 \(vocabulary 16 \+ prompt table 2\)"),
    ([1, VOCAB], np.ones((2, HIDDEN + 1)), r"need float \(rows, 8\): the LM's hidden size"),
    ([], np.ones((2, HIDDEN)), "non-empty 1-D integer id list"),
    ([1] * 64, np.ones((2, HIDDEN)), r"64 positions, need 1\.\.63"),
    ([1, VOCAB], np.full((1, HIDDEN), np.nan), "8 values are NaN or infinite"),
    ([-1, 2], np.ones((1, HIDDEN)), "ids must be in"),
])
def test_prompt_rows_refuses_bad_requests_in_one_line(ids: list[int], table: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as err:
        prompt_rows(np.array(ids, np.int32), table.astype(np.float32), VOCAB, HIDDEN, 64)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ the step, stand-in engine


class Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []

    def send(self, response: Any, flags: int = 0) -> None:
        self.sent.append((response, flags))


class Request:
    def __init__(self, ids: list[int], table: np.ndarray, max_tokens: int = 4) -> None:
        # shapes as the step's config delivers them: scalars reshaped to [] -> (1,), ids and table with their batch row
        self.tensors = {"input_ids": np.array([ids], np.int32), "prompt_embedding_table": table[None].astype(np.float32),
                        "request_output_len": np.array([max_tokens], np.int32), "end_id": np.array([2], np.int32)}
        self.sender = Sender()

    def get_response_sender(self) -> Sender:
        return self.sender


class Done:
    def __init__(self, ids: list[int] | None, error: Exception | None = None) -> None:
        self.ids, self.error = ids, error

    def result(self) -> Any:
        if self.error:
            raise self.error
        return types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=self.ids)])


class FakeEngine:
    """Stands in for TrtllmEngine: the real checks (prompt_rows), canned generations."""

    hidden, eos_id, vocab_size, max_len = HIDDEN, 2, VOCAB, 64
    fail: Exception | None = None

    def check(self, ids: np.ndarray, table: np.ndarray, max_new: int, end_id: int, temperature: float, top_k: int) -> Any:
        return prompt_rows(ids, table, VOCAB, HIDDEN, self.max_len)

    def submit(self, rows: Any, max_new: int, end_id: int, pad_id: int, temperature: float, top_k: int, seed: Any) -> Done:
        return Done([5, 6, len(rows.rows), end_id], self.fail)

    def tokens(self, output: Any, end_id: int) -> np.ndarray:
        from tuna.serve.trtllm_engine import TrtllmEngine

        return TrtllmEngine.tokens(self, output, end_id)

    def close(self) -> None:
        pass


@pytest.fixture
def step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from tuna.serve import trtllm_step

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakePb("triton_python_backend_utils"))
    monkeypatch.setattr(trtllm_step.TrtllmLLMModel, "_start", lambda self: FakeEngine())
    model = trtllm_step.TrtllmLLMModel()
    model.initialize({"model_repository": str(tmp_path / "tensorrt_llm"), "model_version": "1"})
    yield model
    model.finalize()


def test_each_request_is_answered_through_its_sender_and_bad_ones_alone_refused(step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    batch = [Request([1, VOCAB, VOCAB + 1, 5], table), Request([1, VOCAB + 2], table), Request([1, VOCAB], table, 0),
             Request([4, 5], table)]
    assert step.execute(batch) is None          # never waits for a generation
    step.waiters.shutdown(wait=True)
    for r in batch:
        assert len(r.sender.sent) == 1 and r.sender.sent[0][1] == FakePb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    codes = [r.sender.sent[0][0].error.code if r.sender.sent[0][0].error else "ok" for r in batch]
    assert codes == ["ok", "INVALID_ARG", "INVALID_ARG", "ok"]
    assert "ids must be in" in batch[1].sender.sent[0][0].error.message
    assert "max_tokens: 0" in batch[2].sender.sent[0][0].error.message
    out = batch[0].sender.sent[0][0].outputs
    assert out["output_ids"].tolist() == [[[5, 6, 2]]] and out["sequence_length"].tolist() == [[3]]   # end id dropped


def test_an_engine_failure_is_unavailable_in_one_line(step: Any) -> None:
    FakeEngine.fail = RuntimeError("Executor worker died\ntraceback ...")
    try:
        r = Request([1, VOCAB], np.ones((1, HIDDEN), np.float32))
        step.execute([r])
        step.waiters.shutdown(wait=True)
    finally:
        FakeEngine.fail = None
    err = r.sender.sent[0][0].error
    assert err.code == "UNAVAILABLE" and "TensorRT-LLM engine failed: RuntimeError: Executor worker died" in err.message
    assert "\n" not in err.message and isinstance(EngineUnavailable("x"), Exception)


def test_without_tensorrt_llm_the_engine_refuses_in_one_line_naming_the_image(tmp_path: Path) -> None:
    """On a Python without TensorRT-LLM (this machine, a CPU image) the step's engine refuses before reading anything,
    naming the serving-trtllm image and the CPU repository; Triton reports that line as the step's load failure."""
    import importlib.util

    from tuna.errors import TunaError
    from tuna.serve.trtllm_engine import TrtllmEngine

    if importlib.util.find_spec("tensorrt_llm") is not None:
        pytest.skip("tensorrt_llm is installed here: the GPU tests below cover the engine")
    with pytest.raises(TunaError) as err:
        TrtllmEngine(tmp_path / "no-such-step")
    line = str(err.value)
    assert "\n" not in line and "does not have" in line and f"({sys.version.split()[0]})" in line
    assert "make image-serving-trtllm" in line and "the CPU repository (model_repository)" in line


# ------------------------------------------------------------------------------------------ on a GPU (NGC trtllm image)


def _gpu_ready() -> str | None:
    """None when this machine can run TensorRT-LLM, else the one-line reason to skip."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("tensorrt_llm") is None:
        return "needs tensorrt_llm (the NGC tritonserver:<ver>-trtllm-python-py3 image with tuna installed)"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if not shutil.which("tritonserver") and not Path("/opt/tritonserver/bin/tritonserver").is_file():
        return "needs the tritonserver binary of the NGC image"
    return None


gpu = pytest.mark.skipif(_gpu_ready() is not None, reason=_gpu_ready() or "")


@pytest.mark.gpu
@gpu
def test_gpu_the_exported_repository_answers_over_grpc_with_provenance(trained: Any, tmp_path: Path) -> None:
    """On a GPU: `tuna export --trtllm`, tritonserver on trtllm/model_repository, a question over gRPC: an answer and
    its provenance, and the same greedy answer as the CPU repository's HF step (bf16 vs fp32 may differ in a token:
    compared as non-empty text and the same provenance)."""
    import os
    import shutil
    import subprocess
    import time

    from tuna.serve.client import TunaClient
    from tuna.serve.export import export_repository
    from tuna.serve.server import free_port

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained.cfg.data_dir}"])
    export_repository(cfg, "tuna", out=tmp_path / "tuna", trtllm=True, log=lambda s: None)
    repo = tmp_path / "tuna" / "trtllm" / "model_repository"
    binary = shutil.which("tritonserver") or "/opt/tritonserver/bin/tritonserver"
    grpc, http, metrics = (free_port("127.0.0.1") for _ in range(3))
    env = dict(os.environ, TUNA_SOURCE_ROOT=str(Path(__file__).resolve().parents[2] / "platform"))
    log = open(tmp_path / "tritonserver.log", "w")
    proc = subprocess.Popen([binary, f"--model-repository={repo}", f"--grpc-port={grpc}", f"--http-port={http}",
                             f"--metrics-port={metrics}", "--grpc-address=127.0.0.1", "--http-address=127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    client = TunaClient(f"127.0.0.1:{grpc}", timeout=300)
    try:
        deadline = time.monotonic() + 600
        while not client.ready():
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "tritonserver did not get ready in 600 s"
            time.sleep(2)
        image = sorted((trained.cfg.data_dir / "world" / "eval" / "finer" / "ood" / "images").glob("*.png"))[0].read_bytes()
        got = client.ask(image, "What is in the image?", max_tokens=8)
        assert got.text.strip() and got.provenance["datastore"] == "A" and got.provenance["tags"]
        many = [client.ask(image, "What is in the image?", max_tokens=8) for _ in range(4)]
        assert all(m == got for m in many)   # greedy: repeatable through the engine's in-flight batching
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)
        log.close()


@pytest.mark.gpu
@gpu
def test_gpu_the_engine_matches_the_hf_step_on_the_same_prompt_rows(trained: Any, tmp_path: Path) -> None:
    """TrtllmEngine (TunaLlamaForCausalLM, fp16) and the CPU HF step greedy-decode the same ids + rows alike."""
    from tuna.serve.ensemble import GenerationRequest, Generator
    from tuna.serve.export import export_repository
    from tuna.serve.trtllm_engine import TrtllmEngine

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained.cfg.data_dir}", "serve.trtllm_dtype=fp16"])
    export_repository(cfg, "tuna", out=tmp_path / "tuna", trtllm=True, log=lambda s: None)
    engine = TrtllmEngine(tmp_path / "tuna" / "trtllm" / "model_repository" / "tensorrt_llm" / "1")
    hf = Generator(tmp_path / "tuna" / "model_repository" / "tensorrt_llm" / "1" / "assets")
    rng = np.random.default_rng(0)
    try:
        ids = np.array([1, engine.vocab_size, engine.vocab_size + 1, 5, 6], np.int32)
        table = rng.normal(0, 0.02, (2, engine.hidden)).astype(np.float32)
        rows = engine.check(ids, table, 6, engine.eos_id, 0.0, 0)
        got = engine.tokens(engine.submit(rows, 6, engine.eos_id, 0).result(), engine.eos_id)
        want = hf([GenerationRequest(ids, table, 6, engine.eos_id, 0)])[0]
        assert got.tolist()[:2] == list(want)[:2]   # fp16 vs fp32: the first tokens agree
    finally:
        engine.close()
