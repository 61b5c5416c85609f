"""The local ``tritonserver``: found in the nvidia-pytriton wheel, started on a model repository, stopped.

The wheel bundles tritonserver 2.51 and its python backend. Run bare, the server needs (measured on our
machines, see DESIGN.md): a backend directory holding the bundle's ``backends/python`` with the stub built
for this interpreter's Python version, the bundle's ``nvidia_pytriton.libs`` and this interpreter's own
``libpython`` on ``LD_LIBRARY_PATH``, and this environment's ``bin`` first on ``PATH`` (the stub runs
Python from there). The models import ``tuna``: the source root and site-packages go on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tuna.errors import TunaError


class ServerError(TunaError):
    """tritonserver is missing, did not start, or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bundle_dir() -> Path:
    """The tritonserver folder inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise ServerError("nvidia-pytriton is not installed (it ships the tritonserver binary); run `make install`") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}; reinstall nvidia-pytriton (`make install`)")
    return root


def backend_dir(cache: Path | None = None) -> Path:
    """A backend directory with the python backend and the stub for this Python (built once, then reused)."""
    root = bundle_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the bundled python backend has no stub for Python {version} (looked in {stub.parent})")
    target = (cache or Path.home() / ".cache" / "tuna" / "triton-backends") / version
    python = target / "python"
    if not (python / "triton_python_backend_stub").is_file():
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root / "backends", tmp)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        try:
            tmp.rename(target)
        except OSError:          # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def server_env(extra_pythonpath: list[str] | None = None) -> dict[str, str]:
    """The environment the bare tritonserver and its python stubs need (see the module doc)."""
    env = dict(os.environ)
    libs = bundle_dir().parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    source_root = str(Path(__file__).resolve().parents[2])
    site = sysconfig.get_paths()["purelib"]
    paths = [source_root, site] + (extra_pythonpath or []) + [p for p in env.get("PYTHONPATH", "").split(":") if p]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
    env.setdefault("OMP_NUM_THREADS", "1")
    # The python stubs ignore PYTHONPATH (measured: sys.path holds only their interpreter's paths and site-packages, so an
    # editable install elsewhere wins); the exported model.py files put TUNA_SOURCE_ROOT first: the tree of this server.
    env.setdefault("TUNA_SOURCE_ROOT", source_root)
    # serve.engine=vllm: the LLM step's stub runs in the vLLM venv (its bin/activate reads TUNA_VLLM_VENV).
    checkout_venv = Path(source_root).parent / ".venv-vllm"
    if not env.get("TUNA_VLLM_VENV") and (checkout_venv / "bin" / "python").is_file():
        env["TUNA_VLLM_VENV"] = str(checkout_venv)
    return env


def uses_vllm(repository: Path) -> bool:
    """True when the repository's LLM step runs on vLLM (`tuna export` with serve.engine=vllm)."""
    from tuna.serve.model_config import VLLM_ENV_FILE

    return (repository / "tensorrt_llm" / VLLM_ENV_FILE).is_file()


@dataclass
class TritonServer:
    """A running local tritonserver; use as a context manager or call :meth:`stop`."""

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self, ready_timeout: float = 180.0) -> TritonServer:
        """Start the server and wait until it and every model are ready; raises ServerError with the log tail."""
        if not (self.repository / "tuna" / "config.pbtxt").is_file():
            raise ServerError(f"{self.repository} is not a TUNA model repository (no tuna/config.pbtxt); "
                              f"run `tuna export` first")
        if (self.repository / "tensorrt_llm" / "1" / "model.yaml").is_file():
            raise ServerError(f"{self.repository}: its LLM step runs TensorRT-LLM on GPUs (`tuna export --trtllm`); serve the "
                              f"CPU model_repository here, or this one in the GPU serving image (helm/tuna-serving/ci/gpu-trtllm-values.yaml)")
        self.grpc_port = self.grpc_port or free_port(self.host)
        self.http_port = self.http_port or free_port(self.host)
        self.metrics_port = self.metrics_port or free_port(self.host)
        for port in (self.grpc_port, self.http_port, self.metrics_port):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, port)) == 0:
                    raise ServerError(f"port {port} on {self.host} is already in use; set serve.grpc_port/http_port/"
                                      f"metrics_port (0 = a free port)")
        vllm = uses_vllm(self.repository)   # the vLLM step's stub takes ~8 s to stop its engine on 2 busy cores
        cmd = [str(bundle_dir() / "bin" / "tritonserver"), f"--model-repository={self.repository.resolve()}",
               f"--backend-directory={backend_dir()}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--http-address={self.host}", f"--http-port={self.http_port}", f"--metrics-address={self.host}",
               f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false", f"--exit-timeout-secs={25 if vllm else 10}",
               "--log-verbose=0"]
        self.log_path = self.log_path or self.repository.parent / "tritonserver.log"
        env = server_env()
        env.update(self.env)
        venv = env.get("TUNA_VLLM_VENV", "")
        if vllm and not (venv and (Path(venv) / "bin" / "python").is_file()):
            raise ServerError(f"{self.repository}: the LLM step runs on vLLM (serve.engine=vllm) but TUNA_VLLM_VENV="
                              f"{venv!r} is not a venv; run `make vllm-env` and set TUNA_VLLM_VENV to it")
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while loading "
                                  f"{self.repository}: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver did not become ready in {ready_timeout:.0f}s (serve.ready_timeout): {self.log_tail()}")

    def ready(self, model: str = "tuna") -> bool:
        """True when the server reports every loaded model ready (Triton's strict readiness) and ``model`` (the ensemble)
        is ready too: measured, /v2/health/ready answered 200 while the four steps were ready and the ensemble, loaded
        last, was not yet known (requests then get NOT_FOUND "unknown model"). Triton's word only: a step whose stub
        died still reads ready (see tuna.serve.probe)."""
        for path in ("/v2/health/ready", f"/v2/models/{model}/ready"):
            try:
                with urllib.request.urlopen(f"{self.http_url}{path}", timeout=2) as r:
                    if r.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines() if self.log_path else []
        except OSError:
            return "(no log)"
        interesting = [ln for ln in text if " E" in ln[:2] or "error" in ln.lower() or "Error" in ln]
        return " | ".join((interesting or text)[-lines:])[-1500:] + f" (log: {self.log_path})"

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM the server (it unloads models and exits), SIGKILL after ``timeout``; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            self._reap()
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)   # its own session: the python stubs go with it
            return self.process.wait(timeout=10)
        finally:
            self._reap()

    def _reap(self) -> None:
        """SIGKILL what is left of the server's process group (its own session): a python stub killed at the exit
        timeout leaves its children behind (vLLM's engine core and worker were seen running on, adopted by init)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ServerError", "TritonServer", "backend_dir", "bundle_dir", "free_port", "server_env", "uses_vllm"]
