"""The four steps of the served ensemble, as plain Python: what each Triton model runs, minus Triton.

The step and tensor names are those of TensorRT-LLM's former multimodal ensembles; the same ensemble serves a CPU
python-backend LLM here (transformers or vLLM) and TensorRT-LLM's PyTorch LLM API on GPUs (tuna.serve.trtllm_step):

- :class:`Preprocessor`: image bytes -> pixel values; the question -> prompt ids in the training
  template, with ``IMAGE_TOKEN_INDEX`` where the image goes; limits checked.
- :class:`Retrieval`: CLIP features -> one batched Milvus search per datastore -> tag encoder + tuner
  -> a *prompt table*: the image and tag embeddings, addressed from ``input_ids`` by virtual ids
  ``vocab_size + j`` (TensorRT-LLM's prompt-tuning convention), plus provenance (tags, scores, the
  tuner's weights, the datastore version).
- :class:`Generator`: the LM on ``input_ids`` + prompt table (word embeddings below ``vocab_size``,
  table rows above), greedy or sampled; new tokens only.
- :class:`Postprocessor`: new tokens -> text.

Every request-level problem raises :class:`~tuna.errors.InvalidRequest` naming the field (Triton
answers INVALID_ARGUMENT) or :class:`~tuna.errors.DatastoreUnavailable` naming the URI (UNAVAILABLE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuna.errors import CorruptSample, DatastoreUnavailable, InvalidRequest, TunaError

SERVING_FILE = "serving.json"   # written by `tuna export` next to each step's assets


def read_serving(folder: Path) -> dict[str, Any]:
    """The step settings `tuna export` wrote into ``folder``."""
    path = folder / SERVING_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TunaError(f"{path} is missing or unreadable ({err}); re-run `tuna export`") from None


def _text(raw: bytes | str, name: str, limit: int) -> str:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRequest(f"{name}: not UTF-8 text (byte {err.start}); send the question UTF-8 encoded") from None
    text = raw.strip()
    if not text:
        raise InvalidRequest(f"{name}: empty; send a question, e.g. 'What is in the image?'")
    if len(text) > limit:
        raise InvalidRequest(f"{name}: {len(text)} characters, over the {limit} limit (serve.max_text_chars)")
    return text


# ------------------------------------------------------------------------------------------ preprocessing

@dataclass(frozen=True)
class Preprocessed:
    input_ids: np.ndarray          # (L,) int32, IMAGE_TOKEN_INDEX where the image goes
    pixel_values: np.ndarray       # (3, S, S) float32
    request_output_len: int        # new tokens asked for (checked)
    end_id: int
    pad_id: int


class Preprocessor:
    """Tokenizer + image processor of a model folder (the model's processing), and the request limits of `tuna export`."""

    def __init__(self, folder: str | Path) -> None:
        from transformers.utils import logging as hf_logging

        from tuna.model.processing_tuna import TunaProcessor

        hf_logging.disable_progress_bar()
        self.folder = Path(folder)
        self.settings = read_serving(self.folder)
        self.processor = TunaProcessor.from_pretrained(self.folder)
        self.tokenizer = self.processor.tokenizer
        self.system: str = self.settings["system_prompt"]
        self.max_tokens: int = int(self.settings["max_tokens_limit"])
        self.max_image_bytes: int = int(self.settings["max_image_bytes"])
        self.max_text_chars: int = int(self.settings["max_text_chars"])

    def image(self, data: bytes) -> np.ndarray:
        """Encoded PNG/JPEG bytes -> (3, S, S) float32 pixel values."""
        from tuna.samples import decode_image

        if len(data) > self.max_image_bytes:
            raise InvalidRequest(f"image_bytes_input: {len(data)} bytes, over the {self.max_image_bytes} byte limit "
                                 f"(serve.max_image_bytes); send a smaller PNG/JPEG")
        try:
            img = decode_image(data, "image_bytes_input")
        except CorruptSample as err:
            raise InvalidRequest(f"image_bytes_input: {err.reason}; send PNG or JPEG bytes") from None
        return self.processor.pixel_values([img], return_tensors="np")[0].astype(np.float32)

    def __call__(self, text: bytes | str, image: bytes, max_tokens: int) -> Preprocessed:
        from tuna.model.processing_tuna import conversation_prompt_ids

        if not 1 <= int(max_tokens) <= self.max_tokens:
            raise InvalidRequest(f"max_tokens: {int(max_tokens)} is outside 1..{self.max_tokens} (serve.max_tokens_limit)")
        question = _text(text, "text_input", self.max_text_chars)
        pixels = self.image(image)
        ids = conversation_prompt_ids(self.tokenizer, self.system, [], question)
        return Preprocessed(np.asarray(ids, dtype=np.int32), pixels, int(max_tokens),
                            int(self.tokenizer.eos_token_id), int(self.tokenizer.pad_token_id))


# ------------------------------------------------------------------------------------------ retrieval

@dataclass(frozen=True)
class PromptTable:
    input_ids: np.ndarray          # (L',) int32: vocabulary ids, and vocab_size + j for row j of the table
    table: np.ndarray              # (n, hidden) float32: image tokens, then the weighted tag block
    vocab_size: int
    provenance: dict[str, Any] = field(default_factory=dict)


class Retrieval:
    """The trained model's prompt encoder (CLIP, connector, tag encoder, tuner, word embeddings: no LM layers,
    see :class:`~tuna.model.modeling_tuna.TunaPromptEncoder`) and the datastores.

    ``settings`` (from `tuna export`) names the recipe to rebuild the retrieval config from, the datastores
    a request may choose (with their versions) and the default one. The exported Milvus Lite folders live
    under ``folder/datastores/``; ``MILVUS_URI`` in the environment points every datastore at a Milvus server
    instead (``MILVUS_TOKEN`` = token).
    """

    def __init__(self, folder: str | Path, env: dict[str, str] | None = None) -> None:
        import os

        from transformers.utils import logging as hf_logging

        from tuna.model import TunaProcessor, TunaPromptEncoder
        from tuna.recipe import load_recipe

        hf_logging.disable_progress_bar()
        self.folder = Path(folder)
        self.settings = read_serving(self.folder)
        env = dict(os.environ if env is None else env)
        # run.data_dir is this folder: the datastores travel with the repository (datastores/<name>/milvus.db).
        overrides = [f"run.data_dir={self.folder}", *self.settings.get("overrides", [])]
        if env.get("MILVUS_URI"):
            overrides.append(f"index.uri={env['MILVUS_URI']}")
            overrides.append("index.token_env=MILVUS_TOKEN")
        self.cfg = load_recipe(self.folder / self.settings["recipe"], overrides)
        self.default = env.get("TUNA_DATASTORE_DEFAULT") or self.settings["default_datastore"]
        self.datastores: dict[str, dict[str, Any]] = self.settings["datastores"]
        if self.default not in self.datastores and self.settings["uses_tags"]:
            raise TunaError(f"default datastore {self.default!r} is not one of the exported datastores "
                            f"{sorted(self.datastores)}; set TUNA_DATASTORE_DEFAULT or serve.datastore")
        self.processor = TunaProcessor.from_pretrained(self.folder / "model", images=False)
        self.model = TunaPromptEncoder.from_pretrained(self.folder / "model")
        self.uses_tags = self.processor.use_tags
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.model_info = self.settings["model"]
        self._retriever: Any = None
        self._tag_features: dict[str, torch.Tensor] = {}   # CLIP text feature per tag (the text tower is frozen)

    def _retrieve(self, name: str, vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        from tuna.retrieval.datastore import Retriever

        if self._retriever is None:
            self._retriever = Retriever(self.cfg)
        try:
            hits = self._retriever.retrieve_tags(name, vectors, self.processor.k)
        except DatastoreUnavailable:
            self.close()  # reconnect on the next request: Milvus may be back by then
            raise
        return [[(v, float(s)) for v, s in h] for h in hits]

    def datastore_of(self, requested: str | bytes | None) -> str:
        """The datastore a request uses: its own choice (checked) or the default."""
        if isinstance(requested, bytes):
            try:
                requested = requested.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("datastore: not UTF-8 text; send a datastore name such as 'A' or 'B'") from None
        name = (requested or "").strip()
        if not self.uses_tags:   # the baseline (LLaVA) retrieves nothing
            if name:
                raise InvalidRequest(f"datastore: model variant {self.model_info.get('variant')!r} retrieves no tags; "
                                     f"omit datastore or serve a TUNA variant")
            return ""
        name = name or self.default
        if name not in self.datastores:
            raise InvalidRequest(f"datastore: unknown datastore {name!r}; this server has {', '.join(sorted(self.datastores))}")
        return name

    @torch.inference_mode()
    def __call__(self, input_ids: Sequence[np.ndarray], pixel_values: Sequence[np.ndarray],
                 datastores: Sequence[str]) -> list[PromptTable]:
        """One prompt table per request (``datastores`` already checked with :meth:`datastore_of`)."""
        from tuna.model.configuration_tuna import IMAGE_TOKEN_INDEX

        n = len(input_ids)
        for i, ids in enumerate(input_ids):
            if ids.ndim != 1 or int((ids == IMAGE_TOKEN_INDEX).sum()) != 1:
                raise InvalidRequest(f"input_ids of request {i}: need one row holding exactly one image token "
                                     f"({IMAGE_TOKEN_INDEX}); send requests through the `tuna` ensemble")
        pixels = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in pixel_values]))
        grid = self.cfg.model.region_grid if self.uses_tags else 0
        views = None
        if grid:   # the cells of each image too, as training retrieved (tuna.retrieval.regions): in the same vision pass
            from tuna.retrieval.regions import region_pixels

            views = region_pixels(pixels, grid)
        patches, image_features, cells = self.model.encode_image_and_views(pixels, views)
        encoded = (patches, image_features)   # reused by the merge below
        tags: list[list[tuple[str, float]]] = [[] for _ in range(n)]
        if self.uses_tags:
            vectors = torch.nn.functional.normalize(image_features.float(), dim=-1).numpy()
            if cells is not None:
                cells = torch.nn.functional.normalize(cells.float(), dim=-1).numpy().reshape(n, grid * grid, -1)
                vectors = np.concatenate([vectors[:, None], cells], axis=1)
            for name in dict.fromkeys(datastores):
                rows = [i for i in range(n) if datastores[i] == name]
                for i, hit in zip(rows, self._retrieve(name, vectors[rows])):
                    tags[i] = hit
        length = max(len(ids) for ids in input_ids)
        ids_t, mask = self.processor.pad_right(input_ids)
        kwargs: dict[str, Any] = {}
        if self.uses_tags:
            names = [[t for t, _ in row] for row in tags]
            kwargs.update(self.processor.tag_tensors(names))
            kwargs["tag_features"] = self._features_of(names, kwargs.pop("tag_clip_input_ids"),
                                                       kwargs.pop("tag_clip_attention_mask"), kwargs["tag_mask"])
        merged = self.model.prepare_multimodal_inputs(ids_t, pixels, mask, None, image_outputs=encoded, **kwargs)
        inserted = merged.inputs_embeds.shape[1] - length + 1
        out = []
        for i in range(n):
            p = int((ids_t[i] == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
            source = torch.cat([ids_t[i, :p], torch.full((inserted,), -1, dtype=torch.long), ids_t[i, p + 1:]])
            keep = merged.attention_mask[i].bool()
            rows, embeds = source[keep], merged.inputs_embeds[i][keep]
            virtual = rows < 0
            table = embeds[virtual].float().numpy()
            rows = rows.clone()
            rows[virtual] = self.vocab_size + torch.arange(int(virtual.sum()))
            k = len(tags[i])
            weights = ([round(float(w), 6) for w in merged.tag_weights[i, :k]] if merged.tag_weights is not None else [])
            provenance = {
                "datastore": datastores[i] if self.uses_tags else None,
                "datastore_version": self.datastores.get(datastores[i], {}).get("version") if self.uses_tags else None,
                "tags": [t for t, _ in tags[i]], "scores": [round(s, 6) for _, s in tags[i]], "weights": weights,
                "model": self.model_info,
            }
            out.append(PromptTable(rows.numpy().astype(np.int32), table, self.vocab_size, provenance))
        return out

    def _features_of(self, names: list[list[str]], ids: torch.Tensor, mask: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
        """(B, k, Dt) CLIP text features of the requests' tags (zeros where absent): the text tower runs once per
        distinct tag the server has seen, not once per tag of every request. ids/mask/valid: from ``tag_tensors``."""
        b, k = valid.shape
        cells = [(i, j) for i, j in valid.nonzero().tolist()]
        new: dict[str, tuple[int, int]] = {}
        for i, j in cells:
            if names[i][j] not in self._tag_features:
                new.setdefault(names[i][j], (i, j))
        if new:
            if len(self._tag_features) + len(new) > 200_000:   # a captions datastore: bound the memory
                self._tag_features.clear()
            at = list(new.values())
            rows = self.model.encode_tag_texts(torch.stack([ids[i, j] for i, j in at])[None],
                                               torch.ones(1, len(at), dtype=torch.bool),
                                               torch.stack([mask[i, j] for i, j in at])[None])[0]
            self._tag_features.update(zip(new, rows))
        out = torch.zeros(b, k, self.model.config.clip_config.projection_dim, dtype=self.model.clip.dtype)
        for i, j in cells:
            out[i, j] = self._tag_features[names[i][j]]
        return out

    def close(self) -> None:
        if self._retriever is not None:
            self._retriever.close()
            self._retriever = None


# ------------------------------------------------------------------------------------------ generation

@dataclass(frozen=True)
class GenerationRequest:
    input_ids: np.ndarray          # (L,) int32 with virtual ids >= vocab_size
    table: np.ndarray              # (n, hidden)
    max_new_tokens: int
    end_id: int
    pad_id: int
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None


def prompt_embeddings(weight: torch.Tensor, input_ids: np.ndarray, table: np.ndarray) -> torch.Tensor:
    """(L, hidden) embeddings of the LLM step's inputs: rows of the word embedding matrix ``weight`` (vocab, hidden)
    for ids below the vocabulary size, rows of the prompt ``table`` for the virtual ids above (checked: one request's
    InvalidRequest). The HF step and the vLLM engine (:mod:`tuna.serve.vllm_engine`) both build their inputs here."""
    vocab, hidden = int(weight.shape[0]), int(weight.shape[1])
    ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
    table = np.asarray(table, dtype=np.float32)
    if table.size and (table.ndim != 2 or table.shape[1] != hidden):
        raise InvalidRequest(f"prompt_embedding_table: shape {list(table.shape)}, need (rows, {hidden}): the LM's hidden size")
    rows = torch.from_numpy(table) if table.size else torch.zeros((0, hidden))
    if ids.ndim != 1 or len(ids) == 0:
        raise InvalidRequest(f"input_ids: need a non-empty 1-D id list, got shape {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab + len(rows):
        raise InvalidRequest(f"input_ids: ids must be in 0..{vocab + len(rows) - 1} (vocabulary "
                             f"{vocab} + prompt table {len(rows)}), got {int(ids.min())}..{int(ids.max())}")
    virtual = ids >= vocab
    with torch.no_grad():
        out = torch.nn.functional.embedding(ids.masked_fill(virtual, 0), weight).clone()
        out[virtual] = rows[ids[virtual] - vocab].to(out.dtype)
    return out


class Generator:
    """The causal LM of the exported model on prompt-table inputs (the CPU stand-in for ``tensorrt_llm``)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self.folder = Path(folder)
        self.lm = AutoModelForCausalLM.from_pretrained(str(self.folder)).eval()
        self.embed = self.lm.get_input_embeddings()
        self.vocab_size = int(self.embed.weight.shape[0])
        self.hidden = int(self.embed.weight.shape[1])
        self.silent_ids: list[int] = list(read_serving(self.folder).get("silent_token_ids", []))

    def embeddings(self, req: GenerationRequest) -> torch.Tensor:
        """(L, hidden) prompt embeddings: word embeddings for ids < vocab_size, table rows above."""
        return prompt_embeddings(self.embed.weight, req.input_ids, req.table)

    @torch.inference_mode()
    def __call__(self, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
        """New token ids per request (end id excluded); greedy requests share one batched generate."""
        results: list[np.ndarray | None] = [None] * len(requests)
        greedy = [i for i, r in enumerate(requests) if r.temperature <= 0]
        groups = [greedy] if greedy else []
        groups += [[i] for i, r in enumerate(requests) if r.temperature > 0]   # sampled: alone, seeded
        for group in groups:
            embeds = [self.embeddings(requests[i]) for i in group]
            length = max(len(e) for e in embeds)
            x = torch.zeros((len(group), length, self.hidden), dtype=embeds[0].dtype)
            mask = torch.zeros((len(group), length), dtype=torch.long)
            for row, e in enumerate(embeds):                       # left padding, as generate expects
                x[row, length - len(e):] = e
                mask[row, length - len(e):] = 1
            first = requests[group[0]]
            # At least one real token: a served answer is never empty (no <s>/<unk>/padding, then the end token).
            gen: dict[str, Any] = {"max_new_tokens": max(requests[i].max_new_tokens for i in group), "min_new_tokens": 1,
                                   "pad_token_id": first.pad_id, "eos_token_id": first.end_id}
            if self.silent_ids:
                gen["suppress_tokens"] = self.silent_ids
            if first.temperature > 0:
                if first.seed is not None:
                    torch.manual_seed(int(first.seed))
                gen.update(do_sample=True, temperature=float(first.temperature), top_k=int(first.top_k) or None)
            else:
                gen.update(do_sample=False)
            out = self.lm.generate(inputs_embeds=x, attention_mask=mask, **gen)
            for row, i in enumerate(group):
                toks = out[row, : requests[i].max_new_tokens].tolist()
                if requests[i].end_id in toks:
                    toks = toks[: toks.index(requests[i].end_id)]
                results[i] = np.asarray(toks, dtype=np.int32)
        return [r if r is not None else np.zeros(0, np.int32) for r in results]


# ------------------------------------------------------------------------------------------ postprocessing

class Postprocessor:
    """New token ids -> answer text (special tokens dropped, whitespace trimmed)."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def __call__(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode([int(t) for t in np.asarray(ids).reshape(-1) if t >= 0],
                                     skip_special_tokens=True).strip()


__all__ = ["GenerationRequest", "Generator", "Postprocessor", "Preprocessed", "Preprocessor", "PromptTable",
           "Retrieval", "SERVING_FILE", "prompt_embeddings", "read_serving"]
