"""CLIP features for retrieval and the tag encoder: load any CLIP by path or hub id, embed images and texts.

The datastore keys are this encoder's image embeddings and the tag encoder reads its text embeddings, so
everything downstream goes through :class:`ClipEncoder`, whichever checkpoint backs it: locally the tiny
``CLIPModel`` that :mod:`tuna.foundation.clip` trains on the web corpora (the run's ``encoder/`` folder), on a
cluster ``openai/clip-vit-large-patch14-336`` (``model.vision_tower``), loaded the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

from tuna.errors import TunaError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class EncoderUnavailable(TunaError, FileNotFoundError):
    """No loadable CLIP at the given path or hub id."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """Hide transformers' own progress bars (weight loading / writing) unless ``enabled``."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict (sorted names, dtypes, shapes, raw bytes): the "encoder hash".

    Independent of the file layout, so a checkpoint hashes the same however it was saved or loaded.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ClipEncoder:
    """A CLIP model with its tokenizer and image processor; embeddings are float32 and L2-normalised."""

    def __init__(self, model: CLIPModel, tokenizer: Any, processor: Any, path: str, encoder_hash: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.path = path
        self.encoder_hash = encoder_hash or weights_sha256(model)
        self.fingerprint = self.encoder_hash[:16]
        self.dim: int = int(model.config.projection_dim)
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)

    def __repr__(self) -> str:
        return f"ClipEncoder(path={self.path!r}, dim={self.dim}, fingerprint={self.fingerprint})"

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 256, region_grid: int = 0) -> np.ndarray:
        """(N, dim) float32 unit-norm image embeddings; images go through the saved processor. With ``region_grid``
        (see :mod:`tuna.retrieval.regions`): (N, 1 + grid², dim), the whole image then each cell."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cells = region_grid ** 2
        out = [np.zeros((0, 1 + cells, self.dim) if cells else (0, self.dim), np.float32)]
        for i in range(0, len(images), batch_size):
            pixels = self.processor(images=list(images[i:i + batch_size]), return_tensors="pt")["pixel_values"]
            whole = self.embed_pixels(pixels)
            if cells:
                from tuna.retrieval.regions import region_pixels

                parts = self.embed_pixels(region_pixels(pixels, region_grid)).reshape(len(whole), cells, self.dim)
                whole = np.concatenate([whole[:, None], parts], axis=1)
            out.append(whole)
        return np.concatenate(out).astype(np.float32, copy=False)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, dim) float32 unit-norm embeddings of preprocessed images (B, C, H, W)."""
        feats = self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)).pooler_output   # (B, dim)
        return F.normalize(feats.float(), dim=-1).numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, dim) float32 unit-norm text embeddings; texts longer than the text tower's positions are cut."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_text_tokens, return_tensors="pt")
            feats = self.model.get_text_features(input_ids=tok["input_ids"],
                                                 attention_mask=tok["attention_mask"]).pooler_output  # (B, dim)
            out.append(F.normalize(feats.float(), dim=-1).numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def load_encoder(path_or_id: str | Path) -> ClipEncoder:
    """Load a CLIP (model, tokenizer, image processor) from a folder or a Hugging Face hub id.

    Raises :class:`EncoderUnavailable` (one line, naming the source and the fix) when nothing loads.
    """
    src = str(path_or_id)
    local = Path(src).expanduser()
    fix = ("train one with `tuna encoder --config <recipe>` (it writes <run.data_dir>/encoder) "
           "or set model.vision_tower to a CLIP folder or hub id")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise EncoderUnavailable(f"encoder folder {src!r} holds no config.json (not a saved model); {fix}")
        where = str(local)
    elif local.exists():
        raise EncoderUnavailable(f"encoder path {src!r} is a file, not a model folder; {fix}")
    elif isinstance(path_or_id, Path) or src.startswith((".", "/", "~")) or not _HUB_ID.match(src):
        raise EncoderUnavailable(f"no CLIP encoder at {src!r} (no such folder); {fix}")
    else:
        where = src  # a hub id: from the local cache, or downloaded where the hub is reachable
    try:
        config = AutoConfig.from_pretrained(where)
        if config.model_type != "clip":
            raise EncoderUnavailable(f"{src!r} holds a {config.model_type!r} model, not CLIP; point model.vision_tower at a CLIP checkpoint")
        with _hf_progress(False):
            model = CLIPModel.from_pretrained(where)
        tokenizer = AutoTokenizer.from_pretrained(where)
        processor = AutoImageProcessor.from_pretrained(where)
    except EncoderUnavailable:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise EncoderUnavailable(f"cannot load CLIP encoder {src!r} ({_one_line(err)}); {fix}") from None
    return ClipEncoder(model, tokenizer, processor, path=src)
