"""The ``tensorrt_llm`` step of the GPU repository (`tuna export --trtllm`): TensorRT-LLM's PyTorch LLM API behind
the same tensors as the hf and vllm steps (:mod:`tuna.serve.python_backend`).

Like TensorRT-LLM's own llmapi model, ``execute`` never waits for a generation: each request is checked (its own
INVALID_ARGUMENT in one line, the rest still served), handed to the engine, and answered through its response sender
when the engine finishes it. So Triton keeps feeding the engine while earlier requests decode, and the engine's
in-flight batching, not Triton's dynamic batcher, decides what runs together. A failed or dead engine answers each
affected request UNAVAILABLE in one line (the pod's probes and restart policy bring the server back).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tuna.errors import EngineUnavailable
from tuna.serve.python_backend import _error, _generation_request, _llm_outputs, _log, _pb


class TrtllmLLMModel:
    """Triton python model of the ``tensorrt_llm`` step on :class:`tuna.serve.trtllm_engine.TrtllmEngine`."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.folder = Path(args["model_repository"]) / args["model_version"]
        self.engine = self._start()   # a failure here fails the model's load, with TensorRT-LLM's reason in the log
        workers = int(os.environ.get("TUNA_TRTLLM_WAITERS", "256"))   # requests in flight at once (threads that wait)
        self.waiters = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tuna-trtllm")

    def _start(self) -> Any:
        from tuna.serve.trtllm_engine import TrtllmEngine

        return TrtllmEngine(self.folder)

    def execute(self, requests: list[Any]) -> None:
        pb = _pb()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                req = _generation_request(request, self.engine.hidden, self.engine.eos_id)
                rows = self.engine.check(req.input_ids, req.table, req.max_new_tokens, req.end_id, req.temperature, req.top_k)
                future = self.engine.submit(rows, req.max_new_tokens, req.end_id, req.pad_id, req.temperature, req.top_k, req.seed)
            except Exception as err:  # noqa: BLE001 - the request's own error; the others are still served
                sender.send(pb.InferenceResponse(error=_error(err)), flags=final)
                continue
            self.waiters.submit(self._answer, future, sender, req.end_id)
        return None

    def _answer(self, future: Any, sender: Any, end_id: int) -> None:
        pb = _pb()
        try:
            response = pb.InferenceResponse(output_tensors=_llm_outputs(self.engine.tokens(future.result(), end_id)))
        except Exception as err:  # noqa: BLE001 - an engine failure answers this request, in one line
            line = (str(err).splitlines() or [""])[0][:300]
            _log(f"tuna TensorRT-LLM step: generation failed: {type(err).__name__}: {line}")
            response = pb.InferenceResponse(error=_error(EngineUnavailable(f"TensorRT-LLM engine failed: {type(err).__name__}: {line}")))
        sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self.waiters.shutdown(wait=True, cancel_futures=False)
        self.engine.close()
        _log("tuna TensorRT-LLM step: engine stopped")


__all__ = ["TrtllmLLMModel"]
