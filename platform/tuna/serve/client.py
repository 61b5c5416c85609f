"""gRPC client of the served ensemble (the one module that imports tritonclient's gRPC API).

:func:`ask` sends one question about one image to the ``tuna`` model and returns the answer with its
provenance (retrieved tags, scores, tuner weights, datastore version). Server-side refusals come back as
:class:`RequestRefused` carrying the gRPC status (INVALID_ARGUMENT, UNAVAILABLE, ...) and Triton's message.

A dead step: when a step's python-backend stub process dies (killed, out of memory), tritonserver 2.51 answers every
request that reaches that step with gRPC INTERNAL "in ensemble 'tuna', Stub process '<step>_0_0' is not healthy."
(measured; it never restarts the stub itself). That is the server being unable to serve, not a bug in the request:
this client maps it to UNAVAILABLE (retry elsewhere or later; the watchdog of `tuna serve` or the chart's liveness
probe restarts the server), keeping Triton's own status in :attr:`RequestRefused.triton_status`. Raw gRPC clients
still see INTERNAL with that message.
"""

from __future__ import annotations

import json
import re
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


def refusal(status: str, message: str) -> RequestRefused:
    """The :class:`RequestRefused` for Triton's ``status`` and ``message``: a dead step's INTERNAL becomes UNAVAILABLE."""
    dead = _DEAD_STEP.search(message)
    if status == "INTERNAL" and dead:
        step = dead.group(1).rsplit("_", 2)[0]
        return RequestRefused("UNAVAILABLE", f"{message} (the server's {step!r} step died; requests fail until the server restarts, "
                              f"which the watchdog of `tuna serve` and the chart's liveness probe do: retry)",
                              triton_status=status)
    return RequestRefused(status, message)


@dataclass(frozen=True)
class Reply:
    text: str
    provenance: dict[str, Any]


def _bytes_input(grpc: Any, name: str, value: bytes) -> Any:
    t = grpc.InferInput(name, [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[value]], dtype=object))
    return t


def _scalar(grpc: Any, name: str, value: Any, dtype: str, np_dtype: Any) -> Any:
    t = grpc.InferInput(name, [1, 1], dtype)
    t.set_data_from_numpy(np.array([[value]], dtype=np_dtype))
    return t


def build_inputs(image: bytes, question: str, max_tokens: int, datastore: str | None = None,
                 temperature: float | None = None, top_k: int | None = None, seed: int | None = None) -> list[Any]:
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
    return inputs


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

        outputs = [grpc.InferRequestedOutput("text_output"), grpc.InferRequestedOutput("provenance")]
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
        except InferenceServerException as err:
            status = str(err.status() or "UNKNOWN").replace("StatusCode.", "")
            message = " ".join(str(err.message() or err).split())
            transport = any(m in message.lower() for m in ("failed to connect", "connection refused", "socket closed",
                                                              "dns resolution failed", "connection reset"))
            if status == "UNAVAILABLE" and transport and not message.startswith("in ensemble"):
                raise ServerUnreachable(f"no Triton server answers at {self.url} ({message}); start one with "
                                        f"`tuna serve --config <recipe>`") from None
            raise refusal(status, message) from None
        text = result.as_numpy("text_output").reshape(-1)[0]
        prov = result.as_numpy("provenance").reshape(-1)[0]
        return Reply(text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text),
                     json.loads(prov.decode("utf-8") if isinstance(prov, bytes) else prov))

    def ask(self, image: bytes, question: str, max_tokens: int = 32, datastore: str | None = None,
            temperature: float | None = None, top_k: int | None = None, seed: int | None = None) -> Reply:
        return self.infer(build_inputs(image, question, max_tokens, datastore, temperature, top_k, seed))

    def close(self) -> None:
        self._client.close()


__all__ = ["Reply", "RequestRefused", "ServerUnreachable", "TunaClient", "build_inputs", "refusal"]
