"""The watchdog of `tuna serve`: probes the local tritonserver with a real inference and restarts it when a step died.

Recovery chosen: restart the whole server process (here), exit for the orchestrator (in the cluster: the chart's
liveness probe runs the same probe and the kubelet restarts the container). Not chosen: reloading only the dead step
through Triton's repository API. Measured on 2.51: a ``load`` of the unchanged model is a no-op (the dead stub stays),
``unload`` + ``load`` brought service back in 4.5 s but needs ``--model-control-mode=explicit`` (which changes what
the server loads at start), left the server exiting with code 1 at shutdown, and covers only a stub that died, not
a wedged engine, a crashed server or leaked engine processes. A whole restart recovers from all of these, works in
any model-control mode, and is what Kubernetes does anyway (counted in restartCount, backed off when it repeats).

How it behaves (serve.probe_* keys): every ``probe_period`` seconds one :func:`tuna.serve.probe.probe` with a
``probe_deadline``; after ``probe_failures`` failures in a row, or when tritonserver exits, the server is broken:
with ``on_failure: restart`` it is stopped (SIGTERM, SIGKILL of its process group after ``kill_grace`` seconds: a dead
stub makes Triton wait its whole exit timeout, then exit 1) and started again on the same ports; with
``on_failure: exit``, or after ``max_restarts`` restarts within ``restart_window`` seconds, :meth:`Watchdog.run` stops
the server and raises :class:`~tuna.serve.server.ServerError` so `tuna serve` exits non-zero for whatever runs it.
While a server is broken, the front door answers UNAVAILABLE (see :mod:`tuna.serve.client`); while it restarts,
connections are refused (UNAVAILABLE at the transport).

A restarted server is judged only after its first answer (Kubernetes' startupProbe, for the same reason): its probes
fail until one succeeds or ``ready_timeout`` seconds pass, without counting. Measured (tests/serve/test_faults.py,
8 clients reconnecting at once): for up to ~1 s after Triton reports ready, requests can still fail at the transport
("Stream removed ... Connection reset by peer"); on a loaded CI machine two such probes in a row restarted a healthy
server a second time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuna.serve.probe import ProbeResult, probe
from tuna.serve.server import ServerError, TritonServer

ON_FAILURE = ("restart", "exit")   # serve.on_failure


@dataclass(frozen=True)
class WatchEvent:
    """Something the watchdog saw or did: ``kind`` is unhealthy | exited | restarted | gave_up; ``at`` is
    ``time.monotonic()``."""

    kind: str
    at: float
    detail: str


@dataclass
class Watchdog:
    """Watches ``server`` (already started) until :meth:`run`'s ``stop`` event is set."""

    server: TritonServer
    period: float = 5.0
    deadline: float = 10.0
    failures: int = 2
    on_failure: str = "restart"
    max_restarts: int = 5
    restart_window: float = 600.0
    ready_timeout: float = 180.0
    kill_grace: float = 2.0
    log: Callable[[str], None] = print
    events: list[WatchEvent] = field(default_factory=list)
    healthy: bool = True          # the last verdict: False from the failure that crossed the threshold until restarted
    restarts: int = 0
    warming_until: float = 0.0    # after a restart: probe failures before the first answer and this monotonic time don't count
    regions: list[str] = field(default_factory=list, repr=False)   # /dev/shm names of the watched stubs, read while they lived

    def __post_init__(self) -> None:
        if self.on_failure not in ON_FAILURE:
            raise ServerError(f"on_failure must be one of {', '.join(ON_FAILURE)}, got {self.on_failure!r}")
        if not (self.period > 0 and self.deadline > 0 and self.failures >= 1):
            raise ServerError(f"probe period {self.period} s, deadline {self.deadline} s and failures {self.failures} must be "
                              f"positive (serve.probe_period, serve.probe_deadline, serve.probe_failures)")

    def run(self, stop: threading.Event) -> None:
        """Probe until ``stop`` is set; restart the server when broken, or raise ServerError (see the module doc)."""
        failed = 0
        self.regions = shm_regions(self.server)   # read while every stub lives: a dead stub's command line is gone
        while not stop.wait(self.period):
            process = self.server.process
            if process is not None and process.poll() is not None:
                self._broken(stop, "exited", f"tritonserver exited with code {process.returncode}: {self.server.log_tail(3)}")
                failed = 0
                continue
            result = probe(self.server.grpc_url, self.deadline)
            if result.ok:
                failed, self.warming_until = 0, 0.0
                continue
            if time.monotonic() < self.warming_until:
                self.log(f"watchdog: the restarted server has not answered yet: {_short(result)}")
                continue
            failed += 1
            self.log(f"watchdog: probe {failed}/{self.failures} failed: {_short(result)}")
            if failed >= self.failures and not stop.is_set():
                self._broken(stop, "unhealthy", _short(result))
                failed = 0

    def _broken(self, stop: threading.Event, kind: str, detail: str) -> None:
        now = time.monotonic()
        self.healthy = False
        self.events.append(WatchEvent(kind, now, detail))
        recent = [e for e in self.events if e.kind == "restarted" and now - e.at < self.restart_window]
        if self.on_failure == "exit" or len(recent) >= self.max_restarts:
            why = ("serve.on_failure is exit" if self.on_failure == "exit" else
                   f"already restarted {len(recent)} times in {self.restart_window:.0f}s (serve.max_restarts)")
            self.events.append(WatchEvent("gave_up", now, why))
            self._stop()
            raise ServerError(f"the server is broken ({detail}); {why}: exiting for the orchestrator to restart it")
        self.log(f"watchdog: the server is broken ({detail}); restarting it on the same ports")
        self._restart(stop)

    def _stop(self) -> None:
        """Stop the broken server (SIGKILL after ``kill_grace``) and remove its stubs' shared memory, which a killed
        stub leaves behind in /dev/shm."""
        regions = set(self.regions) | set(shm_regions(self.server))
        self.server.stop(timeout=self.kill_grace)
        for name in regions:
            Path("/dev/shm", name).unlink(missing_ok=True)

    def _restart(self, stop: threading.Event) -> None:
        self._stop()
        log = self.server.log_path
        if log is not None and log.is_file():   # keep the broken server's log: <log>.before-restart-<n>.log, n = 1, 2, ...
            n = 1 + len(list(log.parent.glob(f"{log.stem}.before-restart-*{log.suffix}")))
            log.replace(log.with_suffix(f".before-restart-{n}{log.suffix}"))
        if stop.is_set():
            return
        t0 = time.monotonic()
        self.server.start(ready_timeout=self.ready_timeout)
        self.restarts += 1
        self.healthy = True
        self.warming_until = time.monotonic() + self.ready_timeout
        self.regions = shm_regions(self.server)
        self.events.append(WatchEvent("restarted", time.monotonic(), f"ready again in {time.monotonic() - t0:.1f}s"))
        self.log(f"watchdog: tritonserver restarted and ready in {time.monotonic() - t0:.1f}s (restart {self.restarts})")


def stub_pids(server: TritonServer) -> dict[int, str]:
    """The python-backend stub processes of ``server`` (its children only): pid -> the model instance they run
    (``tensorrt_llm_0_0``, ...)."""
    found: dict[int, str] = {}
    if server.process is None:
        return found
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server.process.pid and args and args[0].endswith(b"triton_python_backend_stub") and len(args) > 8:
            found[int(proc.name)] = args[8].decode(errors="replace")
    return found


def shm_regions(server: TritonServer) -> list[str]:
    """The shared-memory regions (/dev/shm names) of ``server``'s stubs, read from their command lines."""
    names = []
    for pid in stub_pids(server):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names += [a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region")]
    return names


def _short(result: ProbeResult) -> str:
    return f"{result.status}: {result.message[:300]}"


__all__ = ["ON_FAILURE", "WatchEvent", "Watchdog", "shm_regions", "stub_pids"]
