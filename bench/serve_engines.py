"""Serving engines (issue #17): Triton + HF python step vs Triton + vLLM step vs vLLM alone, on the same requests.

One run, same machine, same trained model exported twice (serve.engine=hf and serve.engine=vllm) and the same
requests: FINER questions of the ID and OOD eval splits ("What kind of <superordinate> is in the image?"), greedy,
``--max-tokens`` new tokens.

- reference: the HF steps called in-process one request at a time (what `Predictor.answer` gives, tests/serve):
  its answers are the ones every engine must reproduce; its p50 is reported too;
- Triton + HF step / Triton + vLLM step: tritonserver with the `tuna` ensemble over gRPC, ``--clients`` closed-loop
  clients each (1 = sequential): p50/p99 latency and requests/s;
- vLLM alone: the same merged prompt embeddings (the retrieval step's output, computed once in-process) fed to
  ``VllmEngine`` in the vLLM venv; one request at a time for 1 client, else waves of N requests in one ``generate``
  (N concurrent requests arriving together).

Goals (#17): Triton + vLLM p50 <= 1.2x vLLM alone; at 32 clients >= 5x the throughput of Triton + HF step; answers
equal to in-process greedy answers.

With ``--milvus-server`` the served datastores live in a Milvus 2.3 standalone (the optional `milvus` wheel,
`make test-milvus` installs it) on a free 127.0.0.1 port, as a cluster serves them (``MILVUS_URI``, the chart's
``milvus.uri``), built there by `tuna index`'s own builder; without it, the export's Milvus Lite copies.

    .venv/bin/python bench/serve_engines.py --config configs/mini.yaml [--requests 200] [--clients 1 8 32]
        [--milvus-server] [--server-env NAME=VALUE ...] [--out bench/results/serve_engines.json]
        (the vLLM venv: $TUNA_VLLM_VENV or .venv-vllm)

Each Triton row also records, per client count, Triton's own step statistics and the CPU milliseconds per request of
every process of the server's tree (the python stubs by step, vLLM's engine core and worker) and of the Milvus server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as pyplatform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _bench_serve() -> Any:
    """bench/serve.py's timing helpers (_stats, _drive, _per_thread)."""
    sys.path.insert(0, str(HERE))
    import serve

    return serve


def _questions(cfg: Any, n: int) -> list[tuple[bytes, str]]:
    from tuna.eval.finer import direct_prompt

    out = []
    for split in ("id", "ood"):
        folder = cfg.data_dir / "world" / "eval" / "finer" / split
        rows = [json.loads(line) for line in (folder / "finer.jsonl").read_text().splitlines() if line.strip()]
        out += [((folder / "images" / r["image"]).read_bytes(), direct_prompt(r["basic-level-lbl"])) for r in rows[: (n + 1) // 2]]
    return out[:n]


STEPS = ("preprocessing", "retrieval", "tensorrt_llm", "postprocessing")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _label(pid: int) -> str:
    """A process's name for the CPU table: its command name, and for a Triton python stub the step it runs."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"gone {pid}"
    step = next((st for st in STEPS if f"/{st}/" in cmd or cmd.rstrip().endswith(f"/{st}")), None)
    return f"{name} {step}" if step else name


def process_tree(roots: list[int]) -> dict[int, str]:
    """``roots`` and every descendant of them now: pid -> label (/proc)."""
    from tuna.serve.vllm_engine import _descendants

    return {p: _label(p) for p in sorted({*roots, *(d for r in roots for d in _descendants(r))})}


def cpu_per_request(before: dict[int, float], after: dict[int, float], labels: dict[int, str],
                    requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request each process spent between two ``_cpu_seconds`` snapshots (those above
    0.05 ms), largest first, and their ``total``."""
    used = {f"{labels[p]} ({p})": 1000 * (after[p] - before.get(p, 0.0)) / max(requests, 1) for p in after}
    rows = {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0.05}
    return {**rows, "total": round(sum(rows.values()), 2)}


def server_datastores(cfg: Any, config: str, overrides: list[str], names: list[str], tmp: Path, stack: Any) -> Any:
    """A Milvus standalone holding datastores ``names`` of ``cfg``'s run (built by tuna.retrieval.datastore from
    its world, encoder and tags, linked into a scratch run folder so the run's own manifests stay as they are);
    returns the running :class:`~tuna.retrieval.server.MilvusServer`, stopped when ``stack`` closes."""
    from tuna.recipe import load_recipe
    from tuna.retrieval.datastore import build_datastore
    from tuna.retrieval.server import MilvusServer

    server = stack.enter_context(MilvusServer(tmp / "milvus-server"))
    linked = tmp / "run"
    linked.mkdir()
    for sub in ("world", "encoder", "tags"):
        (linked / sub).symlink_to((cfg.data_dir / sub).resolve())
    there = load_recipe(config, [*overrides, f"run.data_dir={linked}", f"index.uri={server.uri}"])
    for name in names:
        m = build_datastore(there, name, rebuild=True, progress=False, log=lambda s: None)
        print(f"  datastore {name}: {m['rows']} rows -> {server.uri}", file=sys.stderr)
    return server


def reference(repo: Path, asked: list[tuple[bytes, str]], max_tokens: int, requests_file: Path) -> dict[str, Any]:
    """In-process HF steps, one request at a time; saves each request's merged embeddings for vLLM alone."""
    import torch

    from tuna.serve.ensemble import GenerationRequest, Generator, Postprocessor, Preprocessor, Retrieval
    from tuna.serve.vllm_engine import EngineRequest, save_requests

    torch.set_num_threads(1)
    pre = Preprocessor(repo / "preprocessing" / "1" / "assets")
    ret = Retrieval(repo / "retrieval" / "1" / "assets")
    gen = Generator(repo / "tensorrt_llm" / "1" / "assets", threads=1)
    post = Postprocessor(repo / "postprocessing" / "1" / "assets")
    answers, latencies, saved = [], [], []
    t0 = time.perf_counter()
    for img, question in asked:
        s = time.perf_counter()
        p = pre(question, img, max_tokens)
        t = ret([p.input_ids], [p.pixel_values], [ret.default])[0]
        req = GenerationRequest(t.input_ids, t.table, max_tokens, p.end_id, p.pad_id)
        answers.append(post(gen([req])[0]))
        latencies.append(time.perf_counter() - s)
        saved.append(EngineRequest(gen.embeddings(req).numpy(), max_tokens, p.end_id))
    wall = time.perf_counter() - t0
    ret.close()
    save_requests(requests_file, saved)
    return {**_bench_serve()._stats(latencies, wall), "answers": answers}


def through_triton(repo: Path, asked: list[tuple[bytes, str]], max_tokens: int, clients: list[int],
                   env: dict[str, str], also: list[int]) -> dict[str, Any]:
    """tritonserver on ``repo``: each client count's latencies, answers, step statistics and CPU per process (the
    server's tree and the processes ``also``, e.g. the Milvus server)."""
    from tuna.serve.client import TunaClient
    from tuna.serve.server import TritonServer

    b = _bench_serve()
    rows: dict[str, Any] = {}
    started = time.perf_counter()
    with TritonServer(repo, env=env).start(400) as server:
        rows["ready_seconds"] = round(time.perf_counter() - started, 1)
        conns = [TunaClient(server.grpc_url, timeout=300) for _ in range(max(clients))]
        for img, q in asked[:3]:
            conns[0].ask(img, q, max_tokens)
        for n in clients:
            answers: dict[int, str] = {}

            def ask(conn: Any, item: tuple[int, tuple[bytes, str]], answers: dict[int, str] = answers) -> None:
                i, (img, q) = item
                answers[i] = conn.ask(img, q, max_tokens).text

            before = conns[0].step_statistics()
            labels = process_tree([server.process.pid, *also])
            cpu = {p: _cpu_seconds(p) for p in labels}
            lat, wall = b._drive(b._per_thread(conns[:n], ask), list(enumerate(asked)), n)
            cpu_after = {p: _cpu_seconds(p) for p in labels}
            rows[f"clients_{n}"] = b._stats(lat, wall)
            rows[f"answers_{n}"] = [answers[i] for i in range(len(asked))]
            rows[f"step_statistics_clients_{n}"] = phase_statistics(before, conns[0].step_statistics())
            rows[f"cpu_ms_per_request_clients_{n}"] = cpu_per_request(cpu, cpu_after, labels, len(asked))
        rows["step_statistics"] = conns[0].step_statistics()   # cumulative over every client count: where time went
        for c in conns:
            c.close()
    return rows


def phase_statistics(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Triton's step statistics of one phase: the difference of two cumulative ``TunaClient.step_statistics()``
    snapshots (request-mean milliseconds recovered from the rounded means, batch sizes exact)."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {"requests": 0, "executions": 0, "batch_sizes": {}})
        requests, executions = a["requests"] - b["requests"], a["executions"] - b["executions"]
        row: dict[str, Any] = {"requests": requests, "executions": executions,
                               "mean_batch": round(requests / max(executions, 1), 2)}
        for key in ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms"):
            row[key] = round((a[key] * a["requests"] - b.get(key, 0.0) * b["requests"]) / max(requests, 1), 3)
        sizes = {k: v - b["batch_sizes"].get(k, 0) for k, v in a["batch_sizes"].items()}
        row["batch_sizes"] = {k: v for k, v in sizes.items() if v}
        out[name] = row
    return out


def vllm_alone(venv: Path, repo: Path, requests_file: Path, clients: list[int], out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([str(venv / "bin" / "python"), __file__, "--alone", str(requests_file), str(repo), str(out),
                           *map(str, clients)], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"vLLM alone failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    report = json.loads(out.read_text())
    for n in clients:
        raw = report[f"clients_{n}"]
        report[f"clients_{n}"] = _bench_serve()._stats(raw["latencies"], raw["wall"])
    return report


def _alone_main(requests_file: str, repo: str, out: str, clients: list[int]) -> int:
    """Runs in the vLLM venv: VllmEngine on the exported LM, the saved requests one at a time and in waves."""
    from tuna.serve.vllm_engine import VllmEngine, _load_requests

    root = Path(repo)
    requests = _load_requests(Path(requests_file))
    engine = VllmEngine(root / "tensorrt_llm" / "1" / "assets", max_model_len=1 << 20,
                        tokenizer=root / "postprocessing" / "1" / "assets")
    engine.generate(requests[:3])
    report: dict[str, Any] = {"load_seconds": round(engine.load_seconds, 1)}
    for n in clients:
        lat, answers = [], []
        t0 = time.perf_counter()
        for i in range(0, len(requests), n):
            s = time.perf_counter()
            got = engine.generate(requests[i: i + n])
            took = time.perf_counter() - s
            lat += [took] * len(got)
            answers += [g.text if hasattr(g, "text") else f"error: {g}" for g in got]
        report[f"clients_{n}"] = {"latencies": lat, "wall": time.perf_counter() - t0}   # stats: in main (project venv)
        report[f"answers_{n}"] = answers
    Path(out).write_text(json.dumps(report))
    engine.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mini.yaml")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", default="bench/results/serve_engines.json")
    p.add_argument("--milvus-server", action="store_true", help="serve the datastores from a Milvus standalone (MILVUS_URI)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment for both tritonservers (repeatable), e.g. VLLM_ENABLE_V1_MULTIPROCESSING=0")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tuna.recipe import load_recipe
    from tuna.serve.ensemble import read_serving
    from tuna.serve.export import export_repository

    venv = Path(os.environ.get("TUNA_VLLM_VENV") or REPO / ".venv-vllm")
    if not (venv / "bin" / "python").is_file():
        raise SystemExit(f"no vLLM venv at {venv}: run `make vllm-env` or set TUNA_VLLM_VENV")
    bad = [e for e in args.server_env if "=" not in e or not e.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"--server-env {bad[0]!r}: give NAME=VALUE, e.g. --server-env VLLM_ENABLE_V1_MULTIPROCESSING=0")
    server_env = dict(e.split("=", 1) for e in args.server_env)
    cfg = load_recipe(args.config, args.overrides)
    asked = _questions(cfg, args.requests)
    report: dict[str, Any] = {"config": args.config, "overrides": args.overrides, "requests": len(asked), "clients": args.clients,
                              "max_tokens": args.max_tokens, "max_batch_size": cfg.serve.max_batch_size,
                              "queue_delay_us": cfg.serve.queue_delay_us, "milvus": "server" if args.milvus_server else "lite",
                              "server_env": server_env}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repos = {}
        for engine in ("hf", "vllm"):
            export_repository(load_recipe(args.config, [*args.overrides, f"serve.engine={engine}"]), out=Path(tmp) / engine,
                              log=lambda s: None)
            repos[engine] = Path(tmp) / engine / "model_repository"
        milvus: dict[str, str] = {}
        also: list[int] = []   # the Milvus server's CPU counts with the Triton rows
        if args.milvus_server:
            served = sorted(read_serving(repos["hf"] / "retrieval" / "1" / "assets")["datastores"])
            server = server_datastores(cfg, args.config, args.overrides, served, Path(tmp), stack)
            milvus["MILVUS_URI"] = server.uri
            also = [server.process.pid] if server.process is not None else []
            os.environ.update(milvus)   # the in-process reference's retrieval step reads it too
        print("in-process reference ...", file=sys.stderr)
        ref = reference(repos["hf"], asked, args.max_tokens, Path(tmp) / "requests.npz")
        expected = ref.pop("answers")
        report["in_process"] = ref
        print("vLLM alone ...", file=sys.stderr)
        report["vllm_alone"] = vllm_alone(venv, repos["vllm"], Path(tmp) / "requests.npz", args.clients, Path(tmp) / "alone.json")
        for engine in ("hf", "vllm"):
            print(f"triton + {engine} ...", file=sys.stderr)
            report[f"triton_{engine}"] = through_triton(repos[engine], asked, args.max_tokens, args.clients,
                                                        {**milvus, **server_env,
                                                         **({"TUNA_VLLM_VENV": str(venv)} if engine == "vllm" else {})},
                                                        also)
    same = {}
    for row in ("vllm_alone", "triton_hf", "triton_vllm"):
        for n in args.clients:
            got = report[row].pop(f"answers_{n}")
            same[f"{row}_clients_{n}"] = f"{sum(a == b for a, b in zip(got, expected))}/{len(expected)}"
    report["answers_equal_in_process"] = same
    seq, top = f"clients_{min(args.clients)}", f"clients_{max(args.clients)}"
    report["ratios"] = {
        "p50_triton_vllm_over_vllm_alone": round(report["triton_vllm"][seq]["p50_ms"] / report["vllm_alone"][seq]["p50_ms"], 3),
        "p50_triton_vllm_over_triton_hf": round(report["triton_vllm"][seq]["p50_ms"] / report["triton_hf"][seq]["p50_ms"], 3),
        f"throughput_triton_vllm_over_triton_hf_at_{max(args.clients)}": round(
            report["triton_vllm"][top]["throughput_rps"] / report["triton_hf"][top]["throughput_rps"], 3),
        "goals": {"p50_triton_vllm_over_vllm_alone_max": 1.2, "throughput_over_triton_hf_min": 5.0},
    }
    report["machine"] = {"python": pyplatform.python_version(), "cores": os.cpu_count(),
                         "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"ratios": report["ratios"], "answers_equal_in_process": same}, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--alone":
        sys.exit(_alone_main(sys.argv[2], sys.argv[3], sys.argv[4], [int(x) for x in sys.argv[5:]]))
    sys.exit(main())
