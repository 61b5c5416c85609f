"""The ``tensorrt_llm`` step on vLLM (serve.engine=vllm): Triton python model, its stub in the vLLM venv.

``execute`` never waits for a generation. Each request is checked at our front door (ids against the prompt table,
embedding shape, dtype, length, finite values, settings: its own INVALID_ARGUMENT in one line, the others still
served) and handed to ONE engine loop thread (:class:`tuna.serve.engine_loop.EngineLoop`) that drives vLLM's
incremental API: requests join the running batch between engine steps (continuous batching), instead of waiting for
the batch of an earlier ``execute`` to finish. Each request is answered through its response sender:

- not streamed: one final response (output_ids, sequence_length), the ensemble contract of every engine;
- streamed (input ``streaming`` true, only when the model is decoupled, ``serve.vllm_stream``): one response per engine
  step that made tokens, each carrying ALL new tokens so far (the postprocessing step decodes each response on its own,
  and decoding a prefix of ids is what keeps word boundaries right), the last one flagged final.

Why decoupled is a recipe choice (``serve.vllm_stream``) and not always on: Triton 2.51 treats an ensemble that holds
a decoupled step as decoupled; its unary gRPC ModelInfer then refuses it ("ModelInfer RPC doesn't support models with
decoupled transaction policy", measured on the bundled server; HTTP inference likewise, Triton's decoupled-models
guide), so curl/HTTP clients and probes that infer would break. Not decoupled, the step still answers through response
senders (one final response each, as TensorRT-LLM's llmapi model does; measured: Triton calls ``execute`` again while
earlier requests are generating), so continuous batching holds in both modes; a ``streaming`` request to a
non-decoupled step gets its answer in one response.

A dead engine core (noticed by the loop's failing step or by the watcher thread while the loop waits on it) fails
every request in flight with UNAVAILABLE in one line; requests that come while the engine restarts get UNAVAILABLE at
once; the step restarts the engine itself.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from typing import Any

import numpy as np

from tuna.errors import EngineUnavailable, TunaError
from tuna.serve.python_backend import _assets, _error, _generation_request, _llm_outputs, _log, _one, _pb, _row, _tensor


class _Responder:
    """One request's response sender as the engine loop's sink."""

    def __init__(self, sender: Any, provenance: np.ndarray | None = None) -> None:
        self.sender = sender
        self.provenance = provenance   # (n,) uint8: the retrieval step's provenance, passed on (a streaming ensemble)
        self.sent = -1                 # tokens in the last response (a streamed step without new tokens sends nothing)

    def emit(self, token_ids: np.ndarray, final: bool) -> None:
        pb = _pb()
        if not final and len(token_ids) <= self.sent:
            return
        self.sent = len(token_ids)
        tensors = _llm_outputs(token_ids)
        if self.provenance is not None:
            tensors.append(_tensor("provenance_out", self.provenance[None]))
        self.sender.send(pb.InferenceResponse(output_tensors=tensors),
                         flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    def fail(self, err: BaseException) -> None:
        pb = _pb()
        self.sender.send(pb.InferenceResponse(error=_error(err)), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class VllmLLMModel:
    """Triton python model of the ``tensorrt_llm`` step on :class:`tuna.serve.vllm_engine.VllmEngine` (module doc)."""

    def initialize(self, args: dict[str, Any]) -> None:
        import locale

        from tuna.serve.ensemble import read_serving

        problem = os.environ.get("TUNA_VLLM_ERROR")   # set by the step's vllm_env.tar.gz when there is no vLLM venv
        if problem:
            raise TunaError(problem)

        # The stub's embedded Python never sets the C locale from the environment, so text files open as ASCII and
        # torch (imported by vllm) fails reading its UTF-8 templates: use UTF-8 as a normal interpreter would.
        for name in ("C.UTF-8", "C.utf8", ""):
            try:
                locale.setlocale(locale.LC_CTYPE, name)
                break
            except locale.Error:
                continue

        self.folder = _assets(args)
        self.settings = read_serving(self.folder).get("engine", {})
        config = json.loads(args.get("model_config") or "{}")
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        self.lock = threading.Lock()
        self.engine: Any = None
        self.loop: Any = None
        self.state = ""                  # '' serving, else why there is no engine (one line)
        self.restarts = 0
        self.engine = self._start()      # a failure here fails the model's load, with vLLM's reason in the log
        self.loop = self._loop(self.engine)
        self.stop = threading.Event()
        threading.Thread(target=self._watch, name="tuna-vllm-watch", daemon=True).start()

    def _start(self) -> Any:
        from tuna.serve.vllm_engine import VllmEngine

        return VllmEngine(self.folder, max_model_len=int(self.settings.get("max_model_len") or 1 << 20),
                          kv_cache_gib=float(self.settings.get("kv_cache_gib", 1.0)),
                          dtype=str(self.settings.get("dtype", "float32")),
                          memory_fraction=float(self.settings.get("memory_fraction", 0.1)),
                          max_num_seqs=int(self.settings.get("max_num_seqs", 64)),
                          engine_process=bool(self.settings.get("engine_process", True)))

    def _loop(self, engine: Any) -> Any:
        from tuna.serve.engine_loop import EngineLoop

        return EngineLoop(engine, on_dead=self._restart, log=_log)

    # ------------------------------------------------------------------------------------------ liveness

    def _watch(self) -> None:
        while not self.stop.wait(1.0):
            engine = self.engine
            if engine is not None and engine.dead():
                self._restart("vLLM engine core died")

    def _restart(self, why: str) -> None:
        with self.lock:
            if self.engine is None:        # already restarting (or given up)
                return
            old, loop, self.engine, self.loop = self.engine, self.loop, None, None
            self.state = f"{why}; restarting it (since {time.strftime('%H:%M:%S')})"
        _log(f"tuna vLLM step: {self.state}")
        loop.stop()
        failed = loop.fail_all(EngineUnavailable(f"{why} during generation; the LLM step restarts it"))
        if failed:
            _log(f"tuna vLLM step: {failed} requests in flight answered UNAVAILABLE")
        old.close()

        def run() -> None:
            try:
                engine = self._start()
            except Exception as err:  # noqa: BLE001 - reported to every later request
                self.state = f"{why}; the restart failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
                _log(f"tuna vLLM step: {self.state}")
                return
            with self.lock:
                self.engine, self.loop, self.state = engine, self._loop(engine), ""
                self.restarts += 1
            _log("tuna vLLM step: engine restarted")

        threading.Thread(target=run, name="tuna-vllm-restart", daemon=True).start()

    def _live(self) -> tuple[Any, Any]:
        engine, loop = self.engine, self.loop
        if engine is None or loop is None:
            raise EngineUnavailable(self.state or "vLLM engine is not running")
        return engine, loop

    # ------------------------------------------------------------------------------------------ requests

    def parse(self, request: Any) -> tuple[Any, bool, np.ndarray | None]:
        """One request checked (InvalidRequest naming the field) -> (EngineRequest, streamed, provenance bytes)."""
        from tuna.serve.vllm_engine import EngineRequest

        engine, _ = self._live()
        req = _generation_request(request, engine.hidden, engine.eos_id)
        emb = engine.prompt_embeddings(req.input_ids, req.table)   # ids vs table: InvalidRequest
        out = EngineRequest(emb, req.max_new_tokens, req.end_id, req.temperature, req.top_k, req.seed)
        engine.check(out)   # shape, length, finite values, settings: InvalidRequest before the engine sees it
        stream = _one(request, "streaming", required=False)
        prov = _row(request, "provenance_in").astype(np.uint8) if _pb().get_input_tensor_by_name(request, "provenance_in") is not None else None
        return out, bool(stream) and self.decoupled, prov

    def execute(self, requests: list[Any]) -> None:
        pb = _pb()
        for request in requests:
            sender = request.get_response_sender()
            try:
                req, stream, prov = self.parse(request)
                _, loop = self._live()
                loop.submit(req, stream, _Responder(sender, prov))
            except Exception as err:  # noqa: BLE001 - the request's own error; the others are still served
                if not isinstance(err, TunaError):
                    _log(traceback.format_exc())
                sender.send(pb.InferenceResponse(error=_error(err)), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def finalize(self) -> None:
        self.stop.set()
        engine, loop = self.engine, self.loop
        if loop is not None:
            loop.stop()
            loop.fail_all(EngineUnavailable("the server is shutting down"))
        if engine is not None:
            engine.close()
        _log("tuna vLLM step: engine stopped")


__all__ = ["VllmLLMModel"]
