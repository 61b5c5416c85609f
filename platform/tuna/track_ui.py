"""``tuna ui``: the MLflow UI (``mlflow ui`` as a subprocess) on 127.0.0.1 for a recipe's local tracking store, until
Ctrl-C or SIGTERM; the process group it starts is stopped with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tuna.errors import TunaError
from tuna.recipe import Recipe
from tuna.track import UI_HOST, _default_store, artifact_location, tracking_uri


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like uvicorn: TIME_WAIT leftovers are fine
        try:
            s.bind((UI_HOST, port))
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _kill_group(pgid: int, sig: int) -> None:
    """Signal the process group we started (the server ran in its own session, so the group is ours)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _say(line: str) -> None:
    print(line, flush=True)


def serve_ui(cfg: Recipe, port: int | None = None, log: Callable[[str], None] = _say) -> int:
    """Run ``mlflow ui`` on 127.0.0.1 for the recipe's local store until SIGINT/SIGTERM; returns 0 on a clean stop."""
    uri = tracking_uri(cfg)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("sqlite", "file", ""):
        raise TunaError(f"tracking store {uri} is a server, not a local store; open that server's own URL in a "
                        f"browser (tuna ui serves only sqlite:/file: stores)")
    port = port or cfg.track.ui_port
    if not 1024 <= port <= 65535:
        raise TunaError(f"port {port} is out of range; pass --port in 1024..65535")
    if not _port_free(port):
        raise TunaError(f"port {port} on {UI_HOST} is in use; pass --port N or track.ui_port=N")
    store = _default_store(cfg)
    store.mkdir(parents=True, exist_ok=True)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", UI_HOST,
           "--port", str(port), "--workers", "1"]
    location = artifact_location(cfg, uri)
    if location and location.startswith("file:"):  # experiments created in the UI keep artifacts here
        cmd += ["--artifacts-destination", location]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://{UI_HOST}:{port}"
    log_file = store / "ui.log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    log(f"MLflow UI for {uri}\n  {url}  (starting; log {log_file}; Ctrl-C stops it)")
    stop: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stop.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)  # mlflow forwards it to its uvicorn worker

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ready = False
        deadline: float | None = None
        while proc.poll() is None:
            if stop and deadline is None:
                deadline = time.monotonic() + 15.0
            if deadline is not None and time.monotonic() > deadline:
                _kill_group(proc.pid, signal.SIGKILL)
            if not ready and not stop and _answers(url):
                ready = True
                log(f"  ready at {url}")
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_group(proc.pid, signal.SIGTERM)  # anything the server left behind in its own process group
    if stop:
        log("MLflow UI stopped")
        return 0
    tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    raise TunaError(f"mlflow ui exited with code {proc.returncode} ({tail[0][:200]}); see {log_file}")


__all__ = ["serve_ui"]
