"""The vLLM LLM step (``VllmLLMModel``) around a stand-in engine: per-request checks, batch answers, a dead engine
answered UNAVAILABLE in one line and restarted by the step, a failed restart reported. The real engine inside a real
tritonserver is tests/serve/test_vllm.py's (markers vllm + integration); this one runs everywhere in a second."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from triton_fakes import FakePb

from tuna.errors import EngineUnavailable, InvalidRequest

HIDDEN, VOCAB = 8, 16


class FakeEngine:
    """Stands in for tuna.serve.vllm_engine.VllmEngine: the same front-door checks (the real ones), canned answers."""

    started = 0
    fail_next: str | None = None

    def __init__(self) -> None:
        if FakeEngine.fail_next:
            raise RuntimeError(FakeEngine.fail_next)
        FakeEngine.started += 1
        self.hidden, self.eos_id, self.is_dead, self.closed = HIDDEN, 2, False, False
        self.weight = torch.arange(VOCAB * HIDDEN, dtype=torch.float32).reshape(VOCAB, HIDDEN) / 100

    def prompt_embeddings(self, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        from tuna.serve.ensemble import prompt_embeddings

        return prompt_embeddings(self.weight, ids, table).numpy()

    def check(self, req: Any) -> None:
        if not np.isfinite(req.prompt_embeds).all():
            raise InvalidRequest("prompt_embeds: 1 values are NaN or infinite")

    def generate(self, requests: list, text: bool = True) -> list:
        from tuna.serve.vllm_engine import EngineAnswer

        if self.is_dead:
            raise EngineUnavailable("vLLM engine core died during generation; the LLM step restarts it")
        return [EngineAnswer(np.arange(3, 3 + len(r.prompt_embeds) % 5 + 1, dtype=np.int32), "") for r in requests]

    def dead(self) -> bool:
        return self.is_dead

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from tuna.serve import python_backend

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakePb("triton_python_backend_utils"))
    monkeypatch.setattr(python_backend.VllmLLMModel, "_start", lambda self: FakeEngine())
    FakeEngine.started, FakeEngine.fail_next = 0, None
    assets = tmp_path / "tensorrt_llm" / "1" / "assets"
    assets.mkdir(parents=True)
    (assets / "serving.json").write_text(json.dumps({"silent_token_ids": [0], "engine": {"name": "vllm", "max_model_len": 0}}))
    model = python_backend.VllmLLMModel()
    model.initialize({"model_repository": str(tmp_path / "tensorrt_llm"), "model_version": "1"})
    yield model
    model.finalize()


def request(ids: list[int], table: np.ndarray, max_tokens: int = 4) -> dict:
    return {"input_ids": np.array([ids], np.int32), "prompt_embedding_table": table[None].astype(np.float32),
            "request_output_len": np.array([[max_tokens]], np.int32), "end_id": np.array([[2]], np.int32)}


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_bad_requests_get_their_own_invalid_argument_and_the_batch_is_answered(step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    nan = table.copy()
    nan[0, 1] = np.nan
    batch = [request([1, VOCAB, VOCAB + 1, 5], table),
             request([1, VOCAB], np.ones((2, HIDDEN + 1), np.float32)),        # another model's hidden size
             request([1, VOCAB + 2], table),                                  # a row the table does not have
             request([1, VOCAB], nan),                                        # NaN
             request([1, VOCAB], table, max_tokens=0),
             request([4, 5, 6], table)]
    out = step.execute(batch)
    assert [r.error.code if r.error else "ok" for r in out] == ["ok", "INVALID_ARG", "INVALID_ARG", "INVALID_ARG", "INVALID_ARG", "ok"]
    assert "need (rows, 8)" in out[1].error.message and "ids must be in" in out[2].error.message
    assert "NaN" in out[3].error.message and "max_tokens: 0" in out[4].error.message
    assert all("\n" not in r.error.message for r in out if r.error)
    ids, length = out[0].outputs["output_ids"], out[0].outputs["sequence_length"]
    assert ids.dtype == np.int32 and ids.shape == (1, 1, int(length.reshape(-1)[0]))


def test_a_dead_engine_is_unavailable_in_one_line_then_restarted_by_the_step(step: Any) -> None:
    table = np.ones((2, HIDDEN), np.float32)
    first = step.engine
    first.is_dead = True                                                 # the engine core died mid-call
    (dead,) = step.execute([request([1, VOCAB], table)])
    assert dead.error.code == "UNAVAILABLE" and "vLLM engine core died" in dead.error.message
    wait_for(lambda: step.engine is not None and step.engine is not first)
    assert first.closed and FakeEngine.started == 2 and step.restarts == 1
    (ok,) = step.execute([request([1, VOCAB], table)])
    assert ok.error is None
    # Found by the watcher while idle, and the restart fails: every request says so in one line.
    FakeEngine.fail_next = "no memory for the KV cache"
    step.engine.is_dead = True
    wait_for(lambda: "restart failed" in step.state)
    (failed,) = step.execute([request([1, VOCAB], table)])
    assert failed.error.code == "UNAVAILABLE" and "the restart failed: RuntimeError: no memory for the KV cache" in failed.error.message
    assert "\n" not in failed.error.message
