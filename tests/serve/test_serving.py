"""Serving: the exported repository, its steps in-process, and a real tritonserver answering over gRPC.

The smoke model is trained for real (the session's ``trained`` world); the server is the tritonserver
binary from the nvidia-pytriton wheel on 127.0.0.1 free ports, stopped by the test.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from support import SMOKE, World
from tuna.errors import ConfigError, InvalidRequest
from tuna.recipe import load_recipe
from tuna.serve import model_config
from tuna.serve.client import RequestRefused, TunaClient, build_inputs
from tuna.serve.export import ExportError, export_repository
from tuna.serve.server import TritonServer, free_port

pytestmark = pytest.mark.integration
QUIET = lambda s: None  # noqa: E731


def _image(world: World, split: str = "ood", n: int = 0) -> bytes:
    folder = world.cfg.data_dir / "world" / "eval" / "finer" / split / "images"
    return sorted(folder.glob("*.png"))[n].read_bytes()


@pytest.fixture(scope="module")
def exported(trained: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tuna"
    export_repository(trained.cfg, "tuna", out=out, trtllm=True, log=QUIET)
    return out


@pytest.fixture(scope="module")
def server(exported: Path):
    with TritonServer(exported / "model_repository").start(ready_timeout=180) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: TritonServer):
    c = TunaClient(server.grpc_url)
    yield c
    c.close()


# ------------------------------------------------------------------------------------------ export


def test_export_is_deterministic_and_every_config_parses_and_wires(trained: World, exported: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    export_repository(trained.cfg, "tuna", out=again, trtllm=True, log=QUIET)
    first = json.loads((exported / "export.json").read_text())
    second = json.loads((again / "export.json").read_text())
    assert first["files"] == second["files"] and len(first["files"]) > 20
    assert (exported / "export.json").read_bytes() == (again / "export.json").read_bytes()
    for repo in (exported / "model_repository", exported / "trtllm" / "model_repository"):
        parsed = {p.parent.name: model_config.parse(p.read_text()) for p in repo.glob("*/config.pbtxt")}
        assert set(parsed) == {"tuna", *model_config.STEPS}
        assert model_config.check_wiring(parsed) == []
        assert all(m.name == name for name, m in parsed.items())
        for name, m in parsed.items():
            assert m.max_batch_size == trained.cfg.serve.max_batch_size
            if name != "tuna":  # only the steps that batch real work wait to fill a batch (the GPU engine never waits)
                gpu_llm = name == "tensorrt_llm" and repo.parent.name == "trtllm"
                wait = trained.cfg.serve.queue_delay_us if name in ("retrieval", "tensorrt_llm") and not gpu_llm else 0
                assert m.dynamic_batching.max_queue_delay_microseconds == wait
    gpu_repo = exported / "trtllm" / "model_repository"
    gpu = model_config.parse((gpu_repo / "tensorrt_llm" / "config.pbtxt").read_text())
    cpu = model_config.parse((exported / "model_repository" / "tensorrt_llm" / "config.pbtxt").read_text())
    assert gpu.backend == cpu.backend == "python"   # TensorRT-LLM's llmapi layout: a python model driving tensorrt_llm.LLM
    # Same tensor names, dtypes and ranks on both: one ensemble contract; the GPU step reshapes its scalars to [].
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.input] == [(t.name, t.data_type, list(t.dims)) for t in cpu.input]
    for name in ("tuna", "preprocessing", "retrieval", "postprocessing"):
        assert (gpu_repo / name / "config.pbtxt").read_text() == (exported / "model_repository" / name / "config.pbtxt").read_text()
    assert "TrtllmLLMModel as TritonPythonModel" in (gpu_repo / "tensorrt_llm" / "1" / "model.py").read_text()
    # the serving-trtllm image's steps venv (TUNA_STEPS_PATH: transformers 5 over NGC's) reaches only tuna's python
    # steps; the tensorrt_llm step keeps TensorRT-LLM's own packages
    assert 'os.environ.get("TUNA_STEPS_PATH"' not in (gpu_repo / "tensorrt_llm" / "1" / "model.py").read_text()
    for name in ("preprocessing", "retrieval", "postprocessing"):
        assert 'os.environ.get("TUNA_STEPS_PATH"' in (gpu_repo / name / "1" / "model.py").read_text(), name
    engine = yaml.safe_load((gpu_repo / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert engine["backend"] == "pytorch" and engine["model"] == "assets" and engine["dtype"] == "bfloat16"
    assert engine["triton_config"] == {"max_batch_size": trained.cfg.serve.max_batch_size, "decoupled": False}
    lm = json.loads((gpu_repo / "tensorrt_llm" / "1" / "assets" / "config.json").read_text())
    assert lm["architectures"] == ["TunaLlamaForCausalLM"] and lm["model_type"] == "llama"
    assert not list(exported.rglob("build.sh")) and not (exported / "trtllm" / "hf_lm").exists()   # no engine build kit
    manifest = json.loads((exported / "export.json").read_text())["trtllm"]
    assert manifest["repository"] == "trtllm/model_repository" and manifest["dtype"] == "bfloat16"
    from tuna.serve.server import ServerError

    with pytest.raises(ServerError, match=r"runs TensorRT-LLM on GPUs .*serve the CPU model_repository here"):
        TritonServer(gpu_repo).start(5)   # the local CPU server refuses the GPU twin in one line


def test_a_vllm_export_keeps_the_contract_and_runs_the_llm_step_in_the_vllm_venv(trained: World, exported: Path,
                                                                                  tmp_path: Path) -> None:
    """serve.engine=vllm: the same ensemble and tensor names; the LLM step is VllmLLMModel in one instance whose stub
    Triton starts through an execution environment that only activates $TUNA_VLLM_VENV (no export-machine path)."""
    import tarfile

    from tuna.serve.server import ServerError

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained.cfg.data_dir}", "serve.engine=vllm"])
    for name in ("a", "b"):
        export_repository(cfg, "tuna", out=tmp_path / name, log=QUIET)
    assert (tmp_path / "a" / "export.json").read_bytes() == (tmp_path / "b" / "export.json").read_bytes()
    assert json.loads((tmp_path / "a" / "export.json").read_text())["engine"] == "vllm"
    repo, hf = tmp_path / "a" / "model_repository", exported / "model_repository"
    parsed = {p.parent.name: model_config.parse(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    assert model_config.check_wiring(parsed) == []
    for name in ("tuna", "preprocessing", "retrieval", "postprocessing"):   # the gRPC contract is unchanged
        assert (repo / name / "config.pbtxt").read_text() == (hf / name / "config.pbtxt").read_text()
    llm, hf_llm = parsed["tensorrt_llm"], model_config.parse((hf / "tensorrt_llm" / "config.pbtxt").read_text())
    assert [(t.name, t.data_type, list(t.dims)) for t in llm.input] == [(t.name, t.data_type, list(t.dims)) for t in hf_llm.input]
    assert llm.parameters["EXECUTION_ENV_PATH"].string_value == "$$TRITON_MODEL_DIRECTORY/vllm_env.tar.gz"
    assert llm.instance_group[0].count == 1 and llm.backend == "python"
    assert {t.name for t in llm.input if t.allow_ragged_batch} == {"input_ids", "prompt_embedding_table"}
    ragged = {name: {t.name for t in parsed[name].input if t.allow_ragged_batch} for name in ("retrieval", "postprocessing")}
    assert ragged == {"retrieval": {"INPUT_ID"}, "postprocessing": {"TOKENS_BATCH"}}   # prompts / answers of any length batch
    assert "VllmLLMModel as TritonPythonModel" in (repo / "tensorrt_llm" / "1" / "model.py").read_text()
    assert "LLMModel as TritonPythonModel" in (hf / "tensorrt_llm" / "1" / "model.py").read_text()
    with tarfile.open(repo / "tensorrt_llm" / "vllm_env.tar.gz") as tar:
        assert tar.getnames() == ["bin", "bin/activate"]
        activate = tar.extractfile("bin/activate").read().decode()
    assert "TUNA_VLLM_VENV" in activate and "unset PYTHONPATH" in activate and str(trained.cfg.data_dir) not in activate
    assert subprocess.run(["bash", "-n"], input=activate, text=True).returncode == 0
    engine = json.loads((repo / "tensorrt_llm" / "1" / "assets" / "serving.json").read_text())["engine"]
    assert engine["name"] == "vllm" and engine["max_model_len"] == cfg.serve.vllm_max_model_len
    assert engine["engine_process"] is True   # serve.vllm_engine_process: vLLM's engine core in its own process
    with pytest.raises(ServerError, match="serve.engine=vllm.*TUNA_VLLM_VENV=.*make vllm-env"):
        TritonServer(repo, env={"TUNA_VLLM_VENV": str(tmp_path / "no-venv")}).start(30)


def test_export_refuses_missing_model_and_datastore(trained: World, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="tuna train --variant random"):
        export_repository(trained.cfg, "random", out=tmp_path / "x", log=QUIET)
    with pytest.raises(ConfigError, match="serve.datastore: 'nope' is not declared; declared: A, B, A_captions"):
        load_recipe(SMOKE, [f"run.data_dir={trained.cfg.data_dir}", "serve.datastore=nope"])
    cfg = load_recipe(SMOKE, [f"run.data_dir={trained.cfg.data_dir}", f"data.corpora.shop.path={tmp_path}",
                              "datastores.shop.corpus=shop", "serve.datastore=shop"])
    with pytest.raises(ExportError, match="datastore 'shop' is not built under .*; run `tuna index"):
        export_repository(cfg, "tuna", out=tmp_path / "y", log=QUIET)


# ------------------------------------------------------------------------------------------ steps in-process


def test_steps_in_process_match_the_predictor_batched_or_alone(trained: World, exported: Path) -> None:
    from tuna.inference import Predictor
    from tuna.serve.ensemble import GenerationRequest, Generator, Postprocessor, Preprocessor, Retrieval

    repo = exported / "model_repository"
    pre = Preprocessor(repo / "preprocessing" / "1" / "assets")
    ret = Retrieval(repo / "retrieval" / "1" / "assets")
    gen = Generator(repo / "tensorrt_llm" / "1" / "assets")
    post = Postprocessor(repo / "postprocessing" / "1" / "assets")
    try:
        images = [_image(trained, "ood", i) for i in range(3)]
        questions = ["What is in the image?", "What kind of object is this?", "Is there a red object in the image?"]
        p = [pre(q, img, 8) for q, img in zip(questions, images)]
        tables = ret([x.input_ids for x in p], [x.pixel_values for x in p], ["A", "B", "A"])
        reqs = [GenerationRequest(t.input_ids, t.table, 8, x.end_id, x.pad_id) for x, t in zip(p, tables)]
        batched = [post(ids) for ids in gen(reqs)]
        alone = [post(gen([r])[0]) for r in reqs]
        predictor = Predictor(trained.cfg.data_dir / "train" / "tuna" / "stage2" / "model", trained.cfg.train.system_prompt)
        pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        expected = predictor.answer(pics, [[]] * 3, questions, [t.provenance["tags"] for t in tables], max_new_tokens=8,
                                     min_new_tokens=1)
        assert batched == alone == [a.text for a in expected] and all(batched)
        for t, a in zip(tables, expected):
            assert np.allclose(t.provenance["weights"], a.tag_weights, atol=1e-3)
            assert len(t.provenance["tags"]) == trained.cfg.model.num_tags
            assert abs(sum(t.provenance["weights"]) - 1) < 1e-3
            assert t.input_ids.max() == t.vocab_size + len(t.table) - 1
        assert [t.provenance["datastore"] for t in tables] == ["A", "B", "A"]
        assert tables[0].provenance["datastore_version"] != tables[1].provenance["datastore_version"]
        # A request's retrieval does not depend on what else is in the batch.
        one = ret([p[1].input_ids], [p[1].pixel_values], ["B"])[0]
        assert np.allclose(one.table, tables[1].table, atol=1e-5) and (one.input_ids == tables[1].input_ids).all()
        # The tags' CLIP text features come from the step's cache (one entry per distinct tag): as a cold step's.
        assert set(ret._tag_features) == {tag for t in tables for tag in t.provenance["tags"]}
        ret._tag_features.clear()
        cold = ret([p[1].input_ids], [p[1].pixel_values], ["B"])[0]
        assert np.allclose(cold.table, one.table, atol=1e-6) and cold.provenance == one.provenance
    finally:
        ret.close()


def test_preprocessing_refuses_bad_requests_naming_the_field(exported: Path, trained: World) -> None:
    from tuna.serve.ensemble import Preprocessor

    pre = Preprocessor(exported / "model_repository" / "preprocessing" / "1" / "assets")
    img = _image(trained)
    cases = [
        (("What?", b"not an image", 8), "image_bytes_input: image does not decode"),
        (("What?", img[: len(img) // 2], 8), "image_bytes_input"),
        (("What?", b"", 8), "image_bytes_input: no image bytes"),
        (("What?", b"\x89PNG" + b"\0" * (trained.cfg.serve.max_image_bytes + 1), 8), "over the 16777216 byte limit"),
        (("   ", img, 8), "text_input: empty"),
        ((b"\xff\xfe caf\xe9", img, 8), "text_input: not UTF-8"),
        (("x" * 5000, img, 8), "text_input: 5000 characters"),
        (("What?", img, 0), "max_tokens: 0 is outside 1..256"),
        (("What?", img, 10**6), "max_tokens: 1000000 is outside"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidRequest, match=message.replace("?", r"\?")):
            pre(*args)


# ------------------------------------------------------------------------------------------ the real server


def test_served_answers_carry_provenance_and_swap_datastore_per_request(client: TunaClient, trained: World) -> None:
    img = _image(trained)
    default = client.ask(img, "What is in the image?", max_tokens=8)
    assert default.text.strip()
    prov = default.provenance
    assert prov["datastore"] == "A" and len(prov["tags"]) == len(prov["weights"]) == trained.cfg.model.num_tags
    assert abs(sum(prov["weights"]) - 1) < 1e-3 and all(w >= 0 for w in prov["weights"])
    assert prov["model"]["variant"] == "tuna" and prov["model"]["name"] == trained.cfg.track.registered_model
    swapped = client.ask(img, "What is in the image?", max_tokens=8, datastore="B")
    assert swapped.provenance["datastore"] == "B"
    assert swapped.provenance["datastore_version"] != prov["datastore_version"]
    assert swapped.provenance["tags"] != prov["tags"]
    again = client.ask(img, "What is in the image?", max_tokens=8)
    assert again == default  # greedy and the same datastore: the same answer
    sampled = [client.ask(img, "What is in the image?", max_tokens=8, temperature=1.0, top_k=5, seed=7).text for _ in range(2)]
    assert sampled[0] == sampled[1]  # the seed makes sampling repeatable


def test_concurrent_requests_are_batched_and_all_answered(client: TunaClient, server: TritonServer, trained: World) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import serve_engines  # bench/serve_engines.py: the per-process CPU table it records

    img = _image(trained, "id", 1)
    expected = client.ask(img, "What is in the image?", max_tokens=6).text
    clients = [TunaClient(server.grpc_url) for _ in range(6)]
    labels = serve_engines.process_tree([server.process.pid])
    before = {p: serve_engines._cpu_seconds(p) for p in labels}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: clients[i % 6].ask(img, "What is in the image?", max_tokens=6).text, range(18)))
    cpu = serve_engines.cpu_per_request(before, {p: serve_engines._cpu_seconds(p) for p in labels}, labels, 18)
    for step in ("retrieval", "tensorrt_llm"):   # each stub named by its step; the busy ones used CPU
        assert any(k.startswith("triton_python_b") and f" {step} (" in k for k in cpu), (step, cpu)
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=0.1)
    for c in clients:
        c.close()
    assert answers == [expected] * 18
    stats = client.step_statistics()   # what bench/serve_engines.py records: where a request's time went, per step
    assert {"tuna", "preprocessing", "retrieval", "tensorrt_llm", "postprocessing"} <= set(stats)
    for step in ("preprocessing", "retrieval", "tensorrt_llm", "postprocessing"):
        s = stats[step]
        assert s["requests"] >= 19 and 1 <= s["executions"] <= s["requests"] and s["compute_infer_ms"] > 0, (step, s)
        assert s["mean_batch"] == round(s["requests"] / s["executions"], 2)
        assert sum(s["batch_sizes"].values()) == s["executions"], (step, s)   # executions per batch size
        assert sum(size * n for size, n in s["batch_sizes"].items()) == s["requests"], (step, s)


def _malformed(img: bytes) -> list[tuple[str, list]]:
    """(what, inputs) pairs that must each come back INVALID_ARGUMENT."""
    import tritonclient.grpc as grpc

    def raw(name: str, value, dtype: str, shape=(1, 1)):
        t = grpc.InferInput(name, list(shape), dtype)
        t.set_data_from_numpy(np.asarray(value).reshape(shape))
        return t

    ok = build_inputs(img, "What?", 4)
    return [
        ("not an image", build_inputs(b"GIF89a-not-really", "What?", 4)),
        ("truncated png", build_inputs(img[:40], "What?", 4)),
        ("empty text", build_inputs(img, "", 4)),
        ("non-utf8 text", [raw("text_input", np.array([[b"\xff\xfe\xfd"]], dtype=object), "BYTES"), ok[1], ok[2]]),
        ("max_tokens 0", build_inputs(img, "What?", 0)),
        ("max_tokens negative", build_inputs(img, "What?", -5)),
        ("max_tokens huge", build_inputs(img, "What?", 2**31 - 1)),
        ("unknown datastore", build_inputs(img, "What?", 4, datastore="nope")),
        ("wrong dtype", [raw("text_input", np.array([[7]], np.int32), "INT32"), ok[1], ok[2]]),
        ("wrong shape", [ok[0], ok[1], raw("max_tokens", np.array([[4, 4]], np.int32), "INT32", (1, 2))]),
        ("missing input", [ok[0], ok[2]]),
        ("bad temperature", build_inputs(img, "What?", 4, temperature=-1.0)),
        ("two rows in one request", [raw("text_input", np.array([[b"a"], [b"b"]], dtype=object), "BYTES", (2, 1)),
                                     raw("image_bytes_input", np.array([[img], [img]], dtype=object), "BYTES", (2, 1)),
                                     raw("max_tokens", np.array([[4], [4]], np.int32), "INT32", (2, 1))]),
    ]


def test_a_thousand_malformed_requests_are_refused_and_the_server_keeps_serving(client: TunaClient, trained: World) -> None:
    img = _image(trained)
    cases = _malformed(img)
    statuses: dict[str, set[str]] = {}
    for i in range(1000):
        what, inputs = cases[i % len(cases)]
        with pytest.raises(RequestRefused) as err:
            client.infer(inputs)
        statuses.setdefault(what, set()).add(err.value.status)
        if i < len(cases):  # each message names the field it is about
            field = {"not an image": "image_bytes_input", "truncated png": "image_bytes_input", "empty text": "text_input",
                     "non-utf8 text": "text_input", "unknown datastore": "datastore", "wrong dtype": "text_input",
                     "wrong shape": "max_tokens", "missing input": "image_bytes_input", "bad temperature": "temperature",
                     "two rows in one request": ""}.get(what, "max_tokens")
            assert field in err.value.message, (what, err.value.message)
    assert statuses == {what: {"INVALID_ARGUMENT"} for what, _ in cases}
    assert client.ask(img, "What is in the image?", max_tokens=4).text.strip()


def test_a_50_mb_image_is_refused_not_crashing(client: TunaClient, trained: World) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(50 * 1024 * 1024)
    with pytest.raises(RequestRefused) as err:
        client.ask(big, "What is in the image?", max_tokens=4)
    assert err.value.status == "INVALID_ARGUMENT" and "image_bytes_input" in err.value.message
    assert client.ask(_image(trained), "What?", max_tokens=4).text.strip()


def test_milvus_down_is_unavailable_naming_the_uri_and_recovers(exported: Path, trained: World, tmp_path: Path) -> None:
    """Datastore A served by a real Milvus gRPC server (milvus-lite server); stopped, then started again."""
    data = tmp_path / "milvus"
    shutil.copytree(trained.cfg.data_dir / "datastores" / "A" / "milvus.db", data)
    port = free_port()
    exe = Path(sys.executable).parent / "milvus-lite"

    def start_milvus() -> subprocess.Popen:
        proc = subprocess.Popen([str(exe), "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=open(tmp_path / "milvus.log", "a"), stderr=subprocess.STDOUT)
        import socket
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc
            time.sleep(0.1)
        proc.kill()
        raise AssertionError("milvus-lite server did not start")

    milvus = start_milvus()
    uri = f"http://127.0.0.1:{port}"
    img = _image(trained)
    try:
        with TritonServer(exported / "model_repository", env={"MILVUS_URI": uri}).start(180) as server:
            c = TunaClient(server.grpc_url)
            up = c.ask(img, "What is in the image?", max_tokens=4)
            assert up.provenance["datastore"] == "A" and len(up.provenance["tags"]) == trained.cfg.model.num_tags
            milvus.terminate()
            milvus.wait(10)
            with pytest.raises(RequestRefused) as err:
                c.ask(img, "What is in the image?", max_tokens=4)
            assert err.value.status == "UNAVAILABLE" and uri in err.value.message
            milvus = start_milvus()
            deadline = time.monotonic() + 60   # the next requests reconnect (gRPC's reconnect backoff: seconds)
            while True:
                try:
                    back = c.ask(img, "What is in the image?", max_tokens=4)
                    break
                except RequestRefused as again:
                    assert again.status == "UNAVAILABLE" and time.monotonic() < deadline, again
                    time.sleep(1)
            assert back.provenance["tags"] == up.provenance["tags"] and back.text == up.text
            c.close()
    finally:
        milvus.terminate()
        milvus.wait(10)


def test_a_moved_repository_serves_the_same_answers_and_names_no_export_path(client: TunaClient, trained: World,
                                                                            tmp_path: Path) -> None:
    """The repository is self-contained: exported (with its TensorRT-LLM twin), moved to another folder, served from
    there; no file of either names a path of the export machine (the run's data_dir, where it was exported, the
    source tree)."""
    first = tmp_path / "export" / "tuna"
    export_repository(trained.cfg, "tuna", out=first, trtllm=True, log=QUIET)
    moved = tmp_path / "elsewhere" / "tuna"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    assert not first.exists()
    machine = [str(trained.cfg.data_dir), str(trained.cfg.data_dir.resolve()), str(first), str(Path(__file__).resolve().parents[2])]
    assert (moved / "trtllm" / "model_repository" / "tensorrt_llm" / "1" / "model.yaml").is_file()
    for f in (p for p in moved.rglob("*") if p.is_file()):
        data = f.read_bytes()
        assert not any(m.encode() in data for m in machine), f"{f.relative_to(moved)} names a path of the export machine"
    ret = moved / "model_repository" / "retrieval" / "1" / "assets"
    assert sorted(p.name for p in (ret / "datastores").iterdir()) == ["A", "B"]
    assert not (ret / "model" / "model.safetensors").exists()   # the prompt encoder, not the whole model
    img = _image(trained, "ood", 2)
    with TritonServer(moved / "model_repository").start(180) as server:
        there = TunaClient(server.grpc_url)
        for datastore in ("A", "B"):
            got = there.ask(img, "What is in the image?", max_tokens=8, datastore=datastore)
            assert got == client.ask(img, "What is in the image?", max_tokens=8, datastore=datastore)
        there.close()


def test_server_stops_cleanly_on_sigterm(exported: Path) -> None:
    s = TritonServer(exported / "model_repository").start(180)
    assert s.ready()
    assert s.stop() == 0 and not s.ready()


def test_tuna_ask_prints_answer_and_provenance_and_fails_in_one_line(server: TritonServer, trained: World,
                                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuna.cli import main

    image = tmp_path / "q.png"
    image.write_bytes(_image(trained))
    base = ["ask", "What is in the image?", "--image", str(image), "--config", str(SMOKE)]
    assert main([*base, "--url", server.grpc_url, "--datastore", "B", "--max-tokens", "4", f"run.data_dir={trained.cfg.data_dir}"]) == 0
    out = capsys.readouterr().out
    assert "datastore B (version" in out and "tuner weight" in out and "tuna" in out
    assert main([*base, "--url", server.grpc_url, "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["answer"] and reply["provenance"]["datastore"] == "A"
    assert main([*base, "--url", server.grpc_url, "--datastore", "Z"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "INVALID_ARGUMENT" in err and "unknown datastore 'Z'" in err
    dead = f"127.0.0.1:{free_port()}"
    assert main([*base, "--url", dead]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"no Triton server answers at {dead}" in err
    assert main(["ask", "Hi?", "--image", str(tmp_path / "missing.png"), "--config", str(SMOKE)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_served_retrieval_step_retrieves_regions_as_training_attached(trained: World, exported: Path,
                                                                          tmp_path: Path) -> None:
    """model.region_grid: the retrieval step cuts the cells from its preprocessed pixels and gets the same tags that
    attach_tags (training, eval) gets from the image files."""
    from tuna.retrieval.attach import retrieve_images
    from tuna.serve.ensemble import Preprocessor, Retrieval

    repo = exported / "model_repository"
    # a copy: a server of this module may hold the export's Milvus Lite files open (one process per file)
    assets = shutil.copytree(repo / "retrieval" / "1" / "assets", tmp_path / "retrieval")
    pre, ret = Preprocessor(repo / "preprocessing" / "1" / "assets"), Retrieval(assets)
    grid = ["model.region_grid=2"]   # 5 tag slots: 1 for the whole image, 1 per quadrant
    ret.cfg = load_recipe(ret.folder / ret.settings["recipe"], [f"run.data_dir={ret.folder}", *ret.settings.get("overrides", []), *grid])
    paths = []
    for n in range(4):
        paths.append(tmp_path / "questions" / f"q{n}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(_image(trained, "ood", n))
    p = [pre("What is in the image?", path.read_bytes(), 4) for path in paths]
    try:
        served = [t.provenance["tags"] for t in ret([x.input_ids for x in p], [x.pixel_values for x in p], ["A"] * 4)]
    finally:
        ret.close()
    cfg = load_recipe(SMOKE, [f"run.data_dir={trained.cfg.data_dir}", *grid])
    attached = retrieve_images(cfg, paths, "A")
    assert served == [[v for v, _ in attached[path.name]] for path in paths]
    assert all(len(tags) == 5 for tags in served)


def test_the_baseline_exports_and_answers_without_retrieval(trained: World, tmp_path: Path) -> None:
    from tuna.serve.ensemble import GenerationRequest, Generator, Preprocessor, Retrieval

    export_repository(trained.cfg, "baseline", out=tmp_path / "baseline", log=QUIET)
    repo = tmp_path / "baseline" / "model_repository"
    manifest = json.loads((tmp_path / "baseline" / "export.json").read_text())
    assert manifest["datastores"] == {} and manifest["default_datastore"] is None
    pre, ret = Preprocessor(repo / "preprocessing" / "1" / "assets"), Retrieval(repo / "retrieval" / "1" / "assets")
    p = pre("What is in the image?", _image(trained), 4)
    assert ret.datastore_of(None) == ""
    with pytest.raises(InvalidRequest, match="retrieves no tags"):
        ret.datastore_of("A")
    (t,) = ret([p.input_ids], [p.pixel_values], [""])
    assert t.provenance["tags"] == [] and t.provenance["datastore"] is None and t.provenance["model"]["variant"] == "baseline"
    out = Generator(repo / "tensorrt_llm" / "1" / "assets")([GenerationRequest(t.input_ids, t.table, 4, p.end_id, p.pad_id)])
    assert len(out[0]) >= 1
