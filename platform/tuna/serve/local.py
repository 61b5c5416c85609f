"""Serving on this machine: export when stale, start tritonserver on the repository, ask it one question.

What `tuna serve` and the `serve` step of `tuna run` share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.serve.export import export_repository, is_up_to_date, repository_dir
from tuna.serve.server import TritonServer
from tuna.sources import sources


def ensure_exported(cfg: Recipe, variant: str | None = None, log: Callable[[str], None] = print) -> Path:
    """The repository of ``variant``, exported first when missing or stale (new model or datastore)."""
    if not is_up_to_date(cfg, variant):
        export_repository(cfg, variant, log=log)
    return repository_dir(cfg, variant)


def start_server(cfg: Recipe, variant: str | None = None, free_ports: bool = False,
                 log: Callable[[str], None] = print) -> TritonServer:
    """A started (ready) local tritonserver on the exported repository of ``variant``."""
    repo = ensure_exported(cfg, variant, log)
    s = cfg.serve
    ports = (0, 0, 0) if free_ports else (s.grpc_port, s.http_port, s.metrics_port)
    logs = layout(cfg).serve_logs
    logs.mkdir(parents=True, exist_ok=True)
    server = TritonServer(repo, host=s.host, grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2],
                          log_path=logs / f"tritonserver-{variant or s.variant}.log")
    t0 = time.perf_counter()
    server.start(ready_timeout=s.ready_timeout)
    log(f"tritonserver ready in {time.perf_counter() - t0:.1f}s: gRPC {server.grpc_url}, HTTP {server.http_url}, "
        f"metrics http://{server.host}:{server.metrics_port}/metrics (log {server.log_path})")
    return server


def demo_image(cfg: Recipe) -> Path:
    """An image of a held-out (OOD) fine class from the world's FINER set (else of the first enabled FINER split):
    what the demo asks about."""
    src = sources(cfg)
    splits = src.splits("finer")
    if not splits:
        raise TunaError("no FINER split is enabled to take a demo image from; enable data.finer_id")
    found = src.eval_set("finer", "ood" if "ood" in splits else splits[0])
    folder = found.images
    images = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.jpeg"))
    if not images:
        raise TunaError(f"no images under {folder}; run `tuna world --config <recipe>` first")
    return images[0]


def demo(cfg: Recipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Serve, ask ``serve.question`` about a FINER OOD image over gRPC (datastore default and B), stop."""
    from tuna.serve.client import TunaClient

    image = demo_image(cfg)
    server = start_server(cfg, free_ports=True, log=log)
    try:
        client = TunaClient(server.grpc_url)
        t0 = time.perf_counter()
        reply = client.ask(image.read_bytes(), cfg.serve.question, cfg.serve.default_max_tokens)
        seconds = time.perf_counter() - t0
        client.close()
    finally:
        code = server.stop()
    log(f"asked {cfg.serve.question!r} about {image.name} over gRPC in {seconds * 1000:.0f} ms -> {reply.text!r}")
    prov = reply.provenance
    if prov.get("tags"):
        tags = ", ".join(f"{t} ({w:.2f})" for t, w in zip(prov["tags"], prov["weights"]))
        log(f"  provenance: datastore {prov['datastore']} ({prov['datastore_version']}), tags {tags}")
    return {"answer": reply.text, "provenance": prov, "image": str(image), "latency_s": seconds, "exit_code": code,
            "grpc_url": server.grpc_url}


__all__ = ["demo", "demo_image", "ensure_exported", "start_server"]
