"""Serving benchmark: the Triton ensemble over gRPC vs the same steps in-process, and the bare-server floor.

One run, same machine, same exported repository and the same requests (FINER ID + OOD images, one
question each, greedy, ``--max-tokens`` new tokens):

- in-process: preprocessing -> retrieval -> LLM -> postprocessing called directly (torch on 1 thread,
  as each Triton python stub runs), one request at a time: p50/p99 latency and requests/s;
- Triton sequential: one gRPC client, one request at a time: p50/p99 and requests/s;
- Triton concurrent: ``--clients`` gRPC clients at once (dynamic batching): requests/s;
- the same two Triton measurements with no batching waits (serve.queue_delay_us=0), the other side of the
  latency / throughput trade-off;
- floor: a trivial python model (echo) on the same server build: p50/p99 and requests/s with the same clients.

Goals (issue #6): Triton p50 <= 1.2x in-process p50; concurrent throughput >= 3x sequential.

    .venv/bin/python bench/serve.py --config configs/mini.yaml [--requests 200] [--clients 8] [--out bench/results/serve.json]

Needs a trained TUNA model and its datastores (`make run` builds them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuna.recipe import load_recipe

ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 8
input { name: "IN" data_type: TYPE_STRING dims: 1 }
output { name: "OUT" data_type: TYPE_STRING dims: 1 }
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group { count: 1 kind: KIND_CPU }
"""
ECHO_MODEL = '''import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
                for r in requests]
'''


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3), "mean_ms": round(statistics.fmean(ms), 3),
            "throughput_rps": round(len(ms) / wall, 2)}


def _requests(cfg: Any, n: int) -> list[bytes]:
    images = []
    for split in ("id", "ood"):
        folder = cfg.data_dir / "world" / "eval" / "finer" / split / "images"
        images += [p.read_bytes() for p in sorted(folder.glob("*.png"))[: n // 2 + 1]]
    return [images[i % len(images)] for i in range(n)]


def in_process(repo: Path, images: list[bytes], question: str, max_tokens: int) -> dict[str, Any]:
    import torch

    from tuna.serve.ensemble import GenerationRequest, Generator, Postprocessor, Preprocessor, Retrieval

    torch.set_num_threads(1)
    pre = Preprocessor(repo / "preprocessing" / "1" / "assets")
    ret = Retrieval(repo / "retrieval" / "1" / "assets")
    gen = Generator(repo / "tensorrt_llm" / "1" / "assets", threads=1)
    post = Postprocessor(repo / "postprocessing" / "1" / "assets")

    def one(img: bytes) -> str:
        p = pre(question, img, max_tokens)
        t = ret([p.input_ids], [p.pixel_values], [ret.default])[0]
        return post(gen([GenerationRequest(t.input_ids, t.table, max_tokens, p.end_id, p.pad_id)])[0])

    for img in images[:3]:
        one(img)
    lat, answers = [], []
    t0 = time.perf_counter()
    for img in images:
        s = time.perf_counter()
        answers.append(one(img))
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    ret.close()
    return {**_stats(lat, wall), "answers": answers}


def _drive(call, items: list[Any], clients: int) -> tuple[list[float], float]:
    lat: list[float] = []
    lock = threading.Lock()
    work = list(enumerate(items))[::-1]   # popped from the end: in order

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                _, item = work.pop()
            s = time.perf_counter()
            call(item)
            with lock:
                lat.append(time.perf_counter() - s)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0


def _per_thread(conns: list[Any], fn):
    """``fn(connection, item)`` with one connection per worker thread (round robin over ``conns``)."""
    local = threading.local()
    ids = iter(range(10**9))

    def call(item: Any) -> Any:
        if not hasattr(local, "c"):
            local.c = conns[next(ids) % len(conns)]
        return fn(local.c, item)

    return call


def through_triton(repo: Path, images: list[bytes], question: str, max_tokens: int, clients: int) -> dict[str, Any]:
    from tuna.serve.client import TunaClient
    from tuna.serve.server import TritonServer

    with TritonServer(repo).start(300) as server:
        conns = [TunaClient(server.grpc_url) for _ in range(clients)]
        for img in images[:3]:
            conns[0].ask(img, question, max_tokens)
        answers = []
        lat, wall = _drive(lambda img: answers.append(conns[0].ask(img, question, max_tokens).text), images, 1)
        sequential = _stats(lat, wall)
        ask = _per_thread(conns, lambda c, img: c.ask(img, question, max_tokens))
        lat, wall = _drive(ask, images, clients)
        concurrent = _stats(lat, wall)
        for c in conns:
            c.close()
    return {"sequential": sequential, "concurrent": concurrent, "answers_sequential": answers}


def floor(requests: int, clients: int) -> dict[str, Any]:
    import tritonclient.grpc as grpc

    from tuna.serve.server import TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        (repo / "echo" / "1").mkdir(parents=True)
        (repo / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
        (repo / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
        # The server insists on a TUNA repository; the floor model lives alone, so mark it as one.
        (repo / "tuna").mkdir()
        (repo / "tuna" / "config.pbtxt").write_text(ECHO_CONFIG.replace('"echo"', '"tuna"'))
        (repo / "tuna" / "1").mkdir()
        (repo / "tuna" / "1" / "model.py").write_text(ECHO_MODEL)
        with TritonServer(repo).start(120) as server:
            conns = [grpc.InferenceServerClient(server.grpc_url) for _ in range(clients)]

            def call(c) -> None:
                t = grpc.InferInput("IN", [1, 1], "BYTES")
                t.set_data_from_numpy(np.array([[b"ping"]], dtype=object))
                c.infer("echo", [t])

            for _ in range(20):
                call(conns[0])
            lat, wall = _drive(lambda _: call(conns[0]), list(range(requests)), 1)
            sequential = _stats(lat, wall)
            many = _per_thread(conns, lambda c, _: call(c))
            lat, wall = _drive(many, list(range(requests * 4)), clients)
            concurrent = _stats(lat, wall)
    return {"sequential": sequential, "concurrent": concurrent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mini.yaml")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", default="bench/results/serve.json")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = load_recipe(args.config, args.overrides)
    from tuna.serve.local import ensure_exported

    repo = ensure_exported(cfg, log=lambda s: print(s, file=sys.stderr))
    images = _requests(cfg, args.requests)
    question = cfg.serve.question
    print("in-process ...", file=sys.stderr)
    inproc = in_process(repo, images, question, args.max_tokens)
    print("triton ...", file=sys.stderr)
    triton = through_triton(repo, images, question, args.max_tokens, args.clients)
    no_wait = None
    if cfg.serve.queue_delay_us > 0:  # the other side of the trade-off: no batching waits at all
        print("triton without batching waits ...", file=sys.stderr)
        from tuna.serve.export import export_repository

        quick = load_recipe(args.config, [*args.overrides, "serve.queue_delay_us=0"])
        with tempfile.TemporaryDirectory() as tmp:
            export_repository(quick, out=Path(tmp) / "export", log=lambda s: None)
            no_wait = through_triton(Path(tmp) / "export" / "model_repository", images, question, args.max_tokens,
                                     args.clients)
        no_wait.pop("answers_sequential")
    print("floor ...", file=sys.stderr)
    bare = floor(args.requests, args.clients)
    same = sum(a == b for a, b in zip(inproc.pop("answers"), triton.pop("answers_sequential")))
    report = {
        "config": args.config, "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
        "in_process": inproc, "triton": triton, "floor_echo": bare,
        "same_answers_triton_vs_in_process": f"{same}/{len(images)}",
        "p50_ratio_triton_over_in_process": round(triton["sequential"]["p50_ms"] / inproc["p50_ms"], 3),
        "throughput_ratio_concurrent_over_sequential": round(
            triton["concurrent"]["throughput_rps"] / triton["sequential"]["throughput_rps"], 3),
        "goals": {"p50_ratio_max": 1.2, "throughput_ratio_min": 3.0},
        "queue_delay_us": cfg.serve.queue_delay_us,
        "no_wait": None if no_wait is None else {
            **no_wait, "p50_ratio_triton_over_in_process": round(no_wait["sequential"]["p50_ms"] / inproc["p50_ms"], 3),
            "throughput_ratio_concurrent_over_sequential": round(
                no_wait["concurrent"]["throughput_rps"] / no_wait["sequential"]["throughput_rps"], 3)},
        "machine": {"python": pyplatform.python_version(), "cores": os.cpu_count()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    keys = ("p50_ratio_triton_over_in_process", "throughput_ratio_concurrent_over_sequential")
    shown = {k: report[k] for k in (*keys, "same_answers_triton_vs_in_process")}
    if report["no_wait"]:
        shown["no_wait"] = {k: report["no_wait"][k] for k in keys}
    print(json.dumps(shown, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
