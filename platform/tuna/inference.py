"""Answer questions about images with a trained model folder: the code evaluation and serving share.

A :class:`Predictor` loads what `tuna train` saves (``model/``: weights, LM tokenizer, image
processor, ``clip_tokenizer/``), builds prompts and tag tensors with the model's processing
(:mod:`tuna.model.processing_tuna`: the template training used), and generates greedily (or samples) in
batches. Tags are given per image as ranked strings (from
:func:`tuna.retrieval.attach.attach_tags` offline, live retrieval when serving); a baseline model
(tag mode ``none``) ignores them. Outputs carry the tuner's weights per tag for provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tuna.errors import TunaError
from tuna.model.processing_tuna import TunaProcessor, conversation_prompt_ids, silent_token_ids


class ModelFolderError(TunaError, FileNotFoundError):
    """A model folder that `tuna train` did not write (or only partly)."""


@dataclass(frozen=True)
class Answer:
    text: str
    tags: list[str]
    tag_weights: list[float]  # the tuner's weight per tag (empty for the baseline)
    finished: bool = True     # False when generation stopped at max_new_tokens before the end token


class Predictor:
    """A trained TUNA (or baseline) model ready to answer; ``system`` is the template's system prompt."""

    def __init__(self, model_dir: str | Path, system: str, threads: int | None = None,
                 device: str | torch.device | None = None) -> None:
        from transformers.utils import logging as hf_logging

        from tuna.model import TunaForConditionalGeneration

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every load say nothing to a user

        folder = Path(model_dir)
        for need in ("config.json", "tokenizer.json", "preprocessor_config.json", "clip_tokenizer"):
            if not (folder / need).exists():
                raise ModelFolderError(f"{folder} lacks {need}: not a model folder written by `tuna train`; point at "
                                       f"data/<run>/train/<variant>/stage2/model")
        if threads:
            torch.set_num_threads(threads)
        # the accelerator when there is one (cuda:0 by default; pass device= for another), else the CPU
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = TunaForConditionalGeneration.from_pretrained(str(folder)).eval().to(self.device)
        self.processor = TunaProcessor.from_pretrained(folder)
        self.tokenizer = self.processor.tokenizer
        self.uses_tags = self.processor.use_tags
        self.num_tags = self.processor.k
        self.system = system
        self.path = str(folder)

    def silent_ids(self) -> list[int]:
        """Special token ids an answer never holds: ``<s>``, ``<unk>`` and padding (not the end token)."""
        return silent_token_ids(self.tokenizer)

    @torch.inference_mode()
    def answer(self, images: Sequence[Image.Image], conversations: Sequence[Sequence[tuple[str, str]]],
               questions: Sequence[str], tags: Sequence[Sequence[str]] | None = None, max_new_tokens: int = 24,
               temperature: float = 0.0, top_k: int = 0, seed: int | None = None,
               min_new_tokens: int = 0) -> list[Answer]:
        """One answer per image: ``questions[i]`` asked after the earlier turns ``conversations[i]``
        ([(question, answer), ...], empty for a first question), with ``tags[i]`` (ranked) attached.
        ``min_new_tokens`` > 0 keeps the end token away that long and never emits the other special tokens
        (``<s>``, ``<unk>``, padding): what serving does, so an answer is never empty."""
        n = len(images)
        if not (len(conversations) == len(questions) == n) or (tags is not None and len(tags) != n):
            raise ValueError(f"answer() needs one conversation, question and tag list per image; got {n} images, "
                             f"{len(conversations)} conversations, {len(questions)} questions, "
                             f"{'no' if tags is None else len(tags)} tag lists")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        rows = [conversation_prompt_ids(self.tokenizer, self.system, list(conv), q) for conv, q in zip(conversations, questions)]
        input_ids, attention_mask = (t.to(self.device) for t in self.processor.pad_left(rows))
        kwargs: dict[str, Any] = {"pixel_values": self.processor.pixel_values(images)}
        tag_lists = [list(t)[: self.num_tags] for t in tags] if tags is not None else [[] for _ in range(n)]
        if self.uses_tags:
            kwargs.update(self.processor.tag_tensors(tag_lists))
        kwargs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                               "eos_token_id": self.tokenizer.eos_token_id}
        if min_new_tokens > 0:
            gen.update(min_new_tokens=min_new_tokens, suppress_tokens=self.silent_ids())
        if temperature > 0:
            if seed is not None:
                torch.manual_seed(seed)
            gen.update(do_sample=True, temperature=temperature, top_k=top_k or None)
        else:
            gen.update(do_sample=False)
        # Merge image, tags and prompt once; generation continues from the merged embeddings (and the
        # tuner's weights of this very forward are the provenance).
        merged = self.model.prepare_multimodal_inputs(input_ids, kwargs.pop("pixel_values"), attention_mask, None, **kwargs)
        weights = merged.tag_weights
        out = self.model.generate(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask, **gen)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        answers = []
        for i, text in enumerate(texts):
            k = len(tag_lists[i]) if self.uses_tags else 0
            w = [round(float(x), 4) for x in weights[i, :k]] if weights is not None else []
            ended = bool((out[i] == self.tokenizer.eos_token_id).any()) or out.shape[1] < max_new_tokens
            answers.append(Answer(text.strip(), tag_lists[i] if self.uses_tags else [], w, ended))
        return answers


__all__ = ["Answer", "ModelFolderError", "Predictor"]
