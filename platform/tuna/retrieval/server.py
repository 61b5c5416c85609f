"""A local Milvus server: the Milvus 2.3 standalone in the PyPI ``milvus`` wheel, started on a free
127.0.0.1 port, waited on until it answers, and stopped by PID.

This is the engine users run at scale (a cluster's Milvus standalone/cluster behind ``http://host:19530``),
run here for the integration tests and ``bench/retrieval.py``; ``index.uri=<MilvusServer.uri>`` points
``tuna index`` and retrieval at it. The first start prepares the data folder with the wheel's own code
(the C++ binary unpacked under ``bin/``, ~250 MB; ``configs/milvus.yaml`` with every component's port
fixed); every start then runs ``bin/milvus run standalone`` (embedded etcd, local storage, rocksmq) on
that config. Fixed ports matter: a killed server leaves its components' addresses in etcd until their
leases expire, and a restart on other ports would reach the wrong component there. The same data
folder started again holds the same collections. Milvus 2.3's gRPC listeners bind every interface (it
has no listen-address setting): its components advertise 127.0.0.1 and only loopback clients are used.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tuna.errors import TunaError

INSTALL_HINT = "pip install milvus==2.3.5 (or `make test-milvus`), or set TUNA_MILVUS_SERVER to its milvus-server"
SESSION_TTL = 10  # seconds a killed server's components stay registered in etcd
KILLED_FILE = "killed_at"  # when stop() had to SIGKILL the server (a restart waits out its sessions)
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
# Run by the wheel's interpreter: its own config writer (free ports from Milvus's defaults up, kept in the
# file) and binary unpacker. argv: data folder, proxy port, host the components advertise.
PREPARE = """
import sys, milvus
config = milvus.MilvusServerConfig(data_dir=sys.argv[1], proxy_port=int(sys.argv[2]))
for component in {components}:
    config.set(component + ".ip", sys.argv[3])
config.set("common.session.ttl", {ttl})   # a killed server's sessions expire sooner (default 30 s)
config.resolve()
milvus._initialize_data_files(config.base_data_dir)
"""

class MilvusServerError(TunaError):
    """The Milvus server is not installed, did not start, or did not answer in time."""


def server_executable() -> Path:
    """The wheel's ``milvus-server``: $TUNA_MILVUS_SERVER (a wheel in a venv of its own), else next to this
    interpreter, else on PATH; raises MilvusServerError naming the install command when there is none."""
    named = os.environ.get("TUNA_MILVUS_SERVER")
    if named:
        if not os.access(named, os.X_OK):
            raise MilvusServerError(f"TUNA_MILVUS_SERVER={named} is not an executable; point it at a milvus-server")
        return Path(named)
    here = Path(sys.executable).parent / "milvus-server"
    found = here if here.is_file() else shutil.which("milvus-server")
    if not found:
        raise MilvusServerError(f"no Milvus server: milvus-server is neither next to {sys.executable} nor on PATH; "
                                f"{INSTALL_HINT}")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _healthy(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return b"OK" in r.read()
    except (urllib.error.URLError, OSError):
        return False


def _config_port(config: Path) -> int:
    """The proxy port a prepared folder's config fixes (the port its server listens on)."""
    match = re.search(r"^  port: (\d+)\n  internalPort:", config.read_text(), re.M)  # proxy: the one with an internalPort
    if not match:
        raise MilvusServerError(f"{config} has no proxy port; delete {config.parent.parent} and start again")
    return int(match.group(1))


@dataclass
class MilvusServer:
    """One Milvus standalone on the data folder ``root``; ``port`` 0 picks a free one (kept across restarts)."""

    root: Path  # the server's data folder (binary, config, logs, etcd, segments)
    port: int = 0
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    start_seconds: float = 0.0  # how long the last start took until the server answered

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prepare(self) -> None:
        """Unpack the server and write its config (every port fixed) under ``root``, once."""
        if (self.root / "bin" / "milvus").is_file() and self.config_path.is_file():
            fixed = _config_port(self.config_path)
            if self.port and self.port != fixed:
                raise MilvusServerError(f"{self.root} holds a server prepared for port {fixed}, not {self.port}; "
                                        f"start it with port={fixed} (or 0)")
            self.port = fixed
            return
        exe = server_executable()
        python = exe.read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()  # the wheel's interpreter
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        code = PREPARE.format(components=COMPONENTS, ttl=SESSION_TTL)
        done = subprocess.run([python, "-c", code, str(self.root.resolve()), str(self.port), self.host],
                              capture_output=True, text=True)
        if done.returncode != 0 or not self.config_path.is_file():
            tail = " ".join((done.stderr or done.stdout).split())[-600:]
            raise MilvusServerError(f"could not prepare a Milvus server in {self.root} with {exe}: {tail}; {INSTALL_HINT}")

    @property
    def config_path(self) -> Path:
        return self.root / "configs" / "milvus.yaml"

    def start(self, ready_timeout: float = 240.0) -> MilvusServer:
        """Start the server (preparing the folder the first time) and wait until it answers; raises
        MilvusServerError with its log tail if it exits or does not answer in ``ready_timeout`` seconds."""
        if self.running:
            return self
        t0 = time.monotonic()
        self.prepare()
        with socket.socket() as s:
            if s.connect_ex((self.host, self.port)) == 0:
                raise MilvusServerError(f"port {self.port} on {self.host} is already in use; pick another port (0 = a free one)")
        binary = self.root.resolve() / "bin" / "milvus"
        metrics = free_port(self.host)  # /healthz; not recorded in etcd, so it may change across restarts
        env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics),
               "MILVUS_RUN_DIR": str(self.root.resolve() / "run"),
               "LD_LIBRARY_PATH": ":".join([str(binary.parent), os.environ.get("LD_LIBRARY_PATH", "")])}
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "milvus-stdout.log", "a") as out, open(logs / "milvus-stderr.log", "a") as err:
            self.process = subprocess.Popen([str(binary), "run", "standalone"], cwd=self.root.resolve(), env=env,
                                            stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise MilvusServerError(f"Milvus server on {self.root} exited with code {code} while starting: "
                                        f"{self.log_tail()}")
            if _healthy(self.host, metrics) and self._answers():
                self._outlive_killed_sessions()
                self.start_seconds = time.monotonic() - t0
                return self
            time.sleep(0.25)
        self.stop()
        raise MilvusServerError(f"Milvus server at {self.uri} did not answer in {ready_timeout:.0f}s: {self.log_tail()}")

    def _outlive_killed_sessions(self) -> None:
        """After a killed server, wait until its sessions expired: until then the coordinators still route
        flushes and loads to its dead nodes (measured: "node not match" on flush)."""
        marker = self.root / KILLED_FILE
        try:
            killed_at = float(marker.read_text())
        except (OSError, ValueError):
            return
        time.sleep(max(0.0, killed_at + SESSION_TTL + 3 - time.time()))
        marker.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _answers(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex((self.host, self.port)) == 0

    def log_tail(self, lines: int = 6) -> str:
        """The last lines of the wrapper's and the server's logs, on one line."""
        text: list[str] = []
        for path in (self.root / "logs" / "milvus-stderr.log", self.root / "logs" / "milvus-stdout.log"):
            try:
                text += [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
            except OSError:
                continue
        return " | ".join(text)[-1500:] + f" (logs: {self.root / 'logs'})"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the server and wait up to ``grace`` seconds, then SIGKILL the process group we started.
        Milvus 2.3 standalone often hangs in its ordered shutdown; flushed data is on disk either way, and
        the fixed ports let a restart take over the killed server's sessions. Safe to call twice."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                (self.root / KILLED_FILE).write_text(f"{time.time()}\n")
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started (its own session): nothing of it may outlive us
        except ProcessLookupError:
            pass
        proc.wait()
        self.process = None
        while self._answers():  # the kernel closes a killed server's listeners a moment after it is reaped
            time.sleep(0.1)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["MilvusServer", "MilvusServerError", "free_port", "server_executable"]
