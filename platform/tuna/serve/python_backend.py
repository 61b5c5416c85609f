"""Triton python-backend models of the ensemble: tensors in, :mod:`tuna.serve.ensemble` called, tensors out.

Each exported ``<step>/1/model.py`` names a class here as ``TritonPythonModel`` (after putting
``$TUNA_SOURCE_ROOT`` first on sys.path: the stubs ignore PYTHONPATH); the classes run only inside Triton's
python-backend stub (``triton_python_backend_utils`` is imported there). The LLM step is :class:`LLMModel`
(serve.engine=hf) or :class:`VllmLLMModel` (serve.engine=vllm, its stub in the vLLM venv).
Per request: a problem it caused becomes that request's error (INVALID_ARGUMENT naming the field, or
UNAVAILABLE naming the Milvus URI or the dead engine) and the rest of the batch is still answered; anything
unexpected is an INTERNAL error for that request. The model never raises out of ``execute``, so the server keeps
serving.
"""

from __future__ import annotations

import abc
import json
import os
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from tuna.errors import DatastoreUnavailable, EngineUnavailable, InvalidRequest, TunaError


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only inside tritonserver's python stub

    return pb_utils


def _assets(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / args["model_version"] / "assets"


def _error(err: BaseException) -> Any:
    pb = _pb()
    if isinstance(err, InvalidRequest):
        return pb.TritonError(str(err), pb.TritonError.INVALID_ARG)
    if isinstance(err, (DatastoreUnavailable, EngineUnavailable)):
        return pb.TritonError(str(err), pb.TritonError.UNAVAILABLE)
    if isinstance(err, TunaError):
        return pb.TritonError(str(err), pb.TritonError.INVALID_ARG)
    return pb.TritonError(f"internal error: {type(err).__name__}: {err}", pb.TritonError.INTERNAL)


def _one(request: Any, name: str, required: bool = True) -> Any:
    """The single value of input ``name`` of a one-row request (None for an absent optional input)."""
    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidRequest(f"{name}: missing; it is a required input")
        return None
    arr = _array(tensor)
    if arr.shape[0] != 1 or arr.size != 1:
        raise InvalidRequest(f"{name}: shape {list(arr.shape)}; send one value per request ([1, 1]): Triton batches "
                             f"concurrent requests itself")
    return arr.reshape(-1)[0]


def _row(request: Any, name: str) -> np.ndarray:
    """Input ``name`` of a one-row request without its batch dimension."""
    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidRequest(f"{name}: missing; it is a required input")
    arr = _array(tensor)
    if arr.shape[0] != 1:
        raise InvalidRequest(f"{name}: batch of {arr.shape[0]} in one request; send one row per request")
    return arr[0]


# The bundled stub's C++ side reads numpy arrays through numpy 1's struct layout: under numpy 2 (the vLLM venv) an
# output array came back with 0 bytes (measured: "cannot reshape array of size 0 into shape (1,1,1)"). There, numeric
# tensors cross as DLPack (no numpy internals involved); strings never go through the vLLM step.
_DLPACK = int(np.__version__.split(".")[0]) >= 2


def _array(tensor: Any) -> np.ndarray:
    if _DLPACK:
        import torch

        try:
            return torch.from_dlpack(tensor.to_dlpack()).numpy()
        except Exception:  # noqa: BLE001 - BYTES tensors have no DLPack form
            pass
    return tensor.as_numpy()


def _tensor(name: str, value: np.ndarray) -> Any:
    if _DLPACK and value.dtype != object:
        import torch
        from torch.utils.dlpack import to_dlpack

        return _pb().Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(np.ascontiguousarray(value))))
    return _pb().Tensor(name, value)


def _log(message: str) -> None:
    try:
        _pb().Logger.log_warn(message)
    except Exception:  # noqa: BLE001 - logging must never fail a request
        pass


class _Step(abc.ABC):
    """Shared ``execute``: per-request parsing with per-request errors, then one batched call."""

    @abc.abstractmethod
    def parse(self, request: Any) -> Any:
        """One request's inputs, checked (raise InvalidRequest naming the field)."""

    @abc.abstractmethod
    def run(self, items: list[Any]) -> list[list[Any]]:
        """Output tensors per parsed request, in order."""

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses: list[Any] = [None] * len(requests)
        items, where = [], []
        for i, request in enumerate(requests):
            try:
                items.append(self.parse(request))
                where.append(i)
            except Exception as err:  # noqa: BLE001 - the request's own error
                responses[i] = pb.InferenceResponse(error=_error(err))
        if items:
            try:
                outputs = self.run(items)
                for i, tensors in zip(where, outputs):
                    responses[i] = (pb.InferenceResponse(error=_error(tensors)) if isinstance(tensors, BaseException)
                                    else pb.InferenceResponse(output_tensors=tensors))
            except Exception as err:  # noqa: BLE001 - a batch-level failure answers each request
                if not isinstance(err, TunaError):
                    _log(traceback.format_exc())
                for i in where:
                    responses[i] = pb.InferenceResponse(error=_error(err))
        return responses


class PreprocessingModel(_Step):
    def initialize(self, args: dict[str, Any]) -> None:
        from tuna.serve.ensemble import Preprocessor

        self.step = Preprocessor(_assets(args))

    def parse(self, request: Any) -> Any:
        text = _one(request, "QUERY")
        image = _one(request, "IMAGE_BYTES")
        if not isinstance(image, (bytes, np.bytes_)):
            raise InvalidRequest("image_bytes_input: must be BYTES holding a PNG or JPEG file")
        return self.step(bytes(text) if isinstance(text, (bytes, np.bytes_)) else str(text), bytes(image),
                         int(_one(request, "REQUEST_OUTPUT_LEN")))

    def run(self, items: list[Any]) -> list[list[Any]]:
        return [[_tensor("INPUT_ID", p.input_ids[None]), _tensor("PIXEL_VALUES", p.pixel_values[None]),
                 _tensor("REQUEST_OUTPUT_LEN", np.array([[p.request_output_len]], np.int32)),
                 _tensor("OUT_END_ID", np.array([[p.end_id]], np.int32)),
                 _tensor("OUT_PAD_ID", np.array([[p.pad_id]], np.int32))] for p in items]


class RetrievalModel(_Step):
    def initialize(self, args: dict[str, Any]) -> None:
        from tuna.serve.ensemble import Retrieval

        self.step = Retrieval(_assets(args))
        config = json.loads(args["model_config"])
        table = next(o for o in config["output"] if o["name"] == "PROMPT_EMBEDDING_TABLE")
        self.table_dtype = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}.get(table["data_type"], np.float32)

    def parse(self, request: Any) -> Any:
        ds = _one(request, "DATASTORE", required=False)
        return _row(request, "INPUT_ID"), _row(request, "PIXEL_VALUES"), self.step.datastore_of(ds)

    def run(self, items: list[Any]) -> list[list[Any]]:
        ids, pixels, names = zip(*items)
        out = []
        for t in self.step(list(ids), list(pixels), list(names)):
            out.append([_tensor("INPUT_ID", t.input_ids[None]),
                        _tensor("INPUT_LENGTH", np.array([[len(t.input_ids)]], np.int32)),
                        _tensor("PROMPT_EMBEDDING_TABLE", t.table.astype(self.table_dtype)[None]),
                        _tensor("PROMPT_VOCAB_SIZE", np.array([[t.vocab_size]], np.int32)),
                        _tensor("PROVENANCE", np.array([[json.dumps(t.provenance, sort_keys=True).encode()]], dtype=object))])
        return out

    def finalize(self) -> None:
        self.step.close()


def _generation_request(request: Any, hidden: int, eos: int) -> Any:
    """The LLM step's inputs of one request (TensorRT-LLM's tensor names), settings checked; shared by both engines."""
    from tuna.serve.ensemble import GenerationRequest

    ids = _row(request, "input_ids")
    table = _pb().get_input_tensor_by_name(request, "prompt_embedding_table")
    table_arr = _array(table)[0] if table is not None else np.zeros((0, hidden), np.float32)
    end = _one(request, "end_id", required=False)
    pad = _one(request, "pad_id", required=False)
    temp = _one(request, "temperature", required=False)
    top_k = _one(request, "runtime_top_k", required=False)
    seed = _one(request, "random_seed", required=False)
    temperature = float(temp) if temp is not None else 0.0
    if not (0.0 <= temperature <= 10.0) or temperature != temperature:
        raise InvalidRequest(f"temperature: {temperature} is outside 0..10 (0 = greedy)")
    k = int(top_k) if top_k is not None else 0
    if not 0 <= k <= 100_000:
        raise InvalidRequest(f"top_k: {k} is outside 0..100000 (0 = no top-k filter)")
    max_new = int(_one(request, "request_output_len"))
    if max_new < 1:
        raise InvalidRequest(f"max_tokens: {max_new} must be >= 1")
    return GenerationRequest(ids, table_arr, max_new, int(end) if end is not None else eos,
                             int(pad) if pad is not None else 0, temperature, k, int(seed) if seed is not None else None)


def _llm_outputs(toks: np.ndarray) -> list[Any]:
    return [_tensor("output_ids", np.asarray(toks, np.int32)[None, None]),
            _tensor("sequence_length", np.array([[len(toks)]], np.int32))]


class LLMModel(_Step):
    """CPU stand-in for the ``tensorrt_llm`` step (same tensor names): transformers generate (serve.engine=hf)."""

    def initialize(self, args: dict[str, Any]) -> None:
        from tuna.serve.ensemble import Generator

        threads = int(os.environ.get("TUNA_SERVE_THREADS", "1"))
        self.step = Generator(_assets(args), threads=threads)

    def parse(self, request: Any) -> Any:
        req = _generation_request(request, self.step.hidden, self.step.lm.config.eos_token_id)
        self.step.embeddings(req)  # validates ids against the table now, as this request's own error
        return req

    def run(self, items: list[Any]) -> list[list[Any]]:
        return [_llm_outputs(toks) for toks in self.step(items)]


class VllmLLMModel(_Step):
    """The ``tensorrt_llm`` step on vLLM (serve.engine=vllm): same tensor names as :class:`LLMModel`.

    Its stub runs in the vLLM venv (the model's EXECUTION_ENV_PATH, see :mod:`tuna.serve.export`); vLLM's engine
    core is a process of its own. Every request is checked here before it reaches the engine (ids against the prompt
    table, embedding shape, dtype, length, finite values, settings: INVALID_ARGUMENT, the rest of the batch is still
    answered). A dead engine core is noticed by a watcher thread (or by the failing call): the requests in flight and
    those that come while the engine restarts get UNAVAILABLE in one line; the step restarts the engine itself."""

    def initialize(self, args: dict[str, Any]) -> None:
        import locale
        import threading

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
        self.lock = threading.Lock()
        self.engine: Any = None
        self.state = ""                  # '' serving, else why there is no engine (one line)
        self.restarts = 0
        self.engine = self._start()      # a failure here fails the model's load, with vLLM's reason in the log
        self.stop = threading.Event()
        threading.Thread(target=self._watch, name="tuna-vllm-watch", daemon=True).start()

    def _start(self) -> Any:
        from tuna.serve.vllm_engine import VllmEngine

        return VllmEngine(self.folder, max_model_len=int(self.settings.get("max_model_len") or 1 << 20),
                          kv_cache_gib=float(self.settings.get("kv_cache_gib", 1.0)),
                          dtype=str(self.settings.get("dtype", "float32")),
                          max_num_seqs=int(self.settings.get("max_num_seqs", 64)))

    def _watch(self) -> None:
        while not self.stop.wait(1.0):
            engine = self.engine
            if engine is not None and engine.dead():
                self._restart("vLLM engine core died")

    def _restart(self, why: str) -> None:
        import threading
        import time

        with self.lock:
            if self.engine is None:        # already restarting (or given up)
                return
            old, self.engine = self.engine, None
            self.state = f"{why}; restarting it (since {time.strftime('%H:%M:%S')})"
        _log(f"tuna vLLM step: {self.state}")
        old.close()

        def run() -> None:
            try:
                engine = self._start()
            except Exception as err:  # noqa: BLE001 - reported to every later request
                self.state = f"{why}; the restart failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
                _log(f"tuna vLLM step: {self.state}")
                return
            with self.lock:
                self.engine, self.state = engine, ""
                self.restarts += 1
            _log("tuna vLLM step: engine restarted")

        threading.Thread(target=run, name="tuna-vllm-restart", daemon=True).start()

    def _live(self) -> Any:
        engine = self.engine
        if engine is None:
            raise EngineUnavailable(self.state or "vLLM engine is not running")
        return engine

    def parse(self, request: Any) -> Any:
        from tuna.serve.vllm_engine import EngineRequest

        engine = self._live()
        req = _generation_request(request, engine.hidden, engine.eos_id)
        emb = engine.prompt_embeddings(req.input_ids, req.table)   # ids vs table: InvalidRequest
        out = EngineRequest(emb, req.max_new_tokens, req.end_id, req.temperature, req.top_k, req.seed)
        engine.check(out)   # shape, length, finite values, settings: InvalidRequest before the engine sees it
        return out

    def run(self, items: list[Any]) -> list[list[Any]]:
        engine = self._live()
        try:
            answers = engine.generate(items, text=False)
        except EngineUnavailable as err:
            self._restart(str(err).split(";")[0])
            raise
        return [a if isinstance(a, BaseException) else _llm_outputs(a.token_ids) for a in answers]

    def finalize(self) -> None:
        self.stop.set()
        if self.engine is not None:
            self.engine.close()
        _log("tuna vLLM step: engine stopped")


class PostprocessingModel(_Step):
    def initialize(self, args: dict[str, Any]) -> None:
        from tuna.serve.ensemble import Postprocessor

        self.step = Postprocessor(_assets(args))

    def parse(self, request: Any) -> Any:
        tokens = _row(request, "TOKENS_BATCH")            # (beams, n)
        length = int(_row(request, "SEQUENCE_LENGTH").reshape(-1)[0])
        provenance = _one(request, "PROVENANCE")
        return tokens[0][:length], provenance

    def run(self, items: list[Any]) -> list[list[Any]]:
        return [[_tensor("OUTPUT", np.array([[self.step(ids).encode("utf-8")]], dtype=object)),
                 _tensor("PROVENANCE_OUT", np.array([[bytes(prov)]], dtype=object))] for ids, prov in items]


__all__ = ["LLMModel", "PostprocessingModel", "PreprocessingModel", "RetrievalModel", "VllmLLMModel"]
