"""gRPC client of the served ensemble (the one module that imports tritonclient's gRPC API).

:meth:`TunaClient.ask` sends one question about one image to the ``tuna`` model and returns the answer with its
provenance (retrieved tags, scores, tuner weights, datastore version); :meth:`TunaClient.ask_stream` yields the answer
as it is generated (text deltas, over gRPC's bidirectional stream). Server-side refusals come back as
:class:`RequestRefused` carrying the gRPC status (INVALID_ARGUMENT, UNAVAILABLE, ...) and Triton's message.

Streaming needs a repository exported with ``serve.engine=vllm`` and ``serve.vllm_stream=true`` (a decoupled LLM step);
elsewhere ``ask_stream`` gets the whole answer as one chunk. Triton refuses unary inference on a decoupled ensemble
(UNIMPLEMENTED), so there ``ask`` goes over the stream too (one response), once it has been told so.

A dead step: when a step's python-backend stub process dies (killed, out of memory), tritonserver 2.51 answers every
request that reaches that step with gRPC INTERNAL "in ensemble 'tuna', Stub process '<step>_0_0' is not healthy."
(measured; it never restarts the stub itself). That is the server being unable to serve, not a bug in the request:
this client maps it to UNAVAILABLE (retry elsewhere or later; the watchdog of `tuna serve` or the chart's liveness
probe restarts the server), keeping Triton's own status in :attr:`RequestRefused.triton_status`. Raw gRPC clients
still see INTERNAL with that message. The same holds for the window of a restart: a server that is stopping, or starting
and not yet done loading the ensemble, answers NOT_FOUND "'tuna' has no available versions" (measured, under 8 clients
during a watchdog restart); that is UNAVAILABLE here too, while a model name the server does not know stays NOT_FOUND.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuna.errors import TunaError


class RequestRefused(TunaError):
    """The server answered the request with an error status."""

    def __init__(self, status: str, message: str, triton_status: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.triton_status = triton_status or status   # what Triton sent, before our mapping (see the module doc)


class ServerUnreachable(TunaError, ConnectionError):
    """No Triton server answers at the URL (gRPC UNAVAILABLE at the transport: refused, reset, not started yet)."""

    status = "UNAVAILABLE"


_DEAD_STEP = re.compile(r"Stub process '([\w.-]+)' is not healthy")
# Triton's NOT_FOUND for a model it knows but has no version of in service (loading, unloading at shutdown, or a load
# that failed); a name it does not know at all reads "... is not found" and stays NOT_FOUND.
_NOT_LOADED = re.compile(r"unknown model: '([\w.-]+)' (has no available versions|version \S+ is not at ready state)")


def refusal(status: str, message: str) -> RequestRefused:
    """The :class:`RequestRefused` for Triton's ``status`` and ``message``: a dead step's INTERNAL, and the NOT_FOUND of
    a model the server knows but has not (or no longer) loaded, become UNAVAILABLE."""
    dead = _DEAD_STEP.search(message)
    if status == "INTERNAL" and dead:
        step = dead.group(1).rsplit("_", 2)[0]
        return RequestRefused("UNAVAILABLE", f"{message} (the server's {step!r} step died; requests fail until the server restarts, "
                              f"which the watchdog of `tuna serve` and the chart's liveness probe do: retry)",
                              triton_status=status)
    unloaded = _NOT_LOADED.search(message)
    if status == "NOT_FOUND" and unloaded:
        return RequestRefused("UNAVAILABLE", f"{message} (the server is loading or unloading {unloaded.group(1)!r}, as around a "
                              f"restart: retry; if it lasts, the server log says why the model did not load)",
                              triton_status=status)
    return RequestRefused(status, message)


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


RECONNECT_BACKOFF_MS = (500, 2000)   # gRPC reconnect backoff, first and longest wait (gRPC's defaults: 1 s, 120 s)


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options (unlimited message size, keepalive) plus a short reconnect backoff:
    with gRPC's defaults a client whose server was down ~20 s (a watchdog restart) kept failing "failed to connect"
    for tens of seconds after the server was back (measured); now it reconnects within ~2 s."""
    from tritonclient.grpc import KeepAliveOptions

    keep, most = KeepAliveOptions(), 2**31 - 1   # tritonclient's MAX_GRPC_MESSAGE_SIZE (INT32_MAX, Triton's own limit)
    return [("grpc.max_send_message_length", most), ("grpc.max_receive_message_length", most),
            ("grpc.keepalive_time_ms", keep.keepalive_time_ms), ("grpc.keepalive_timeout_ms", keep.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keep.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keep.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]), ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1])]


class TunaClient:
    """A gRPC connection to a Triton serving the ``tuna`` ensemble."""

    def __init__(self, url: str, model: str = "tuna", timeout: float = 60.0) -> None:
        import tritonclient.grpc as grpc

        self.url, self.model, self.timeout = url, model, timeout
        self._decoupled = False                  # the server refused unary inference: its ensemble streams
        self._stream_lock = threading.Lock()
        try:
            self._client = grpc.InferenceServerClient(url, channel_args=channel_args())
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
            refused = self._refusal(err)
            if isinstance(refused, RequestRefused) and refused.status == "UNIMPLEMENTED" and "decoupled" in refused.message:
                self._decoupled = True    # a streaming repository (serve.vllm_stream): ask over the stream from now on
                return self._final(self.stream_infer(inputs))
            raise refused from None
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
        return refusal(status, message)

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
            done = False
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
                        done = True
                        return
            finally:
                # Cancel only a request left unfinished (an error, a consumer that stopped reading). Once, with every
                # finished stream cancelled too, the decoupled ensemble never unloaded at shutdown (exit timeout); not
                # seen since, but that it was the cause is not proven.
                self._client.stop_stream(cancel_requests=not done)

    def ask_stream(self, image: bytes, question: str, max_tokens: int = 32, datastore: str | None = None,
                   temperature: float | None = None, top_k: int | None = None, seed: int | None = None) -> Iterator[Chunk]:
        """The answer as it is generated: text deltas with the provenance; the last chunk has ``final`` set."""
        return self.stream_infer(build_inputs(image, question, max_tokens, datastore, temperature, top_k, seed, stream=True))

    def ask(self, image: bytes, question: str, max_tokens: int = 32, datastore: str | None = None,
            temperature: float | None = None, top_k: int | None = None, seed: int | None = None) -> Reply:
        return self.infer(build_inputs(image, question, max_tokens, datastore, temperature, top_k, seed))

    def step_statistics(self) -> dict[str, dict[str, Any]]:
        """Triton's cumulative statistics of every model on the server (the ensemble and each step): requests,
        executions (batches), mean batch size, the mean queue / compute milliseconds of a request (Triton sums those
        per request: a batch of 8 counts its compute 8 times) and ``batch_sizes``: executions per batch size."""
        stats = self._client.get_inference_statistics(as_json=True).get("model_stats", [])
        out: dict[str, dict[str, Any]] = {}
        for m in stats:
            inference, executions = int(m.get("inference_count", 0)), int(m.get("execution_count", 0))
            s = m.get("inference_stats", {})

            def ms(key: str, s: dict[str, Any] = s) -> float:
                stat = s.get(key, {})
                return round(int(stat.get("ns", 0)) / 1e6 / max(int(stat.get("count", 0)), 1), 3)

            sizes = {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in m.get("batch_stats", [])}
            out[m["name"]] = {"requests": inference, "executions": executions,
                              "mean_batch": round(inference / max(executions, 1), 2), "queue_ms": ms("queue"),
                              "compute_input_ms": ms("compute_input"), "compute_infer_ms": ms("compute_infer"),
                              "compute_output_ms": ms("compute_output"), "batch_sizes": dict(sorted(sizes.items()))}
        return out

    def close(self) -> None:
        self._client.close()


__all__ = ["Chunk", "Reply", "RequestRefused", "ServerUnreachable", "TunaClient", "build_inputs", "refusal"]
