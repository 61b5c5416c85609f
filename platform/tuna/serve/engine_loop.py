"""The vLLM step's engine loop: ONE thread drives the engine's incremental API, so requests join the running batch.

Triton calls the LLM step's ``execute`` with whatever its dynamic batcher grouped; before this loop each call was a
closed ``generate`` batch and a request arriving mid-generation waited for the whole batch. Now ``execute`` only checks
each request and hands it here (:meth:`EngineLoop.submit`) with a :class:`Sink` that answers it; the loop thread adds
queued requests to the engine between engine steps (continuous batching, vLLM's scheduler decides what runs) and
reports tokens to the sinks: every step's progress for a streamed request, the finished answer for the others.

The engine (:class:`tuna.serve.vllm_engine.VllmEngine`, or a stand-in in tests) is used from this thread only (vLLM's
``LLMEngine`` is not thread-safe). A dead engine fails every request in flight at once (:meth:`EngineLoop.fail_all`,
called by the loop when a step raises and by the step's watcher when the engine core's process is gone while the loop
is blocked waiting for it); the step then starts a new engine with a new loop. This module imports no vllm.
"""

from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from tuna.errors import EngineUnavailable


class Sink(Protocol):
    """Where one request's answer goes (the step wraps Triton's response sender)."""

    def emit(self, token_ids: np.ndarray, final: bool) -> None:
        """All new tokens so far ((n,) int32); ``final``: the last call for this request."""

    def fail(self, err: BaseException) -> None:
        """The request's one error (it ends the request)."""


class Engine(Protocol):
    """What the loop needs of an engine (:class:`tuna.serve.vllm_engine.VllmEngine`)."""

    def add(self, request_id: str, req: Any, stream: bool = False) -> None: ...

    def busy(self) -> bool: ...

    def step(self) -> Sequence[Any]: ...      # EngineUpdate: request_id, token_ids, finished

    def abort(self, request_ids: Sequence[str]) -> None: ...


class EngineLoop:
    """The thread that owns ``engine``. ``on_dead(why)`` is called once when a step finds the engine dead."""

    def __init__(self, engine: Engine, on_dead: Callable[[str], None] | None = None, idle_wait: float = 0.5,
                 log: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.on_dead = on_dead
        self.idle_wait = idle_wait
        self.log = log or (lambda message: None)
        self.pending: queue.Queue[tuple[str, Any, bool, Sink]] = queue.Queue()
        self.inflight: dict[str, tuple[Sink, bool]] = {}        # request id -> (sink, streamed)
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tuna-vllm-loop", daemon=True)
        self.thread.start()

    def submit(self, req: Any, stream: bool, sink: Sink) -> str:
        """Queue one checked request; its answer goes to ``sink`` (from the loop thread). Returns its request id."""
        if self.stopped.is_set():
            raise EngineUnavailable("vLLM engine loop is stopped (the engine is restarting)")
        rid = f"tuna-{next(self.ids)}"
        with self.lock:
            self.inflight[rid] = (sink, stream)
        self.pending.put((rid, req, stream, sink))
        return rid

    def fail_all(self, err: BaseException) -> int:
        """End every request in flight or queued with ``err`` (one error each); returns how many."""
        with self.lock:
            gone, self.inflight = self.inflight, {}
        for sink, _ in gone.values():
            _safe(sink.fail, err)
        return len(gone)

    def stop(self) -> None:
        """Stop taking requests; the thread ends after its current step (a thread stuck in a dead engine is left)."""
        self.stopped.set()
        self.pending.put(("", None, False, _NoSink()))   # wakes an idle loop

    def in_flight(self) -> int:
        with self.lock:
            return len(self.inflight)

    # ------------------------------------------------------------------------------------------ the thread

    def _take(self, block: bool) -> None:
        """Add queued requests to the engine (block up to idle_wait for the first one when ``block``)."""
        while True:
            try:
                rid, req, stream, sink = self.pending.get(timeout=self.idle_wait) if block else self.pending.get_nowait()
            except queue.Empty:
                return
            block = False
            if not rid:                 # stop()'s wake-up
                continue
            with self.lock:
                if rid not in self.inflight:    # failed meanwhile (fail_all)
                    continue
            try:
                self.engine.add(rid, req, stream)
            except Exception as err:  # noqa: BLE001 - this request's own error (checked already: unexpected)
                with self.lock:
                    self.inflight.pop(rid, None)
                _safe(sink.fail, err)

    def _run(self) -> None:
        while not self.stopped.is_set():
            busy = self.engine.busy()
            self._take(block=not busy)
            if self.stopped.is_set() or not self.engine.busy():
                continue
            try:
                updates = self.engine.step()
            except EngineUnavailable as err:
                self.stopped.set()
                self.fail_all(err)
                if self.on_dead is not None:
                    self.on_dead(str(err).split(";")[0])
                return
            except Exception as err:  # noqa: BLE001 - an engine error nobody expected: every request in flight gets it
                self.log(f"tuna vLLM loop: engine step failed: {traceback.format_exc()}")
                self.fail_all(err)
                continue
            for up in updates:
                with self.lock:
                    entry = self.inflight.pop(up.request_id, None) if up.finished else self.inflight.get(up.request_id)
                if entry is None:        # failed or aborted meanwhile
                    continue
                sink, streamed = entry
                if up.finished or streamed:
                    try:
                        sink.emit(np.asarray(up.token_ids, np.int32), bool(up.finished))
                    except Exception:  # noqa: BLE001 - its client is gone: stop generating for it, serve the others
                        self._drop(up.request_id)

    def _drop(self, rid: str) -> None:
        """A sink that cannot send any more (its client is gone): stop generating for it."""
        with self.lock:
            self.inflight.pop(rid, None)
        try:
            self.engine.abort([rid])
        except Exception:  # noqa: BLE001 - the request is dropped either way
            pass


class _NoSink:
    def emit(self, token_ids: np.ndarray, final: bool) -> None:
        pass

    def fail(self, err: BaseException) -> None:
        pass


def _safe(call: Callable[..., None], *args: Any) -> None:
    """Answer a request; a failure to send (client gone) never stops the loop."""
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - the loop serves the other requests
        pass


__all__ = ["Engine", "EngineLoop", "Sink"]
