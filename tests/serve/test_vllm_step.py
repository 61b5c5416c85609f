"""The vLLM step (``tuna.serve.vllm_step.VllmLLMModel``) and its engine loop around a stand-in engine: per-request checks,
answers through response senders, requests joining a running batch, streamed token chunks, a dead engine answered
UNAVAILABLE in one line and restarted by the step, a failed restart reported. The real engine inside a real
tritonserver is tests/serve/test_vllm.py's (markers vllm + integration); this one runs everywhere in seconds."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from triton_fakes import FakePb, FakeRequest

from tuna.errors import EngineUnavailable, InvalidRequest

HIDDEN, VOCAB = 8, 16
FINAL = FakePb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class FakeEngine:
    """Stands in for tuna.serve.vllm_engine.VllmEngine: the real front-door embedding lookup, and an incremental API
    that makes one token per step per running request (answer of a request: 3, 4, ... up to its length % 5 + 1
    tokens). Like the real engine, a dead one blocks in step() forever."""

    started = 0
    fail_next: str | None = None

    def __init__(self) -> None:
        if FakeEngine.fail_next:
            raise RuntimeError(FakeEngine.fail_next)
        FakeEngine.started += 1
        self.hidden, self.eos_id, self.is_dead, self.closed = HIDDEN, 2, False, False
        self.weight = torch.arange(VOCAB * HIDDEN, dtype=torch.float32).reshape(VOCAB, HIDDEN) / 100
        self.running: dict[str, list[int]] = {}     # request id -> [made, wanted, streamed]
        self.batches: list[set[str]] = []           # the running requests of each step
        self.step_seconds = 0.01

    @staticmethod
    def answer(req: Any) -> list[int]:
        return list(range(3, 3 + len(req.prompt_embeds) % 5 + 1))

    def prompt_embeddings(self, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        from tuna.serve.ensemble import prompt_embeddings

        return prompt_embeddings(self.weight, ids, table).numpy()

    def check(self, req: Any) -> None:
        if not np.isfinite(req.prompt_embeds).all():
            raise InvalidRequest("prompt_embeds: 1 values are NaN or infinite")

    def add(self, request_id: str, req: Any, stream: bool = False) -> None:
        self.running[request_id] = [0, len(self.answer(req)), int(stream)]

    def busy(self) -> bool:
        return bool(self.running)

    def step(self) -> list:
        from tuna.serve.vllm_engine import EngineUpdate

        while self.is_dead:
            time.sleep(0.05)                         # the real client waits on a dead core's output queue
        time.sleep(self.step_seconds)
        self.batches.append(set(self.running))
        out = []
        for rid, state in list(self.running.items()):
            state[0] += 1
            done = state[0] >= state[1]
            if done:
                del self.running[rid]
            if done or state[2]:
                out.append(EngineUpdate(rid, np.arange(3, 3 + state[0], dtype=np.int32), done))
        return out

    def abort(self, request_ids: list) -> None:
        for rid in request_ids:
            self.running.pop(rid, None)

    def dead(self) -> bool:
        return self.is_dead

    def close(self) -> None:
        self.closed = True


def make_step(tmp_path: Path, decoupled: bool) -> Any:
    from tuna.serve import vllm_step

    assets = tmp_path / "tensorrt_llm" / "1" / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "serving.json").write_text(json.dumps({"silent_token_ids": [0], "engine": {"name": "vllm", "max_model_len": 0}}))
    model = vllm_step.VllmLLMModel()
    model.initialize({"model_repository": str(tmp_path / "tensorrt_llm"), "model_version": "1",
                      "model_config": json.dumps({"model_transaction_policy": {"decoupled": decoupled}})})
    return model


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuna.serve import vllm_step

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakePb("triton_python_backend_utils"))
    monkeypatch.setattr(vllm_step.VllmLLMModel, "_start", lambda self: FakeEngine())
    FakeEngine.started, FakeEngine.fail_next = 0, None


@pytest.fixture
def step(fakes: None, tmp_path: Path):
    model = make_step(tmp_path, decoupled=False)
    yield model
    model.finalize()


@pytest.fixture
def streaming_step(fakes: None, tmp_path: Path):
    model = make_step(tmp_path, decoupled=True)
    yield model
    model.finalize()


def request(ids: list[int], table: np.ndarray, max_tokens: int = 4, stream: bool | None = None) -> FakeRequest:
    tensors = {"input_ids": np.array([ids], np.int32), "prompt_embedding_table": table[None].astype(np.float32),
               "request_output_len": np.array([[max_tokens]], np.int32), "end_id": np.array([[2]], np.int32)}
    if stream is not None:
        tensors["streaming"] = np.array([[stream]], bool)
    return FakeRequest(tensors)


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def answered(requests: list[FakeRequest], seconds: float = 10.0) -> list[list[tuple[Any, int]]]:
    for r in requests:
        assert r.sender.done.wait(seconds), "a request was never answered with a final response"
    return [r.sender.sent for r in requests]


def tokens(response: Any) -> list[int]:
    ids, length = response.outputs["output_ids"], response.outputs["sequence_length"]
    assert ids.dtype == np.int32 and ids.shape == (1, 1, int(length.reshape(-1)[0]))
    return ids.reshape(-1).tolist()


def test_bad_requests_get_their_own_invalid_argument_and_the_others_one_final_answer(step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    nan = table.copy()
    nan[0, 1] = np.nan
    batch = [request([1, VOCAB, VOCAB + 1, 5], table),
             request([1, VOCAB], np.ones((2, HIDDEN + 1), np.float32)),        # another model's hidden size
             request([1, VOCAB + 2], table),                                  # a row the table does not have
             request([1, VOCAB], nan),                                        # NaN
             request([1, VOCAB], table, max_tokens=0),
             request([4, 5, 6], table, stream=True)]                          # not decoupled: one answer anyway
    assert step.execute(batch) is None                                        # answers go through the senders
    out = answered(batch)
    assert all(len(sent) == 1 and flags == FINAL for sent in out for _, flags in sent)
    responses = [sent[0][0] for sent in out]
    assert [r.error.code if r.error else "ok" for r in responses] == ["ok", "INVALID_ARG", "INVALID_ARG", "INVALID_ARG", "INVALID_ARG", "ok"]
    assert "need (rows, 8)" in responses[1].error.message and "ids must be in" in responses[2].error.message
    assert "NaN" in responses[3].error.message and "max_tokens: 0" in responses[4].error.message
    assert all("\n" not in r.error.message for r in responses if r.error)
    assert tokens(responses[0]) == [3, 4, 5, 6, 7] and tokens(responses[5]) == [3, 4, 5, 6]


def test_requests_join_the_running_batch_instead_of_waiting_for_it(step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    step.engine.step_seconds = 0.05
    first = request([1, VOCAB, VOCAB + 1, 5], table)                           # 5 tokens = 5 steps
    step.execute([first])
    wait_for(lambda: len(step.engine.batches) >= 1)
    second = request([4, 5, 6], table)                                        # arrives mid-generation
    step.execute([second])
    out = answered([first, second])
    assert tokens(out[0][0][0]) == [3, 4, 5, 6, 7] and tokens(out[1][0][0]) == [3, 4, 5, 6]
    ids = {rid for batch in step.engine.batches for rid in batch}
    assert any(len(batch) == 2 for batch in step.engine.batches), step.engine.batches   # one engine step ran both
    assert len(ids) == 2


def test_a_streamed_request_gets_a_chunk_per_step_and_the_same_answer_as_unstreamed(streaming_step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    streamed, plain, bad = (request([1, VOCAB, VOCAB + 1, 5], table, stream=True), request([1, VOCAB, VOCAB + 1, 5], table),
                            request([1, VOCAB + 2], table, stream=True))
    streaming_step.execute([streamed, plain, bad])
    s, p, b = answered([streamed, plain, bad])
    assert [flags for _, flags in s] == [0, 0, 0, 0, FINAL]
    assert [tokens(r) for r, _ in s] == [[3], [3, 4], [3, 4, 5], [3, 4, 5, 6], [3, 4, 5, 6, 7]]   # all tokens so far
    assert len(p) == 1 and p[0][1] == FINAL and tokens(p[0][0]) == tokens(s[-1][0])
    assert len(b) == 1 and b[0][1] == FINAL and b[0][0].error.code == "INVALID_ARG"
    # In the streaming ensemble the retrieval step's provenance rides along (bytes) on every response.
    prov = np.frombuffer(b'{"tags": ["x"]}', np.uint8)
    carried = request([4, 5, 6], table, stream=True)
    carried.tensors["provenance_in"] = prov[None]
    streaming_step.execute([carried])
    (sent,) = answered([carried])
    assert len(sent) == 4 and all(r.outputs["provenance_out"].tobytes() == prov.tobytes() for r, _ in sent)


def test_the_streaming_wiring_passes_triton_s_decoupled_rules_and_the_check_catches_mixed_origins() -> None:
    from tuna.serve import model_config as mc

    b = mc.Batching(8, 2000, 1)

    def repo(stream: bool, ensemble_stream: bool, post_stream: bool) -> dict:
        return {mc.ENSEMBLE: mc.ensemble(b, ensemble_stream), "preprocessing": mc.preprocessing(b),
                "retrieval": mc.retrieval(b, "TYPE_FP32", 1, stream), "tensorrt_llm": mc.llm_python(b, "TYPE_FP32", "vllm", stream),
                "postprocessing": mc.postprocessing(b, post_stream)}

    assert mc.check_wiring(repo(False, False, False)) == [] and mc.check_wiring(repo(True, True, True)) == []
    streaming = repo(True, True, True)
    assert streaming["tensorrt_llm"].model_transaction_policy.decoupled
    assert not repo(False, False, False)["tensorrt_llm"].model_transaction_policy.decoupled
    assert repo(False, False, False)["tensorrt_llm"].dynamic_batching.max_queue_delay_microseconds == 0   # execute returns at once
    # A decoupled LLM step with the unary wiring: postprocessing would mix the step's responses with retrieval's
    # provenance, which Triton refuses at load ("receives inputs originated from different decoupled models").
    problems = mc.check_wiring(repo(True, False, False))
    assert any("follow different decoupled models" in p for p in problems), problems
    with pytest.raises(ValueError, match="only the vllm engine streams"):
        mc.llm_python(b, "TYPE_FP32", "hf", stream=True)


def test_a_dead_engine_fails_what_is_in_flight_in_one_line_and_the_step_restarts_it(step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    first = step.engine
    first.step_seconds = 0.2
    inflight = [request([1, VOCAB, VOCAB + 1, 5], table) for _ in range(3)]
    step.execute(inflight)
    wait_for(lambda: len(first.batches) >= 1)
    first.is_dead = True                                                      # the engine core died mid-generation
    for sent in answered(inflight):
        (resp, flags), = sent
        assert flags == FINAL and resp.error.code == "UNAVAILABLE" and "vLLM engine core died" in resp.error.message
        assert "\n" not in resp.error.message
    wait_for(lambda: step.engine is not None and step.engine is not first)
    assert first.closed and FakeEngine.started == 2 and step.restarts == 1
    ok = request([1, VOCAB], table)
    step.execute([ok])
    (resp, _), = answered([ok])[0]
    assert resp.error is None and tokens(resp) == [3, 4, 5]
    # Found by the watcher while idle, and the restart fails: every request says so in one line, at once.
    FakeEngine.fail_next = "no memory for the KV cache"
    step.engine.is_dead = True
    wait_for(lambda: "restart failed" in step.state)
    failed = request([1, VOCAB], table)
    step.execute([failed])
    (resp, _), = answered([failed], seconds=1)[0]
    assert resp.error.code == "UNAVAILABLE" and "the restart failed: RuntimeError: no memory for the KV cache" in resp.error.message
    assert "\n" not in resp.error.message


def test_the_loop_keeps_serving_when_a_sender_fails_and_reports_unexpected_engine_errors(step: Any) -> None:
    from tuna.serve.engine_loop import EngineLoop

    class Broken:
        def send(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("client gone")

    table = np.ones((2, HIDDEN), np.float32)
    gone, ok = request([1, VOCAB, VOCAB + 1, 5], table), request([4, 5, 6], table)
    gone.sender = Broken()  # type: ignore[assignment]
    step.execute([gone, ok])
    (resp, _), = answered([ok])[0]
    assert tokens(resp) == [3, 4, 5, 6]

    class Failing(FakeEngine):
        def step(self) -> list:
            raise ValueError("shape mismatch in the scheduler")

    loop = EngineLoop(Failing())
    got: list[BaseException] = []
    done = threading.Event()

    class Sink:
        def emit(self, token_ids: np.ndarray, final: bool) -> None:
            raise AssertionError("no tokens expected")

        def fail(self, err: BaseException) -> None:
            got.append(err)
            done.set()

    loop.submit(EngineRequestLike(), False, Sink())
    assert done.wait(5) and isinstance(got[0], ValueError) and loop.in_flight() == 0
    loop.stop()
    with pytest.raises(EngineUnavailable):
        loop.submit(EngineRequestLike(), False, Sink())


class EngineRequestLike:
    prompt_embeds = np.zeros((3, HIDDEN), np.float32)


def test_the_step_starts_vllm_with_the_exported_dtype_and_memory_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """serving.json's engine settings (serve.vllm_dtype / vllm_memory_fraction at export) reach vLLM's LLM(): bfloat16
    and 0.9 of a GPU for llava7b; a repository exported before these keys existed keeps float32 and 0.1."""
    from tuna.serve import vllm_engine, vllm_step

    seen: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, folder: Any, **kwargs: Any) -> None:
            seen.append(kwargs)

    monkeypatch.setattr(vllm_engine, "VllmEngine", Recorder)
    step = vllm_step.VllmLLMModel()
    for engine, want in [({"name": "vllm", "dtype": "bfloat16", "memory_fraction": 0.9}, ("bfloat16", 0.9, True)),
                         ({"name": "vllm", "engine_process": False}, ("float32", 0.1, False)),
                         ({"name": "vllm"}, ("float32", 0.1, True))]:
        step.folder, step.settings = tmp_path, engine
        step._start()
        assert (seen[-1]["dtype"], seen[-1]["memory_fraction"], seen[-1]["engine_process"]) == want


@pytest.mark.parametrize(("key", "value", "message"), [
    ("vllm_dtype", "fp8", r"serve\.vllm_dtype: must be one of float32, bfloat16, float16 \(float32 on CPU, bfloat16 on GPUs\), got 'fp8'"),
    ("vllm_memory_fraction", "1.5", r"serve\.vllm_memory_fraction: must be in 0\.01\.\.0\.99"),
])
def test_bad_vllm_engine_settings_are_refused_in_one_line(key: str, value: str, message: str) -> None:
    from support import SMOKE
    from tuna.recipe import load_recipe

    with pytest.raises(Exception, match=message) as err:
        load_recipe(SMOKE, [f"serve.{key}={value}"])
    assert "\n" not in str(err.value)


def test_the_gpu_recipe_serves_vllm_in_bfloat16_on_most_of_the_gpu() -> None:
    from support import CONFIGS
    from tuna.recipe import load_recipe

    cfg = load_recipe(CONFIGS / "llava7b.yaml")
    assert (cfg.serve.vllm_dtype, cfg.serve.vllm_memory_fraction) == ("bfloat16", 0.9)
