"""A health probe that exercises a real inference: one tiny question through the whole ``tuna`` ensemble over gRPC.

Why not Triton's own endpoints: measured on tritonserver 2.51 (nvidia-pytriton 0.7), after ``kill -9`` of a step's
python-backend stub every request fails with INTERNAL "Stub process '<step>_0_0' is not healthy." and stays failing
(the 2.51 python backend does not restart the stub), while ``/v2/health/live``, ``/v2/health/ready`` and
``/v2/models/<model>/ready`` keep answering 200 (upstream: triton-inference-server/server#8604; the fix that reports a
dead stub in model readiness, python_backend#425, is not in 2.51). Only a request that runs all four steps
(preprocessing -> retrieval -> tensorrt_llm -> postprocessing) tells a working server from a broken one.

The probe asks :data:`PROBE_QUESTION` about a 16x16 grey PNG for one new token, with a gRPC deadline; any error,
refusal or missed deadline is a failure. Used by the local watchdog of `tuna serve` (:mod:`tuna.serve.watchdog`),
by `tuna probe`, and by the helm chart's readiness and liveness exec probes as
``python -m tuna.serve.probe --url 127.0.0.1:8001 --deadline 10`` (exit code 0 = healthy, 1 = not; one line).
It imports tritonclient and numpy only (no recipe, no torch): an exec probe pays ~0.5 s of interpreter start.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

PROBE_QUESTION = "What is in the image?"   # any question the front door accepts; the answer is not checked
PROBE_MAX_TOKENS = 1                        # one new token: the LLM step runs, the probe stays cheap


def probe_image(size: int = 16, grey: int = 128) -> bytes:
    """A ``size`` x ``size`` grey 8-bit RGB PNG, written without PIL (the probe must import little)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([grey]) * (3 * size) for _ in range(size))   # filter byte 0, then R G B per pixel
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)                   # 8 bits, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class ProbeResult:
    """One probe: ``ok`` when the ensemble answered; otherwise ``status`` is the gRPC status the client saw
    (UNAVAILABLE, DEADLINE_EXCEEDED, ...) and ``message`` Triton's (or the transport's) message."""

    ok: bool
    seconds: float
    status: str
    message: str

    def line(self, url: str) -> str:
        if self.ok:
            return f"healthy: {url} answered a real inference in {self.seconds * 1000:.0f} ms"
        return f"unhealthy: {url}: {self.status}: {self.message} (after {self.seconds:.1f}s)"


def probe(url: str, deadline: float = 10.0, model: str = "tuna") -> ProbeResult:
    """Ask the served ``model`` at gRPC ``url`` one tiny question within ``deadline`` seconds; never raises for a
    server-side failure (it is the result)."""
    from tuna.serve.client import RequestRefused, ServerUnreachable, TunaClient

    t0 = time.perf_counter()
    try:
        client = TunaClient(url, model=model, timeout=deadline)
    except ServerUnreachable as err:
        return ProbeResult(False, time.perf_counter() - t0, "UNAVAILABLE", str(err))
    try:
        client.ask(probe_image(), PROBE_QUESTION, max_tokens=PROBE_MAX_TOKENS)
        return ProbeResult(True, time.perf_counter() - t0, "OK", "")
    except RequestRefused as err:
        return ProbeResult(False, time.perf_counter() - t0, err.status, err.message)
    except ServerUnreachable as err:
        return ProbeResult(False, time.perf_counter() - t0, "UNAVAILABLE", str(err))
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tuna.serve.probe --url HOST:PORT [--deadline S]``: print one line, exit 0 (healthy) or 1."""
    p = argparse.ArgumentParser(prog="python -m tuna.serve.probe", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC host:port (default: 127.0.0.1:8001, the pod's own)")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds the answer may take (gRPC deadline; default 10)")
    p.add_argument("--model", default="tuna", help="the ensemble to ask (default: tuna)")
    args = p.parse_args(argv)
    if not args.deadline > 0:
        p.error(f"--deadline must be > 0 seconds, got {args.deadline}")
    result = probe(args.url, args.deadline, args.model)
    print(result.line(args.url), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


__all__ = ["PROBE_MAX_TOKENS", "PROBE_QUESTION", "ProbeResult", "main", "probe", "probe_image"]


if __name__ == "__main__":
    sys.exit(main())

