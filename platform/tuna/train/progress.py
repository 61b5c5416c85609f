"""Training progress in a TrainJob's status (Kubeflow Trainer v2.2+, alpha feature gate ``TrainJobStatus``, KEP-2779).

With the gate on, the Trainer controller gives the pods of the TrainJob's trainer step (in the MPI runtime: the
launcher pod) three env vars: ``KUBEFLOW_TRAINER_SERVER_URL`` (``https://<controller>:<port>/apis/trainer.kubeflow.org/
v1alpha1/namespaces/<ns>/trainjobs/<name>/status``), ``KUBEFLOW_TRAINER_SERVER_CA_CERT`` (path of the CA that signs the
endpoint) and ``KUBEFLOW_TRAINER_SERVER_TOKEN`` (path of a projected service-account token whose audience is that
TrainJob; it rotates, so it is re-read for every request). A POST of ``{"trainerStatus": {progressPercentage,
estimatedRemainingSeconds, metrics: [{name, value}], lastUpdatedTime}}`` with ``Authorization: Bearer <token>``
lands in ``status.trainerStatus``.

:class:`ProgressReporter` is that client for a training rank: :func:`reporter_from_env` makes one on the rank that
carries the env vars (local rank 0 of the pod that has them) and a no-op one everywhere else (local ``deepspeed``
runs, Docker, PyTorchJob, a cluster without the gate). Reports go out from a background thread, at most one per
``min_interval`` seconds (the last step always); an unreachable or refusing endpoint costs one warning line on stderr
and never fails or slows training. :func:`progress_line` formats a TrainJob's ``status.trainerStatus`` for
``tuna.train.cluster.follow``.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
PROGRESS_ENV = (ENV_URL, ENV_CA_CERT, ENV_TOKEN)  # mpirun forwards them to the ranks (tuna.train.jobs)
MIN_INTERVAL = 5.0  # seconds between reports (the Kubeflow SDK's client throttles to the same)
TIMEOUT = 5.0  # seconds per request
MAX_METRICS, MAX_TEXT, INT32_MAX = 256, 64, 2**31 - 1  # limits of the CRD's trainerStatus schema


def trainer_status(percent: float | None, remaining_seconds: float | None, metrics: Mapping[str, float | str],
                   when: datetime | None = None) -> dict[str, Any]:
    """The request body: ``{"trainerStatus": {...}}`` within the CRD's limits (percent 0..100, seconds >= 0 as
    int32, metric names and string values of 1..64 characters, at most 256 metrics, an RFC 3339 time)."""
    status: dict[str, Any] = {}
    if percent is not None and math.isfinite(percent):
        status["progressPercentage"] = max(0, min(100, int(percent)))
    if remaining_seconds is not None and math.isfinite(remaining_seconds):
        status["estimatedRemainingSeconds"] = max(0, min(INT32_MAX, round(remaining_seconds)))
    items = []
    for name, value in list(metrics.items())[:MAX_METRICS]:
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        if name and text:
            items.append({"name": str(name)[:MAX_TEXT], "value": text[:MAX_TEXT]})
    if items:
        status["metrics"] = items
    status["lastUpdatedTime"] = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"trainerStatus": status}


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProgressReporter:
    """Posts a stage's progress (percent of steps, remaining seconds from the mean step time, loss and lr) to the
    Trainer's status endpoint; inactive (every method a no-op) when ``url`` is empty."""

    def __init__(self, url: str | None, token_file: str | None = None, ca_file: str | None = None, *,
                 start_step: int = 0, min_interval: float = MIN_INTERVAL, timeout: float = TIMEOUT,
                 warn: Callable[[str], None] = _warn, clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.token_file, self.ca_file = url or "", token_file, ca_file
        self.min_interval, self.timeout, self.warn, self.clock = min_interval, timeout, warn, clock
        self.start_step, self.t0 = start_step, clock()
        self.sent = self.failed = 0
        self._last_queued: float | None = None
        self._pending: dict[str, Any] | None = None
        self._closing = self._warned = self._stopped = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return bool(self.url) and not self._stopped

    def update(self, done: int, total: int, metrics: Mapping[str, float | str]) -> None:
        """Report ``done`` of ``total`` steps (at most once per ``min_interval``; always the last step)."""
        if not self.active or total <= 0:
            return
        now = self.clock()
        if done < total and self._last_queued is not None and now - self._last_queued < self.min_interval:
            return
        trained = done - self.start_step
        remaining = (now - self.t0) / trained * (total - done) if trained > 0 else None
        self._last_queued = now
        self._queue(trainer_status(100.0 * done / total, remaining, metrics))

    def close(self) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop the sender."""
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(self.timeout + 1.0)

    def _queue(self, payload: dict[str, Any]) -> None:
        with self._cond:
            self._pending = payload  # a report not sent yet is replaced by the newer one
            self._cond.notify()
            start = self._thread is None or not self._thread.is_alive()  # first report, or after close()
            if start:
                self._closing = False
        if start:
            self._thread = threading.Thread(target=self._run, name="trainjob-progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                payload, self._pending = self._pending, None
                closing = self._closing
            if payload is not None and not self._stopped:
                self._send(payload)
            if closing and self._pending is None:
                return

    def _send(self, payload: dict[str, Any]) -> None:
        try:
            token = Path(self.token_file or "").read_text(encoding="utf-8").strip()  # re-read: the token rotates
            if not token:
                raise ValueError(f"empty token file {self.token_file}")
            context = ssl.create_default_context(cafile=self.ca_file) if self.url.startswith("https:") else None
            request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                             headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
                response.read()
            self.sent += 1
        except urllib.error.HTTPError as err:
            self._failed(f"HTTP {err.code} {_status_message(err)}", permanent=400 <= err.code < 500 and err.code != 429)
        except (OSError, ValueError) as err:  # unreachable, timeout, TLS, no token file
            self._failed(f"{type(err).__name__}: {getattr(err, 'reason', None) or err}",
                         permanent=isinstance(err, FileNotFoundError))

    def _failed(self, reason: str, permanent: bool) -> None:
        self.failed += 1
        if permanent:
            self._stopped = True  # a refusal (bad token, job gone, invalid payload) does not heal by retrying
        if not self._warned:
            self._warned = True
            then = "no more reports are sent" if permanent else "retrying quietly"
            self.warn(f"tuna train: warning: TrainJob progress not reported to {self.url} ({reason}); training "
                      f"continues, {then}")


def _status_message(err: urllib.error.HTTPError) -> str:
    """The ``message`` of the metav1.Status body the status server answers errors with."""
    try:
        return str(json.loads(err.read() or b"{}").get("message") or err.reason)
    except (ValueError, OSError, AttributeError):
        return str(err.reason)


def reporter_from_env(start_step: int = 0, environ: Mapping[str, str] | None = None, **kw: Any) -> ProgressReporter:
    """A reporter for this rank: active when the Trainer's endpoint env vars are set, the token file they name is
    in this pod and this is its local rank 0 - one reporter per job: the controller mounts the token into the trainer
    step's pods only (in the MPI runtime the launcher pod, which the hostfile lists last, so it holds the last global
    ranks, not rank 0); mpirun forwards the env vars to every rank. A no-op reporter otherwise."""
    env = os.environ if environ is None else environ
    url, token = env.get(ENV_URL, ""), env.get(ENV_TOKEN, "")
    local_rank = env.get("LOCAL_RANK") or env.get("OMPI_COMM_WORLD_LOCAL_RANK") or "0"
    if not (url and token and os.path.isfile(token)) or local_rank != "0":
        return ProgressReporter(None)
    return ProgressReporter(url, token, env.get(ENV_CA_CERT) or None, start_step=start_step, **kw)


# ------------------------------------------------------------------------------------------- reading side


def progress_line(obj: Mapping[str, Any]) -> str | None:
    """``45%, about 1h 02m left, loss 0.2347, lr 2e-05`` from a TrainJob's ``status.trainerStatus``; None without one."""
    status = (obj.get("status") or {}).get("trainerStatus") if isinstance(obj, Mapping) else None
    if not isinstance(status, Mapping):
        return None
    parts = []
    if status.get("progressPercentage") is not None:
        parts.append(f"{status['progressPercentage']}%")
    if status.get("estimatedRemainingSeconds") is not None:
        parts.append(f"about {_duration(int(status['estimatedRemainingSeconds']))} left")
    parts += [f"{m.get('name')} {m.get('value')}" for m in status.get("metrics") or [] if isinstance(m, Mapping)]
    return ", ".join(parts) or None


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours = seconds // 60, seconds // 3600
    if hours == 0:
        return f"{minutes}m {seconds % 60:02d}s"
    if hours < 48:
        return f"{hours}h {minutes % 60:02d}m"
    return f"{hours // 24}d {hours % 24}h"
