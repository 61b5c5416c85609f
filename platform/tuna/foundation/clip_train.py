"""Contrastive pre-training of the tiny CLIP on web corpora: pairs, tokenizer, processor, model, loop.

The pieces :func:`tuna.foundation.clip.train_encoder` puts together. Everything here is pure
torch / transformers / tokenizers: no files are written and no tracking or datastore engine is touched.

- :func:`load_pairs` reads WebDataset shards, decodes every image once into a uint8 tensor and
  quarantines what does not decode (truncated images, empty / non-UTF-8 / oversized captions);
- :func:`build_tokenizer` trains a word-level tokenizer on the captions, wrapped as a
  ``PreTrainedTokenizerFast`` (round-trips through ``save_pretrained`` / ``AutoTokenizer``);
- :func:`build_processor` is the CLIP image processor (PIL backend) at the world's image size;
- :func:`build_model` is a Hugging Face ``CLIPModel`` (ViT image tower, causal text tower);
- :func:`train_clip` runs symmetric InfoNCE with a learnable temperature, AdamW, warmup + cosine,
  on flipped / quarter-turned / zoomed-in images (:func:`augment`);
- :func:`clean_captions` turns each alt-text into ``"a photo of a X, a Y and a Z."`` over the object
  nouns the tag miner (:mod:`tuna.tags.miner`, spaCy) finds in it: caption cleaning from the text
  alone (no labels), which ``train_clip`` swaps in for a share of the captions (``encoder.clean_captions``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTextConfig, CLIPVisionConfig, PreTrainedTokenizerFast

from tuna.errors import ConfigError, CorruptSample, DataFormatError
from tuna.formats import iter_web
from tuna.readers.web import shard_paths
from tuna.recipe import EncoderConfig, MineConfig
from tuna.samples import Quarantine, caption_text, decode_image
from tuna.schedule import warmup_cosine

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]  # ids 0..3; EOS must not be 2 (CLIP's legacy argmax pooling)
PROMPT_WORDS = "a photo of a ."          # zero-shot prompt words, always in the vocabulary
MAX_LOGIT_SCALE = math.log(100.0)       # CLIP clamps the learned temperature at 1/100


@dataclass
class Pairs:
    """Decoded image-caption pairs of one or more web corpora."""

    pixels: torch.Tensor                 # (N, 3, S, S) uint8, already resized/cropped as the processor does
    captions: list[str]
    total: int                           # samples read, kept or not
    quarantine: Quarantine
    corpus_sha256: str                   # hash of every shard file read, in order
    per_corpus: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> samples, kept, skipped


def _resize_like_processor(img: Image.Image, processor: CLIPImageProcessorPil) -> np.ndarray:
    """(3, S, S) uint8 of an off-size image: the processor's resize + centre crop, without rescale/normalise."""
    out = processor(images=[img], do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_pairs(folders: Mapping[str, Path], processor: CLIPImageProcessorPil, max_caption_chars: int,
               progress: bool = True) -> Pairs:
    """Every readable (image, caption) pair of the WebDataset shards in ``folders`` (name -> folder).

    Corrupt samples are skipped and recorded in the returned quarantine with source ``name/shard``.
    """
    size = processor.crop_size["height"], processor.crop_size["width"]
    arrays: list[np.ndarray] = []
    captions: list[str] = []
    quarantine = Quarantine()
    per_corpus: dict[str, dict[str, int]] = {}
    digest = hashlib.sha256()
    total = 0
    for name, folder in folders.items():
        folder = Path(folder)
        for shard in shard_paths(folder)[0]:
            digest.update(f"{name}/{shard.name}\0".encode())
            digest.update(hashlib.sha256(shard.read_bytes()).digest())
        n = kept = 0
        for sample in tqdm(iter_web(folder, quarantine.add), desc=f"read {name}", unit="pair", disable=not progress, leave=False):
            n += 1
            try:
                text = caption_text(sample, max_caption_chars)
                img = decode_image(sample.image, sample.key)
            except CorruptSample as err:
                quarantine.add(err, f"{name}/{sample.shard}")
                continue
            if (img.height, img.width) == size:
                arrays.append(np.asarray(img, np.uint8).transpose(2, 0, 1))
            else:
                arrays.append(_resize_like_processor(img, processor))
            captions.append(text)
            kept += 1
        per_corpus[name] = {"samples": n, "kept": kept, "skipped": n - kept}
        total += n
    if not captions:
        raise DataFormatError(f"no readable image-caption pair in {', '.join(str(f) for f in folders.values())} "
                              f"({len(quarantine)} quarantined); regenerate the world (tuna world --force)")
    pixels = torch.from_numpy(np.stack(arrays))
    return Pairs(pixels=pixels, captions=captions, total=total, quarantine=quarantine,
                 corpus_sha256=digest.hexdigest(), per_corpus=per_corpus)


def object_caption(objects: Sequence[str]) -> str | None:
    """``"a photo of a X, a Y and a Z."`` for the object nouns of one caption (None when there are none).

    The zero-shot prompt's own wording (``"a photo of a {name}."``), so a one-object caption is the prompt.
    """
    names = [o for o in dict.fromkeys(objects) if o]
    if not names:
        return None
    parts = [f"a {n}" for n in names]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {body}."


def mine_objects(captions: Sequence[str], mine: MineConfig) -> list[list[str]]:
    """The object nouns ``tuna mine`` extracts from each alt-text (spaCy tagger + the miner's phrase rules).

    Stock-photo filler, named entities and instance attributes (colour, size) are dropped. Uses the
    caption text only, as a web-scale pipeline could; no label of the world is read.
    """
    from tuna.tags.miner import TagMiner

    miner = TagMiner(mine)
    return [list(tags.objects) for tags in miner.mine(captions)]


def clean_captions(captions: Sequence[str], mine: MineConfig,
                   objects: Sequence[Sequence[str]] | None = None) -> list[str | None]:
    """Each alt-text cleaned down to its objects (:func:`object_caption` over :func:`mine_objects`), None where
    none is found. ``objects`` (one list per caption) skips the mining when it was done already."""
    return [object_caption(objs) for objs in (objects if objects is not None else mine_objects(captions, mine))]


OBJECT_MIN_COUNT = 5   # a mined noun enters the object loss's vocabulary when at least this many captions name it


@dataclass
class ObjectTargets:
    """Multi-hot targets of the object loss: which mined nouns each caption names (web supervision only)."""

    vocabulary: list[str]
    targets: torch.Tensor                # (N, V) float 0/1

    @classmethod
    def from_objects(cls, objects: Sequence[Sequence[str]], min_count: int = OBJECT_MIN_COUNT) -> ObjectTargets:
        counts: dict[str, int] = {}
        for objs in objects:
            for o in set(objs):
                counts[o] = counts.get(o, 0) + 1
        vocabulary = sorted(o for o, c in counts.items() if c >= min_count and o)
        index = {o: i for i, o in enumerate(vocabulary)}
        targets = torch.zeros(len(objects), len(vocabulary))
        for row, objs in enumerate(objects):
            for o in objs:
                if o in index:
                    targets[row, index[o]] = 1.0
        return cls(vocabulary, targets)


def object_loss(model: CLIPModel, head: torch.nn.Linear, out: object, targets: torch.Tensor, tokens: str) -> torch.Tensor:
    """Multi-label BCE (summed over the vocabulary, averaged over images) of a linear head on the vision tower.

    ``tokens``: ``cls`` reads the pooled CLS (post-LayerNorm); ``patches`` reads every last-layer patch token
    through the same LayerNorm and takes the max logit over patches (multiple-instance: some patch must show
    each named object); ``both`` adds the two. The head is dropped after training: the saved model is a plain
    ``CLIPModel``. Pushes the features the connector reads to carry every object the caption names.
    """
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    # CLIPModel.forward overwrites vision_model_output.pooler_output with the projected embedding: re-pool the CLS.
    tokens_out = model.vision_model.post_layernorm(out.vision_model_output.last_hidden_state)   # (B, 1 + P, Dv)
    loss = torch.zeros(())
    if tokens in ("cls", "both"):
        loss = loss + bce(head(tokens_out[:, 0]), targets, reduction="sum") / len(targets)
    if tokens in ("patches", "both"):
        loss = loss + bce(head(tokens_out[:, 1:]).amax(1), targets, reduction="sum") / len(targets)
    return loss


def build_tokenizer(captions: list[str], max_tokens: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the captions' words (lowercased, punctuation split off).

    Adds ``<|startoftext|>`` / ``<|endoftext|>`` around every text, pads with ``<pad>`` on the right.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False)
    tok.train_from_iterator([PROMPT_WORDS, *captions], trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   model_max_length=max_tokens, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"])


def build_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP preprocessing (bicubic shortest-edge resize, centre crop, OpenAI mean/std) at ``image_size``."""
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_model(enc: EncoderConfig, tokenizer: PreTrainedTokenizerFast, image_size: int) -> CLIPModel:
    """A freshly initialised ``CLIPModel`` sized by ``enc`` (call ``torch.manual_seed`` first)."""
    if image_size % enc.patch_size:
        raise ConfigError(f"encoder.patch_size: {enc.patch_size} does not divide world.image_size {image_size}; "
                          f"pick a divisor of {image_size}")
    vision = CLIPVisionConfig(hidden_size=enc.hidden_size, intermediate_size=enc.mlp_ratio * enc.hidden_size,
                              num_hidden_layers=enc.layers, num_attention_heads=enc.heads, image_size=image_size,
                              patch_size=enc.patch_size, projection_dim=enc.projection_dim)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=enc.text_hidden_size,
                          intermediate_size=enc.mlp_ratio * enc.text_hidden_size, num_hidden_layers=enc.text_layers,
                          num_attention_heads=enc.text_heads, max_position_embeddings=enc.max_text_tokens,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, projection_dim=enc.projection_dim)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=enc.projection_dim)
    model = CLIPModel(config)
    with torch.no_grad():  # a spatial prior for a ViT trained from scratch on little data; stays trainable
        model.vision_model.embeddings.position_embedding.weight.copy_(sincos_2d(image_size // enc.patch_size, enc.hidden_size))
    return model


def sincos_2d(grid: int, dim: int, scale: float = 0.5) -> torch.Tensor:
    """(1 + grid*grid, dim) 2-D sine-cosine position table (class token row zero), as MAE / MoCo v3 use.

    A spatial prior for a ViT trained from scratch on little data; it stays a trainable embedding.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (xs.reshape(-1), ys.reshape(-1)):
        angle = coord[:, None] * omega[None, :]                                # (grid*grid, quarter)
        parts += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(parts, dim=1)                                            # (grid*grid, 4*quarter)
    table = torch.cat([table, torch.zeros(grid * grid, dim - table.shape[1])], dim=1)
    return scale * torch.cat([torch.zeros(1, dim), table], dim=0)


def normalise(pixels: torch.Tensor, processor: CLIPImageProcessorPil) -> torch.Tensor:
    """(B, 3, S, S) uint8 (or float 0..255) -> pixel values, exactly as the processor rescales and normalises."""
    mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels.float() * float(processor.rescale_factor) - mean) / std


def augment(x: torch.Tensor, enc: EncoderConfig, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, quarter turns and zoom-in crops, as one batched affine resample.

    (B, 3, S, S) uint8 in, (B, 3, S, S) float in 0..255 out. A crop keeps a side of ``zoom``..1 of the
    image, placed anywhere inside it (``zoom`` 1 = no crop, no shift).
    """
    b = x.shape[0]
    one = torch.ones(b)
    scale = enc.zoom + (1 - enc.zoom) * torch.rand(b, generator=gen) if enc.zoom < 1 else one
    turns = torch.randint(0, 4, (b,), generator=gen) if enc.rotate else torch.zeros(b, dtype=torch.long)
    mirror = torch.where(torch.rand(b, generator=gen) < 0.5, -one, one) if enc.flip else one
    cos = torch.cos(turns * math.pi / 2).round()
    sin = torch.sin(turns * math.pi / 2).round()
    room = 1 - scale                                                        # the crop centre may move this far
    tx = room * (2 * torch.rand(b, generator=gen) - 1)
    ty = room * (2 * torch.rand(b, generator=gen) - 1)
    theta = torch.stack([torch.stack([scale * cos * mirror, -scale * sin, tx], 1),
                         torch.stack([scale * sin * mirror, scale * cos, ty], 1)], 1)    # (B, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def patch_infonce(model: CLIPModel, out: object, layer: int) -> torch.Tensor:
    """Symmetric InfoNCE between the mean of the patch tokens of vision hidden state ``layer`` (through the
    tower's post-LayerNorm and visual projection: the same joint space as the CLS embedding) and the texts.

    CLIP's own loss reaches only the last layer's CLS token; a probe found the class nearly absent from the
    patch tokens at layer -2 (what a LLaVA connector reads). Mean pooling is linear, so this makes each
    object's patches carry its identity additively (multi-object scenes included).
    """
    hidden = out.vision_model_output.hidden_states[layer][:, 1:]                    # (B, P, Dv)
    img = model.visual_projection(model.vision_model.post_layernorm(hidden.mean(1)))
    img = torch.nn.functional.normalize(img, dim=-1)
    logits = model.logit_scale.exp() * img @ out.text_embeds.t()                  # text_embeds: unit norm
    target = torch.arange(len(img))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.t(), target))


def _param_groups(model: CLIPModel, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip(model: CLIPModel, pairs: Pairs, tokenizer: PreTrainedTokenizerFast, processor: CLIPImageProcessorPil,
               enc: EncoderConfig, seed: int, progress: bool = True, log: Callable[[str], None] = print,
               on_epoch: Callable[[int], None] | None = None,
               cleaned: Sequence[str | None] | None = None,
               objects: ObjectTargets | None = None) -> dict[str, object]:
    """Train ``model`` in place on ``pairs``; returns the loss curve summary and step counts.

    ``on_epoch(epoch)`` runs after each epoch (model in eval mode), e.g. to log zero-shot accuracy.
    ``cleaned`` (one per pair, None = keep the alt-text, e.g. from :func:`clean_captions`) replaces each
    pair's caption with probability ``enc.clean_captions``, drawn afresh at every step.
    ``objects`` (required when ``enc.object_loss`` > 0) are the mined nouns' targets of :func:`object_loss`.
    """
    n = len(pairs.captions)
    head = None
    if enc.object_loss > 0:
        if objects is None or len(objects.targets) != n:
            raise ValueError(f"object targets: {None if objects is None else len(objects.targets)} for {n} pairs")
        head = torch.nn.Linear(model.config.vision_config.hidden_size, max(1, len(objects.vocabulary)))
    texts = [pairs.captions]
    if cleaned is not None and enc.clean_captions > 0:
        if len(cleaned) != n:
            raise ValueError(f"cleaned captions: {len(cleaned)} for {n} pairs")
        texts.append([c or raw for c, raw in zip(cleaned, pairs.captions)])
    tokens = tokenizer([t for group in texts for t in group], padding="longest", truncation=True,
                       max_length=enc.max_text_tokens, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]          # (N, L) or (2N, L): raw, then cleaned
    lengths = mask.sum(1)
    batch = min(enc.batch_size, n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * enc.epochs
    warmup = max(1, round(enc.warmup * total))
    gen = torch.Generator().manual_seed(seed)
    groups = _param_groups(model, enc.weight_decay)
    if head is not None:
        groups += [{"params": [head.weight], "weight_decay": enc.weight_decay}, {"params": [head.bias], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=enc.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(warmup, total))
    model.train()
    epoch_losses: list[float] = []
    object_losses: list[float] = []
    first: float | None = None
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="encoder", unit="step", disable=not progress, leave=False)
    for epoch in range(enc.epochs):
        order = torch.randperm(n, generator=gen)
        running = running_obj = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            x = pairs.pixels[idx]                                           # (B, 3, S, S) uint8
            if enc.rotate or enc.zoom < 1:
                x = augment(x, enc, gen)
            elif enc.flip:
                x = torch.where((torch.rand(len(idx), generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
            rows = idx
            if len(texts) > 1:                                              # cleaned caption for a share of the pairs
                rows = torch.where(torch.rand(len(idx), generator=gen) < enc.clean_captions, idx + n, idx)
            width = int(lengths[rows].max())                                # trim the batch's padding
            out = model(input_ids=ids[rows, :width], attention_mask=mask[rows, :width],
                        pixel_values=normalise(x, processor), return_loss=True,
                        output_hidden_states=enc.patch_loss > 0)                   # symmetric InfoNCE
            loss_t = out.loss
            if enc.patch_loss > 0:   # the patch tokens the connector reads must carry the objects too
                loss_t = loss_t + enc.patch_loss * patch_infonce(model, out, enc.patch_loss_layer)
            if head is not None:     # ... every object the caption names, not only the one that wins the batch
                obj = object_loss(model, head, out, objects.targets[idx], enc.object_loss_tokens)
                loss_t = loss_t + enc.object_loss * obj
                running_obj += obj.item()
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            loss = out.loss.item()
            first = loss if first is None else first
            running += loss
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", refresh=False)
        epoch_losses.append(running / max(1, steps_per_epoch))
        object_losses.append(running_obj / max(1, steps_per_epoch))
        extra = f", object loss {object_losses[-1]:.3f}" if head is not None else ""
        log(f"encoder epoch {epoch + 1}/{enc.epochs}: loss {epoch_losses[-1]:.3f}{extra} "
            f"(temperature 1/{model.logit_scale.exp().item():.1f}, {time.perf_counter() - t0:.0f}s)")
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1)
            model.train()
    bar.close()
    model.eval()
    return {"steps": total, "batch_size": batch, "first": first, "last_epoch": epoch_losses[-1] if epoch_losses else None,
            "per_epoch": [round(v, 4) for v in epoch_losses],
            "object_per_epoch": [round(v, 4) for v in object_losses] if head is not None else None, "logit_scale": model.logit_scale.exp().item(),
            "train_seconds": round(time.perf_counter() - t0, 1)}
