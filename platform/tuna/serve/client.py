"""gRPC client of the served ensemble (the one module that imports tritonclient's gRPC API).

:meth:`TunaClient.ask` sends one question about one image to the ``tuna`` model and returns the answer with its
provenance (retrieved tags, scores, tuner weights, datastore version); :meth:`TunaClient.ask_stream` yields the answer
as it is generated (text deltas, over gRPC's bidirectional stream). Server-side refusals come back as
:class:`RequestRefused` carrying the gRPC status (INVALID_ARGUMENT, UNAVAILABLE, ...) and Triton's message.

Streaming needs a repository exported with ``serve.engine=vllm`` and ``serve.vllm_stream=true`` (a decoupled LLM step);
elsewhere ``ask_stream`` gets the whole answer as one chunk. Triton refuses unary inference on a decoupled ensemble
(UNIMPLEMENTED), so there ``ask`` goes over the stream too (one response), once it has been told so.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuna.errors import TunaError


class RequestRefused(TunaError):
    """The server answered the request with an error status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ServerUnreachable(TunaError, ConnectionError):
    """No Triton server answers at the URL."""


@dataclass(frozen=True)
class Reply:
    text: str
    provenance: dict[str, Any]


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of an answer: ``delta`` is the text new since the previous chunk, ``text`` the answer so far
    (the deltas of a stream add up to the last chunk's ``text``), ``final`` marks the last chunk."""

    delta: str
    text: str
    provenance: dict[str, Any]
    final: bool


def _bytes_input(grpc: Any, name: str, value: bytes) -> Any:
    t = grpc.InferInput(name, [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[value]], dtype=object))
    return t


def _scalar(grpc: Any, name: str, value: Any, dtype: str, np_dtype: Any) -> Any:
    t = grpc.InferInput(name, [1, 1], dtype)
    t.set_data_from_numpy(np.array([[value]], dtype=np_dtype))
    return t


def build_inputs(image: bytes, question: str, max_tokens: int, datastore: str | None = None,
                 temperature: float | None = None, top_k: int | None = None, seed: int | None = None,
                 stream: bool = False) -> list[Any]:
    """The ensemble's input tensors for one request (optional ones only when given)."""
    import tritonclient.grpc as grpc

    inputs = [_bytes_input(grpc, "text_input", question.encode("utf-8")),
              _bytes_input(grpc, "image_bytes_input", image),
              _scalar(grpc, "max_tokens", max_tokens, "INT32", np.int32)]
    if datastore is not None:
        inputs.append(_bytes_input(grpc, "datastore", datastore.encode("utf-8")))
    if temperature is not None:
        inputs.append(_scalar(grpc, "temperature", temperature, "FP32", np.float32))
    if top_k is not None:
        inputs.append(_scalar(grpc, "top_k", top_k, "INT32", np.int32))
    if seed is not None:
        inputs.append(_scalar(grpc, "seed", seed, "UINT64", np.uint64))
    if stream:
        inputs.append(_scalar(grpc, "stream", True, "BOOL", np.bool_))
    return inputs


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reply(result: Any) -> Reply:
    return Reply(_text(result.as_numpy("text_output").reshape(-1)[0]), json.loads(_text(result.as_numpy("provenance").reshape(-1)[0])))


class TunaClient:
    """A gRPC connection to a Triton serving the ``tuna`` ensemble."""

    def __init__(self, url: str, model: str = "tuna", timeout: float = 60.0) -> None:
        import tritonclient.grpc as grpc

        self.url, self.model, self.timeout = url, model, timeout
        self._decoupled = False                  # the server refused unary inference: its ensemble streams
        self._stream_lock = threading.Lock()
        try:
            self._client = grpc.InferenceServerClient(url)
        except Exception as err:  # noqa: BLE001 - a malformed URL
            raise ServerUnreachable(f"cannot connect to Triton at {url!r} ({err}); give host:port of the gRPC endpoint") from None

    def ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    def infer(self, inputs: list[Any]) -> Reply:
        """Send prepared input tensors; returns the reply or raises RequestRefused / ServerUnreachable."""
        import tritonclient.grpc as grpc
        from tritonclient.utils import InferenceServerException

        if self._decoupled:
            return self._final(self.stream_infer(inputs))
        outputs = [grpc.InferRequestedOutput("text_output"), grpc.InferRequestedOutput("provenance")]
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
        except InferenceServerException as err:
            refusal = self._refusal(err)
            if isinstance(refusal, RequestRefused) and refusal.status == "UNIMPLEMENTED" and "decoupled" in refusal.message:
                self._decoupled = True    # a streaming repository (serve.vllm_stream): ask over the stream from now on
                return self._final(self.stream_infer(inputs))
            raise refusal from None
        return _reply(result)

    def _refusal(self, err: Any) -> TunaError:
        """The error to raise for a tritonclient InferenceServerException."""
        status = str(err.status() or "UNKNOWN").replace("StatusCode.", "")
        message = " ".join(str(err.message() or err).split())
        transport = any(m in message.lower() for m in ("failed to connect", "connection refused", "socket closed",
                                                          "dns resolution failed", "connection reset"))
        if status == "UNAVAILABLE" and transport and not message.startswith("in ensemble"):
            return ServerUnreachable(f"no Triton server answers at {self.url} ({message}); start one with "
                                     f"`tuna serve --config <recipe>`")
        return RequestRefused(status, message)

    @staticmethod
    def _final(chunks: Iterator[Chunk]) -> Reply:
        last = deque(chunks, maxlen=1)
        if not last:
            raise RequestRefused("UNKNOWN", "the server closed the stream without an answer")
        return Reply(last[0].text, last[0].provenance)

    def stream_infer(self, inputs: list[Any]) -> Iterator[Chunk]:
        """Send prepared input tensors over gRPC's bidirectional stream; yield the answer's chunks as they come (each
        response carries the text so far: a chunk's ``delta`` is what it adds; a response that adds nothing, or
        ends in an unfinished multi-byte character, waits for the next). One stream per client at a time."""
        from tritonclient.utils import InferenceServerException

        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        with self._stream_lock:
            try:
                # triton_grpc_error: an error ends the stream with its gRPC status (INVALID_ARGUMENT, UNAVAILABLE, ...);
                # without it a streamed error carries only its message (ModelStreamInferResponse.error_message).
                self._client.start_stream(callback=lambda result, error: got.put((result, error)), stream_timeout=self.timeout,
                                          headers={"triton_grpc_error": "true"})
                self._client.async_stream_infer(self.model, inputs, enable_empty_final_response=True)
            except InferenceServerException as err:
                raise self._refusal(err) from None
            try:
                shown, prov = "", {}
                while True:
                    try:
                        result, error = got.get(timeout=self.timeout)
                    except queue.Empty:
                        raise RequestRefused("DEADLINE_EXCEEDED", f"no response in {self.timeout:.0f} s") from None
                    if error is not None:
                        raise self._refusal(error)
                    response = result.get_response()
                    final = bool(response.parameters["triton_final_response"].bool_param) \
                        if "triton_final_response" in response.parameters else True
                    text = shown
                    if result.as_numpy("text_output") is not None:
                        reply = _reply(result)
                        prov = reply.provenance
                        ready = reply.text if final else reply.text.rstrip("\ufffd")   # a multi-byte character unfinished
                        if len(ready) > len(shown) and ready.startswith(shown):
                            text = ready
                    if text != shown or final:
                        yield Chunk(text[len(shown):], text, prov, final)
                        shown = text
                    if final:
                        return
            finally:
                self._client.stop_stream(cancel_requests=True)

    def ask_stream(self, image: bytes, question: str, max_tokens: int = 32, datastore: str | None = None,
                   temperature: float | None = None, top_k: int | None = None, seed: int | None = None) -> Iterator[Chunk]:
        """The answer as it is generated: text deltas with the provenance; the last chunk has ``final`` set."""
        return self.stream_infer(build_inputs(image, question, max_tokens, datastore, temperature, top_k, seed, stream=True))

    def ask(self, image: bytes, question: str, max_tokens: int = 32, datastore: str | None = None,
            temperature: float | None = None, top_k: int | None = None, seed: int | None = None) -> Reply:
        return self.infer(build_inputs(image, question, max_tokens, datastore, temperature, top_k, seed))

    def close(self) -> None:
        self._client.close()


__all__ = ["Chunk", "Reply", "RequestRefused", "ServerUnreachable", "TunaClient", "build_inputs"]
