"""Test helpers shared by the suite: repository paths, a word tokeniser and smoke-world generation."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.layout import layout
from tuna.recipe import Recipe, load_recipe
from tuna.world.generate import generate_world
from tuna.world.taxonomy import Taxonomy, load_taxonomies

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SMOKE = CONFIGS / "smoke.yaml"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
# vLLM's CPU attention takes head sizes 32, 64, 80, ... (not the smoke LM's 32 / 2 heads = 16): the vLLM tests train the
# same smoke world with one attention head (the `trained_head32` fixture).
HEAD32 = ("lm.heads=1", "lm.kv_heads=1")
# The smoke LM and stage 2 trained long enough (LM 40 epochs ~6 s, stage 2 a full epoch) to answer FINER questions in
# words ("There is a plotutroux, a small teal") instead of the smoke training's '::::::::' for every question.
FLUENT = ("lm.epochs=40", "train.stage2.max_steps=40")
# The serving image with the vLLM venv (Dockerfile target serving-vllm) the containers suite runs and the chart's cpu
# scenario names; `make test-containers` builds it under this name.
VLLM_SERVING_IMAGE = os.environ.get("TUNA_VLLM_SERVING_IMAGE", "ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm")

_WORD = re.compile(r"[a-z]+")


def words(text: str) -> set[str]:
    """The lower-case words of ``text`` (class names are single alphabetic words)."""
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class World:
    """A generated world on disk, with its config, manifest and taxonomies."""

    cfg: Recipe
    root: Path
    manifest: dict[str, Any]
    a: Taxonomy
    b: Taxonomy

    @property
    def ood_names(self) -> set[str]:
        return {c.name for c in self.a.ood_classes}

    @property
    def id_names(self) -> set[str]:
        return {c.name for c in self.a.id_classes}

    @property
    def a_names(self) -> set[str]:
        return {c.name for c in self.a.classes}

    @property
    def b_names(self) -> set[str]:
        return {c.name for c in self.b.classes}


def make_world(data_dir: Path, *overrides: str) -> World:
    """Generate the smoke world (plus ``overrides``) under ``data_dir`` and load what describes it."""
    cfg = load_recipe(SMOKE, [f"run.data_dir={data_dir}", *overrides])
    manifest = generate_world(cfg, progress=False, log=lambda s: None)
    root = layout(cfg).world
    assert json.loads((root / "manifest.json").read_text()) == manifest
    a, b = load_taxonomies((root / "taxonomy.json").read_text())
    return World(cfg=cfg, root=root, manifest=manifest, a=a, b=b)


# A word-level LM tokenizer over the words of the template tests (LLaVA's specials: <unk> <s> </s> <pad>).
TEMPLATE_WORDS = ["<unk>", "<s>", "</s>", "<pad>", "USER", ":", "ASSISTANT", "what", "is", "it", "?", "a", "zedul", "red",
                  "No", "2", "Yes", "how", "many", "\n", "chat"]


def word_tokenizer() -> Any:
    """A PreTrainedTokenizerFast over :data:`TEMPLATE_WORDS` (whitespace and punctuation split)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TEMPLATE_WORDS)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def llava_record(*turns: str, image: str = "x.png") -> Any:
    """A LlavaRecord of alternating human/gpt ``turns`` about ``image``."""
    from tuna.formats import LlavaRecord

    return LlavaRecord(id="1", image=Path(image), conversations=[
        {"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)])


def mentions(text: str, names: set[str]) -> set[str]:
    """The class ``names`` that ``text`` mentions, as a word or in plural ("zeduls", "plotutrouxes")."""
    from tuna.world.language import plural

    found = words(text)
    return {n for n in names if n in found or plural(n) in found}


# What the world generator damages on purpose -> the kind a step's quarantine records.
DAMAGE_KIND = {"truncated_image": "bad_image", "empty_caption": "empty_caption",
               "non_utf8_caption": "non_utf8_caption", "oversized_caption": "long_caption"}


def quiet(_: str) -> None:
    """A log callback that prints nothing."""


def make_prepared(data_dir: Path, *overrides: str) -> World:
    """The smoke world plus everything training reads: encoder, mined tags, datastores A/B/A_captions and the LM."""
    from tuna.foundation.clip import run_encoder
    from tuna.foundation.lm import run_lm
    from tuna.retrieval.datastore import DATASTORES, build_datastore
    from tuna.tags.io import mine_corpus
    from tuna.tags.miner import TagMiner

    w = make_world(data_dir, *overrides)
    run_encoder(w.cfg, force=True, progress=False, log=quiet)
    miner = TagMiner(w.cfg.mine)
    for domain in ("A", "B"):
        mine_corpus(w.cfg, domain, progress=False, miner=miner)
    for name in DATASTORES:
        build_datastore(w.cfg, name, rebuild=True, progress=False, log=quiet)
    run_lm(w.cfg, force=True, progress=False, log=quiet)
    return w


def finer_questions(world: World, per_split: int) -> list[tuple[bytes, str]]:
    """(image bytes, question) of the first ``per_split`` FINER records of the OOD and ID eval splits, asked in the
    world's phrasing (tuna.eval.finer.direct_prompt: which kind of <superordinate>)."""
    from tuna.eval.finer import direct_prompt

    out = []
    for split in ("ood", "id"):
        folder = world.cfg.data_dir / "world" / "eval" / "finer" / split
        rows = [json.loads(line) for line in (folder / "finer.jsonl").read_text().splitlines() if line.strip()]
        out += [((folder / "images" / r["image"]).read_bytes(), direct_prompt(r["basic-level-lbl"])) for r in rows[:per_split]]
    return out


def greedy_reference(world: World, repository: Path, asked: list[tuple[bytes, str]], max_tokens: int) -> tuple[list, list, list[str]]:
    """What a served repository must answer, computed in-process: (preprocessed requests, the retrieval step's tables
    with provenance, ``Predictor.answer``'s greedy texts given those tags). Run it before a server holds the repository's
    Milvus Lite folders."""
    import io

    from PIL import Image

    from tuna.inference import Predictor
    from tuna.serve.ensemble import Preprocessor, Retrieval

    pre = Preprocessor(repository / "preprocessing" / "1" / "assets")
    ret = Retrieval(repository / "retrieval" / "1" / "assets")
    try:
        prepped = [pre(q, img, max_tokens) for img, q in asked]
        tables = ret([p.input_ids for p in prepped], [p.pixel_values for p in prepped], ["A"] * len(prepped))
    finally:
        ret.close()
    predictor = Predictor(world.cfg.data_dir / "train" / "tuna" / "stage2" / "model", world.cfg.train.system_prompt)
    pics = [Image.open(io.BytesIO(img)).convert("RGB") for img, _ in asked]
    expected = [a.text for a in predictor.answer(pics, [[]] * len(asked), [q for _, q in asked],
                                                 [t.provenance["tags"] for t in tables], max_new_tokens=max_tokens, min_new_tokens=1)]
    return prepped, tables, expected


def wait_for_exit(name: str, seconds: float, why: str) -> tuple[str, str]:
    """Wait until container ``name`` exits (fails the test with ``why`` if it still runs after ``seconds``); returns
    (its exit code, its whole log: stdout + stderr)."""
    import subprocess
    import time

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)

    deadline = time.monotonic() + seconds
    while docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true":
        assert time.monotonic() < deadline, why
        time.sleep(2)
    logs = docker("logs", name)
    return docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip(), logs.stdout + logs.stderr


def wait_for_container(name: str, url: str, seconds: float) -> float:
    """Wait until the tritonserver container ``name`` answers ready at gRPC ``url``; fails the test with the container's
    log tail when it exits or is not ready in ``seconds``. Returns the seconds waited."""
    import subprocess
    import time

    import pytest

    from tuna.serve.client import TunaClient

    def logs() -> str:
        return subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True, timeout=60).stderr[-4000:]

    start, client = time.monotonic(), None
    try:
        while time.monotonic() - start < seconds:
            state = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True,
                                   timeout=60).stdout.strip()
            if state != "true":
                pytest.fail(f"the serving container {name} exited: {logs()}")
            client = client or TunaClient(url, timeout=60)
            if client.ready():
                return time.monotonic() - start
            time.sleep(2)
        pytest.fail(f"the serving container {name} was not ready in {seconds:.0f} s: {logs()}")
    finally:
        if client is not None:
            client.close()


def run_serving_container(image: str, repository: Path, prefix: str, *docker_args: str, server_args: tuple[str, ...] = ()) -> tuple[str, str]:
    """``docker run -d`` of a serving image as the chart runs it (read-only root, /tmp and shm writable, HOME=/tmp) with
    ``repository`` at /models, on the host network, tritonserver on 127.0.0.1 free ports; ``docker_args`` go before the
    image, ``server_args`` after tritonserver's. Returns (container name, gRPC URL); remove it with ``docker rm -f``."""
    import subprocess
    import uuid

    from tuna.serve.server import free_port

    name, (grpc, http, metrics) = f"{prefix}-{uuid.uuid4().hex[:8]}", (free_port(), free_port(), free_port())
    run = subprocess.run(["docker", "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,exec,size=2g",
                          "--shm-size", "1g", "-e", "HOME=/tmp", "-e", "PYTHONDONTWRITEBYTECODE=1", "-v", f"{repository}:/models",
                          *docker_args, image, "tritonserver", "--model-repository=/models", "--grpc-address=127.0.0.1",
                          f"--grpc-port={grpc}", "--http-address=127.0.0.1", f"--http-port={http}", "--metrics-address=127.0.0.1",
                          f"--metrics-port={metrics}", "--exit-timeout-secs=25", *server_args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return name, f"127.0.0.1:{grpc}"


@contextlib.contextmanager
def served_like_in_process(image: str, world: World, repository: Path, max_tokens: int, prefix: str, *docker_args: str,
                           server_args: tuple[str, ...] = ()) -> Iterator[tuple[str, list, list[str], list]]:
    """``repository`` (an hf export of ``world``'s model) served by ``image`` (:func:`run_serving_container`) while the
    block runs: yields (gRPC URL, 8 FINER questions, the in-process greedy answers, the in-process provenance)."""
    import subprocess

    asked = finer_questions(world, 4)
    _, tables, expected = greedy_reference(world, repository, asked, max_tokens)
    subprocess.run(["chmod", "-R", "a+rwX", str(repository.parent)], check=True)   # Milvus Lite locks its folder
    name, url = run_serving_container(image, repository, prefix, *docker_args, server_args=server_args)
    try:
        wait_for_container(name, url, 600)
        yield url, asked, expected, [t.provenance for t in tables]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


def ask_all(url: str, asked: list[tuple[bytes, str]], max_tokens: int) -> list:
    """Each (image, question) of ``asked`` over gRPC at ``url``, in order: the replies."""
    from tuna.serve.client import TunaClient

    client = TunaClient(url, timeout=180)
    try:
        return [client.ask(image, question, max_tokens=max_tokens) for image, question in asked]
    finally:
        client.close()


def check_like_in_process(served: list, expected: list[str], provenance: list[dict[str, Any]]) -> None:
    """Served replies carry the in-process greedy answers and the in-process retrieval's tags and weights (datastore A)."""
    import numpy as np

    assert [s.text for s in served] == expected and len(set(expected)) > 1, ([s.text for s in served], expected)
    for s, want in zip(served, provenance):
        assert s.provenance["datastore"] == "A" and s.provenance["tags"] == want["tags"]
        assert np.allclose(s.provenance["weights"], want["weights"], atol=1e-5)


def outputs(task_dir: Path) -> dict[str, Any]:
    """A kfp.local task's executor output: {"artifacts": {name: [artifact, ...]}, "parameters": {...}}."""
    data = json.loads((task_dir / "executor_output.json").read_text())
    return {"artifacts": {k: v["artifacts"] for k, v in data.get("artifacts", {}).items()},
            "parameters": data.get("parameterValues", {})}


def check_smoke_pipeline_run(out: dict[str, Any], tmp_path: Path) -> None:
    """What a whole kfp.local run of the smoke pipeline (data_dir ``tmp_path``) must have produced, whichever runner ran
    it: every task's artifacts and parameters, and the MLflow parent run with its nested runs."""
    from mlflow import MlflowClient

    from tuna import track

    run = Path(out["run_dir"])
    assert out["tasks"] == sorted(["validate", "world", "encoder", "mine-tags", "build-index", "build-index-2",
                                   "build-index-3", "lm", "start-run", "train", "train-2", "train-3", "train-4",
                                   "evaluate", "export-model-repository", "register-model", "deploy", "notify"])
    o = {task: outputs(run / task) for task in out["tasks"]}

    assert o["validate"]["parameters"]["overrides"] == [f"run.data_dir={tmp_path}"]
    (world,) = o["world"]["artifacts"]["dataset"]
    assert world["metadata"]["status"] == "generated" and world["metadata"]["uri"] == str(tmp_path / "world")
    assert json.loads(Path(world["uri"]).read_text())["counts"]["web_A"] == 300  # the manifest, in the artifact
    assert len(world["metadata"]["digests"]["instruction"]) == 64
    (enc,) = o["encoder"]["artifacts"]["model"]
    assert enc["metadata"]["status"] == "trained" and enc["metadata"]["dim"] == 32
    rows = {o[t]["artifacts"]["index"][0]["metadata"]["name"]: o[t]["artifacts"]["index"][0]["metadata"]["rows"]
            for t in ("build-index", "build-index-2", "build-index-3")}
    assert rows == {"A": 292, "B": 100, "A_captions": 292}
    trained = {(m["variant"], m["stage"]): m for t in ("train", "train-2", "train-3", "train-4")
               for m in [o[t]["artifacts"]["model"][0]["metadata"]]}
    assert set(trained) == {("tuna", 1), ("tuna", 2), ("baseline", 1), ("baseline", 2)}
    for m in trained.values():
        assert m["status"] == "trained" and m["steps"] == 6 and m["world_size"] == 2 and Path(m["uri"]).is_dir()
    metrics = o["evaluate"]["artifacts"]["metrics"][0]["metadata"]
    assert {"tuna_pope_id_f1", "baseline_pope_id_f1", "tuna_finer_ood_fine_em", "tuna_finer_b_B_fine_em"} <= set(metrics)
    report = o["evaluate"]["artifacts"]["report"][0]
    assert Path(report["uri"]).read_text().startswith("# TUNA evaluation report: smoke")
    (repo,) = o["export-model-repository"]["artifacts"]["repository"]
    assert (Path(repo["metadata"]["path"]) / "tuna" / "config.pbtxt").is_file()
    assert set(repo["metadata"]["datastores"]) == {"A", "B"}
    assert o["register-model"]["parameters"]["Output"] == "models:/tuna-smoke-serving@evaluated"
    assert o["deploy"]["parameters"]["Output"].startswith("gRPC answer ")
    assert o["notify"]["parameters"]["Output"].endswith(": SUCCEEDED")

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    client = MlflowClient(track.tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.track.experiment).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tuna.kind") == "pipeline"]
    assert parent.info.run_name == "smoke-kfp" and parent.info.status == "FINISHED"
    assert parent.data.metrics["data.world.counts.web_A"] == 300 and parent.data.metrics["data.index_B.rows"] == 100
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"train-tuna-stage1", "train-tuna-stage2", "train-baseline-stage1", "train-baseline-stage2",
                             "eval", "export-tuna", "register-tuna", "deploy"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert "tuna_finer_ood_fine_em" in children["eval"].data.metrics
    assert children["deploy"].data.metrics["grpc_latency_ms"] > 0
    assert track.latest_good("tuna-smoke-serving", alias="evaluated", cfg=cfg)[0] == "1"
