"""One training stage on one rank, with DeepSpeed ZeRO: the code every launcher runs (local ranks or a pod).

Stage 1 builds TUNA from the run's CLIP and LM and trains the projector and the tag encoder on the
alignment set; stage 2 starts from stage 1's saved model and also trains the tuner and the LM on the
instruction set. The data order is a seeded permutation per epoch, cut into global batches, so a
resumed run sees exactly the batches the uninterrupted one would. ZeRO checkpoints are written every
``train.checkpoint_every`` steps and at the end; the last one is consolidated with DeepSpeed's
zero_to_fp32 into a Hugging Face folder (``model/``); stage 1 also writes ``mm_projector.bin``.

Outputs: ``<data_dir>/train/<variant>/stage<N>/`` with ``checkpoints/``, ``model/``, ``loss.jsonl``,
``metrics.json`` and ``deepspeed_config.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tuna.cpu_math import use_cpu_math
from tuna.errors import TrainError
from tuna.layout import layout
from tuna.model.label_loss import IGNORE_INDEX
from tuna.recipe import Recipe
from tuna.sources import sources
from tuna.train.build import build_model, local_rank_zero_first
from tuna.train.freshness import DATA_SOURCES, fingerprint, init_variant, variant_recipe
from tuna.variants import registered_name, variant_model

# ------------------------------------------------------------------------------------------ schedule


def lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` (a share) of ``total`` steps, then cosine decay to 0."""
    from tuna.schedule import warmup_cosine

    return warmup_cosine(max(1, int(round(total * warmup))) if warmup > 0 else 0, total)


class BatchPlan:
    """Which example indices rank ``r`` takes at optimizer step ``s``, micro-step ``m``: seeded per epoch. With
    ``lengths`` (one per example) the batches group similar lengths, as Hugging Face's length-grouped sampler
    (LLaVA's ``group_by_modality_length``): each run of :attr:`MEGA` shuffled global batches is sorted by length
    and cut into global batches, whose order is then shuffled (less padding)."""

    MEGA = 50   # global batches sorted together (the sampler's mega_batch_mult)

    def __init__(self, n: int, world_size: int, batch_size: int, grad_accum: int, seed: int,
                 lengths: Sequence[int] | None = None) -> None:
        if lengths is not None and len(lengths) != n:
            raise TrainError(f"BatchPlan: {len(lengths)} lengths for {n} examples; give one length per example")
        self.n, self.world, self.bs, self.accum, self.seed = n, world_size, batch_size, grad_accum, seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.global_batch = world_size * batch_size * grad_accum
        self.steps_per_epoch = n // self.global_batch
        if self.steps_per_epoch < 1:
            raise TrainError(f"{n} examples cannot fill one global batch of {self.global_batch} (ranks {world_size} x "
                             f"batch {batch_size} x accumulation {grad_accum}); lower the batch size or add data")
        self._perm: dict[int, np.ndarray] = {}

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        steps = max(1, int(math.ceil(epochs * self.steps_per_epoch)))
        return min(steps, max_steps) if max_steps else steps

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch not in self._perm:
            self._perm = {epoch: self._order(np.random.default_rng(self.seed + epoch))}
        start = within * self.global_batch + (micro * self.world + rank) * self.bs
        return self._perm[epoch][start:start + self.bs].tolist()

    def epoch_batches(self, examples: Sequence[Any], rank: int, epoch: int = 0) -> list[list[Any]]:
        """Rank ``rank``'s micro-batches of ``epoch``, in order, as lists of ``examples``."""
        first = epoch * self.steps_per_epoch
        return [[examples[i] for i in self.indices(step, micro, rank)]
                for step in range(first, first + self.steps_per_epoch) for micro in range(self.accum)]

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        perm = rng.permutation(self.n)
        if self.lengths is None:
            return perm
        gb, mega = self.global_batch, self.global_batch * self.MEGA
        grouped = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")]
                                  for c in (perm[i:i + mega] for i in range(0, self.n, mega))])
        whole = self.steps_per_epoch * gb
        batches = grouped[:whole].reshape(self.steps_per_epoch, gb)[rng.permutation(self.steps_per_epoch)]
        return np.concatenate([batches.ravel(), grouped[whole:]])


def example_lengths(examples: Sequence[Any], sc: Any) -> list[int] | None:
    """The token counts :class:`BatchPlan` groups by when the stage sets ``group_by_length``, else None."""
    return [len(ex.input_ids) for ex in examples] if sc.group_by_length else None


# ------------------------------------------------------------------------------------------ building


def _attached(cfg: Recipe, images: Sequence[Path], cache_name: str, tag_mode: str, rank: int,
              barrier: Callable[[], None], log: Callable[[str], None]) -> dict[str, Any]:
    """The tags of ``images`` in ``tag_mode``, by image key: rank 0 retrieves them into the train cache ``cache_name``
    (one process opens Milvus Lite), then every rank reads that cache."""
    from tuna.retrieval.attach import attach_tags

    cache = layout(cfg).train_cache(cache_name)
    if rank == 0:
        attach_tags(cfg, images, cache, tag_mode, progress=False, log=log)
    barrier()
    return attach_tags(cfg, images, cache, tag_mode, progress=False, log=log)


def _random_tag_rows(cfg: Recipe, stage: int, src: Path, images: Sequence[Path], good: list[Any], rank: int,
                     barrier: Callable[[], None], log: Callable[[str], None]) -> list[Any]:
    """``train.stage<stage>.random_tags``: a share of the tagged rows given the ``random`` tag mode's tags (its cache)."""
    from tuna.samples import image_keys
    from tuna.train.data import random_tag_rows

    drawn = _attached(cfg, images, f"{src.parent.name}-random", "random", rank, barrier, log)
    keys = image_keys(images)
    pool = {img: [t for t, _ in drawn[keys[img]]][:cfg.model.num_tags] for img in images if keys[img] in drawn}
    sc = cfg.train.stage(stage)
    out = random_tag_rows(good, sc.random_tags, cfg.run.seed + stage, pool)
    log(f"train.stage{stage}.random_tags={sc.random_tags}: {sum(a is not b for a, b in zip(good, out))} of {len(out)} "
        f"rows trained on random tags")
    return out


def _existence_tags(cfg: Recipe, stage: int, records: Sequence[Any], good: list[Any], log: Callable[[str], None]) -> list[Any]:
    """``train.stage<stage>.existence_tags``: a share of the rows' tags edited so they do not answer their existence
    turns; logs how far the tags decide existence before (and after) the edit."""
    from tuna.train.existence import describe_cue, existence_cue, existence_tag_rows

    conversations = {r.id: r.conversations for r in records}
    sc = cfg.train.stage(stage)
    cue = existence_cue(good, conversations)
    if any(cue[k] for k in ("yes_named", "no_named", "yes_unnamed", "no_unnamed")):   # stage 1 asks nothing
        log(f"train.stage{stage}: {describe_cue(cue)}")
    if not sc.existence_tags:
        return good
    out, edited = existence_tag_rows(good, conversations, sc.existence_tags, cfg.run.seed + stage, cfg.model.num_tags)
    log(f"train.stage{stage}.existence_tags={sc.existence_tags}: {edited:,} rows' tags edited; after it, "
        f"{describe_cue(existence_cue(out, conversations))}")
    return out


def _examples(cfg: Recipe, variant: str, stage: int, tokenizer: Any, rank: int, barrier: Callable[[], None],
              log: Callable[[str], None]) -> tuple[list[Any], dict[str, int]]:
    from tuna.formats import load_llava
    from tuna.train.data import check_images, drop_images, drop_tags, prepare, write_blank_image
    from tuna.train.readings import reading_rows, scene_rows

    data = sources(cfg)[DATA_SOURCES[stage]]
    src = data.path
    if not src.is_file():
        fix = "run `tuna world` first" if data.from_world else f"point data.{data.name}.path at a LLaVA JSON file"
        raise TrainError(f"stage {stage} trains on {src} (data.{data.name}), which does not exist; {fix}")
    records = load_llava(src, data.images)   # text-only samples included: prepare() skips and counts them
    tag_mode = variant_model(cfg, variant)["tag_mode"]
    tags = None
    if tag_mode != "none":
        images = sorted({r.image for r in records if r.image is not None})
        tags = _attached(cfg, images, f"{src.parent.name}-{tag_mode}", tag_mode, rank, barrier, log)
    sc = cfg.train.stage(stage)
    prepared = prepare(records, tokenizer, stage, sc.max_length, cfg.train.system_prompt, tags, cfg.model.num_tags)
    good, bad = check_images(prepared.examples)
    skipped = dict(prepared.skipped)
    if bad:
        skipped["bad_image"] = len(bad)
    if tag_mode != "none":
        good = drop_tags(good, sc.tag_dropout, cfg.run.seed + stage)
        good = _existence_tags(cfg, stage, records, good, log)
        if sc.image_dropout:
            blank = write_blank_image(layout(cfg).reading_image(f"blank-{cfg.world.image_size}.png"), cfg.world.image_size)
            good = drop_images(good, sc.image_dropout, cfg.run.seed + stage, blank)
        if sc.random_tags:
            good = _random_tag_rows(cfg, stage, src, images, good, rank, barrier, log)
        if sc.novel_names:
            from tuna.train.renames import novel_name_rows

            good, renamed = novel_name_rows(cfg, stage, records, good, tokenizer)
            log(f"train.stage{stage}.novel_names={sc.novel_names}: {renamed} of {len(good)} rows name their classes "
                f"with new pseudo-words (in the text and the tags)"
                + (f", with up to {sc.novel_decoys} real name(s) left in another tag" if sc.novel_decoys else ""))
    if stage == 2 and tag_mode != "none" and sc.reading_per_class:
        reading = reading_rows(cfg, tokenizer, sc)
        good += reading.examples
        if reading.skipped:
            skipped.update(reading.skipped)
            log(f"{reading.skipped['reading_too_long']} reading conversations are longer than train.stage2.max_length="
                f"{sc.max_length} tokens and are left out (ATTRSEEK's two turns are the long ones); "
                f"train.stage2.max_length={reading.longest} keeps them all")
    if stage == 2 and tag_mode != "none" and sc.reading_scenes:
        scenes = scene_rows(cfg, records, tokenizer, sc)
        good += scenes.examples
        if scenes.skipped:
            skipped["scene_reading_too_long"] = scenes.skipped["reading_too_long"]
            log(f"{scenes.skipped['reading_too_long']} of train.stage2.reading_scenes={sc.reading_scenes} scene descriptions "
                f"are longer than train.stage2.max_length={sc.max_length} tokens and are left out; "
                f"train.stage2.max_length={scenes.longest} keeps them all")
    return good, skipped


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_tags(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.glob("step-*") if p.is_dir())


def _prune(ckpt: Path, keep: int) -> None:
    for tag in _checkpoint_tags(ckpt)[:-keep]:
        shutil.rmtree(ckpt / tag, ignore_errors=True)


def _truncate_loss_log(path: Path, last_step: int) -> None:
    """Keep the loss log's lines up to ``last_step`` (a resumed run rewrites the steps after its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(keep), encoding="utf-8")


def consolidate(ckpt: Path, tag: str) -> dict[str, torch.Tensor]:
    """The fp32 state dict of a ZeRO checkpoint (any stage), gathered with DeepSpeed's zero_to_fp32."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    chatter = io.StringIO()  # zero_to_fp32 prints its progress; keep it out of the user's log
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)


def save_hf(cfg: Recipe, variant: str, stage: int, state: dict[str, torch.Tensor], tokenizer: Any, out: Path) -> None:
    """Load the consolidated ``state`` into a fresh model and ``save_pretrained`` it with its tokenizers and processor."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from tuna.layout import encoder_path

    model, _ = build_model(cfg, variant, stage)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if unexpected or missing:
        raise TrainError(f"the consolidated checkpoint does not fit the model: {len(missing)} missing "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    clip = encoder_path(cfg) if stage == 1 else str(layout(cfg).model(variant, 1))
    AutoImageProcessor.from_pretrained(clip).save_pretrained(str(tmp))
    clip_tok = clip if stage == 1 else str(Path(clip) / "clip_tokenizer")
    AutoTokenizer.from_pretrained(clip_tok).save_pretrained(str(tmp / "clip_tokenizer"))
    if stage == 1:  # LLaVA's stage-1 artefact: the connector alone (and TUNA's tag encoder beside it)
        torch.save({k: v for k, v in state.items() if k.startswith("projector.")}, tmp / "mm_projector.bin")
        tag_enc = {k: v for k, v in state.items() if k.startswith("tag_encoder.")}
        if tag_enc:
            torch.save(tag_enc, tmp / "tag_encoder.bin")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


# ------------------------------------------------------------------------------------------ the loop


@dataclass
class StageInputs:
    """What one rank trains in a stage: the model (trainable groups set), its tokenizer, the trainable
    parameters, the examples (and skip counts by reason) and the batch collator."""

    model: Any
    tokenizer: Any
    params: list[torch.nn.Parameter]
    examples: list[Any]
    skipped: dict[str, int]
    collate: Any
    lm_params: list[torch.nn.Parameter] = field(default_factory=list)  # the part of ``params`` in the LM
    vision_params: list[torch.nn.Parameter] = field(default_factory=list)  # the part in CLIP's vision tower
    partitioned: dict[str, int] | None = None  # with train.zero3_init on ZeRO-3: zero_init.held() after the build

    def param_groups(self, lr: float, lm_lr_scale: float, vision_lr_scale: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer groups: the LM's weights at ``lr * lm_lr_scale``, the vision tower's at ``lr *
        vision_lr_scale``, everything else at ``lr``."""
        own = {id(p) for p in self.lm_params + self.vision_params}
        rest = [p for p in self.params if id(p) not in own]
        return [g for g in ({"params": rest, "lr": lr}, {"params": self.lm_params, "lr": lr * lm_lr_scale},
                            {"params": self.vision_params, "lr": lr * vision_lr_scale}) if g["params"]]


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in backward (``train.gradient_checkpointing``) in every part that supports it; raises
    TrainError naming the key when the language model does not (a custom LM class without checkpointing)."""
    lm = getattr(model, "language_model", model)
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise TrainError(f"train.gradient_checkpointing: the language model ({type(lm).__name__}) does not support "
                         f"gradient checkpointing; set train.gradient_checkpointing=false (or use a transformers LM "
                         f"that does)")
    # non-reentrant checkpointing: correct with frozen inputs (the CLIP towers) and with ZeRO-3's hooks
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def prepare_stage(cfg: Recipe, variant: str, stage: int, rank: int = 0,
                  barrier: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> StageInputs:
    """Build the model, freeze what the stage does not train, and load, tag and tokenise the stage's data."""
    from tuna.model import set_trainable
    from tuna.train.data import Collator

    sc = cfg.train.stage(stage)
    # a hub checkpoint (model.language_model / vision_tower ids) is fetched once per node, not by every rank at once
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    partitioned = None
    if cfg.train.zero3_init and sc.zero_stage == 3:
        from tuna.train.zero_init import build_partitioned

        model, tokenizer, partitioned = build_partitioned(cfg, variant, stage, local_rank, barrier)
        say_held = partitioned["held"] / max(partitioned["params"], 1)
        log(f"{variant} stage {stage}: built partitioned (train.zero3_init): rank {rank} holds {partitioned['held']:,} "
            f"of {partitioned['params']:,} parameters ({100 * say_held:.0f}%)")
    else:
        model, tokenizer = local_rank_zero_first(local_rank, barrier, lambda: build_model(cfg, variant, stage))
        if stage == 2 and (start := init_variant(cfg, variant)):
            log(f"{variant} stage 2 starts from {start}'s stage-2 model (train.stage2.init_from): its LM, projector and "
                f"vision tower, with {variant}'s stage-1 tag encoder and tuner")
    if sc.vision_lr_scale > 0 and model.config.tag_mode != "none":
        raise TrainError(f"train.stage{stage}.vision_lr_scale={sc.vision_lr_scale} would train the vision tower of "
                         f"{variant!r}, whose image embedding retrieves its tags when served (the datastore keys come "
                         f"from the frozen encoder); set it to 0 for tag variants (it is for the baseline)")
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    groups = set_trainable(model, stage, sc.train_word_embeddings, sc.vision_lr_scale > 0)
    if sc.lm_lr_scale == 0 and "language_model" in groups:   # the LM stays as pre-trained in this stage
        for p in groups.pop("language_model").values():
            p.requires_grad_(False)
    params = [p for g in groups.values() for p in g.values()]
    if not params:
        raise TrainError(f"stage {stage} of {variant!r} has no trainable parameters; check model.tag_mode / model.tuner")
    examples, skipped = _examples(cfg, variant, stage, tokenizer, rank, barrier, log)
    if stage == 1:  # the CLIP tokenizer and image processor of the tower
        from tuna.layout import encoder_path
        from tuna.retrieval.clip import load_encoder

        enc = load_encoder(encoder_path(cfg))
        processor, clip_tok = enc.processor, enc.tokenizer
    else:
        from transformers import AutoImageProcessor, AutoTokenizer

        prev = layout(cfg).model(variant, 1)
        processor = AutoImageProcessor.from_pretrained(str(prev))
        clip_tok = AutoTokenizer.from_pretrained(str(prev / "clip_tokenizer"))
    use_tags = model.config.tag_mode != "none"
    collate = Collator(tokenizer, processor, clip_tok, model.config.num_tags, model.config.max_tag_tokens, use_tags)
    return StageInputs(model, tokenizer, params, examples, skipped, collate,
                       list(groups.get("language_model", {}).values()), list(groups.get("vision_tower", {}).values()),
                       partitioned)


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with its tensors (and tuples of tensors) on ``device`` (the engine's accelerator); other values unchanged."""
    def move(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(move(x) for x in v)
        return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return {k: move(v) for k, v in batch.items()}


def mean_over_ranks(value: float, device: torch.device | str, world: int) -> float:
    """``value`` averaged over the ranks: an all-reduce of a tensor on ``device`` (NCCL reduces only tensors on
    the rank's GPU; gloo those on the CPU)."""
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float32, device=device)
    dist.all_reduce(total)
    return float(total.item()) / world


def cache_vision(cfg: Recipe, stage: int, inputs: StageInputs, rank: int, world: int, say: Callable[[str], None]) -> None:
    """``train.cache_vision``: encode every training image of the stage once (split over the ranks), so the batches
    carry the frozen tower's outputs instead of pixels (tuna.train.vision_cache)."""
    import torch.distributed as dist

    from tuna.train.vision_cache import PRECISION_DTYPES, check_cacheable, encode_all, load_store, save_store, tower_key

    check_cacheable(stage, cfg.train.stage(stage).vision_lr_scale, inputs.partitioned)

    def gather(obj: Any) -> list[Any]:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, obj)
        return parts

    t0 = time.perf_counter()
    dtype = PRECISION_DTYPES[cfg.train.precision]
    images = sorted({ex.image for ex in inputs.examples})
    store = layout(cfg).vision_store(tower_key(inputs.model, dtype))
    stored = load_store(store)
    # every rank encodes what any rank lacks (ranks on nodes without the shared data dir lack all of it)
    mine = [p for p in images if p not in stored]
    missing = sorted(set().union(*gather(mine))) if world > 1 else mine
    encoded = encode_all(inputs.model, inputs.collate.read, missing, rank, world, gather, dtype) if missing else {}
    stored.update(encoded)
    if encoded and rank == 0:
        save_store(store, stored)
    inputs.collate.vision = {p: stored[p] for p in images}
    say(f"  {len(images)} training images through the frozen vision tower (train.cache_vision): {len(missing)} encoded "
        f"once, {len(images) - len(missing)} read from {store.parent}, in {time.perf_counter() - t0:.1f}s")


def micro_loss(engine: Any, collate: Callable[[list[Any]], dict[str, torch.Tensor]], batch: list[Any],
               buckets: int = 1) -> torch.Tensor:
    """The loss of one micro-batch: one forward, or with ``buckets`` > 1 (``train.length_buckets``) one forward per
    run of similar lengths (:func:`tuna.train.data.length_split`, less padding) and their losses weighted by their
    labelled tokens, which is the whole micro-batch's mean loss, so its gradient too."""
    from tuna.train.data import length_split

    parts = length_split(batch, buckets) if buckets > 1 else [batch]
    if len(parts) == 1:
        return engine(**to_device(collate(batch), engine.device), loss_only=True).loss  # the LM head at the labels only
    outs = [engine(**to_device(collate(part), engine.device), loss_only=True) for part in parts]
    counts = [int((out.labels[:, 1:] != IGNORE_INDEX).sum()) for out in outs]
    total = sum(counts)
    return sum(out.loss * (n / total) for out, n in zip(outs, counts))


def optimizer_step(engine: Any, collate: Callable[[list[Any]], dict[str, torch.Tensor]], examples: list[Any],
                   plan: BatchPlan, step: int, rank: int, buckets: int = 1) -> float:
    """One optimizer step of a DeepSpeed engine (its micro-steps included, each batch moved to the engine's
    device); returns the loss averaged over ranks."""
    step_loss = 0.0
    for micro in range(plan.accum):
        loss = micro_loss(engine, collate, [examples[i] for i in plan.indices(step, micro, rank)], buckets)
        engine.backward(loss)
        engine.step()
        step_loss += float(loss.detach()) / plan.accum
    return mean_over_ranks(step_loss, engine.device, plan.world)


def train_stage(cfg: Recipe, stage: int, variant: str = "tuna", resume: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run training stage ``stage`` of ``variant`` on this rank (call in every rank); returns rank 0's metrics."""
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    from tuna import track
    from tuna.train import ds_config
    from tuna.train.progress import reporter_from_env

    if stage not in (1, 2):
        raise TrainError(f"--stage must be 1 or 2, got {stage!r}")
    cfg = variant_recipe(cfg, variant)   # stage 2 started from train.stage2.init_from: its own epochs / LM lr scale
    use_cpu_math(cfg.train.threads_per_rank)
    # The CPU accelerator JIT-builds a shared-memory all-reduce op (~1 min) used only by inference; training
    # communicates through gloo, so skip the build.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    say = log if rank == 0 else (lambda _msg: None)
    torch.manual_seed(cfg.run.seed)
    sc = cfg.train.stage(stage)
    out = layout(cfg).stage(variant, stage)
    ckpt = out / "checkpoints"
    fp = fingerprint(cfg, variant, stage, world)

    inputs = prepare_stage(cfg, variant, stage, rank, dist.barrier, say)
    model, tokenizer, params, examples, skipped, collate = (inputs.model, inputs.tokenizer, inputs.params,
                                                            inputs.examples, inputs.skipped, inputs.collate)
    if cfg.train.cache_vision:
        cache_vision(cfg, stage, inputs, rank, world, say)
    plan = BatchPlan(len(examples), world, sc.batch_size, sc.grad_accum, cfg.run.seed, example_lengths(examples, sc))
    total = plan.total_steps(sc.epochs, sc.max_steps)
    if cfg.train.length_buckets > 1 and rank == 0:
        from tuna.train.data import padding_ratio

        first = plan.epoch_batches(examples, rank)
        say(f"  train.length_buckets={cfg.train.length_buckets}: the text padded to {padding_ratio(first, cfg.train.length_buckets):.2f}x "
            f"its tokens (whole micro-batches: {padding_ratio(first):.2f}x; rank 0, epoch 1)")
    ds = ds_config.resolve(cfg, stage, world, hidden_size=model.config.text_config.hidden_size)
    optimizer = torch.optim.AdamW(inputs.param_groups(sc.lr, sc.lm_lr_scale, sc.vision_lr_scale), lr=sc.lr, weight_decay=sc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, sc.warmup))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)

    start, losses = 0, []
    if out.exists() and not resume and rank == 0:
        shutil.rmtree(out)
    dist.barrier()
    if resume and (ckpt / "latest").is_file():
        path, client = engine.load_checkpoint(str(ckpt))
        if path is None or client is None:
            raise TrainError(f"cannot resume from {ckpt}: DeepSpeed found no loadable checkpoint; drop --resume to start over")
        if client.get("fingerprint") != fp:
            raise TrainError(f"checkpoint {path} was written by a different config (fingerprint {client.get('fingerprint')}, "
                             f"this run {fp}); drop --resume to start over or restore that recipe")
        start, losses = int(client["step"]), list(client["losses"])
        say(f"resumed {variant} stage {stage} at step {start}/{total} from {path}")
    elif resume:
        say(f"no checkpoint under {ckpt}; starting {variant} stage {stage} from step 0")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "deepspeed_config.json").write_text(json.dumps(ds, indent=1) + "\n")
        (out / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        _truncate_loss_log(out / "loss.jsonl", start)

    engine.train()
    with track.stage_run(f"train-{variant}-stage{stage}", cfg) as run:
        t_start = time.perf_counter()
        run.log_params({"train": asdict(cfg.train), "variant": variant, "stage": stage, "world_size": world,
                        "examples": len(examples), "total_steps": total, "model": variant_model(cfg, variant)})
        run.set_tags({"tuna.variant": variant, "tuna.train_stage": str(stage)})
        why = f" ({', '.join(f'{n} {k}' for k, n in skipped.items())})" if skipped else ""
        say(f"{variant} stage {stage}: {len(examples)} examples, {sum(skipped.values())} skipped{why}; "
            f"{world} ranks x batch {sc.batch_size} x accum {sc.grad_accum}, {total} steps, ZeRO-{sc.zero_stage}")
        progress = reporter_from_env(start)  # the TrainJob's status.trainerStatus (Kubeflow Trainer); a no-op elsewhere
        for step in range(start, total):
            t0 = time.perf_counter()
            step_loss = optimizer_step(engine, collate, examples, plan, step, rank, cfg.train.length_buckets)
            if not math.isfinite(step_loss):
                raise TrainError(f"loss became {step_loss} at step {step + 1}; lower train.stage{stage}.lr")
            losses.append(round(step_loss, 6))
            dt = time.perf_counter() - t0
            done = step + 1
            progress.update(done, total, {"loss": step_loss, "lr": scheduler.get_last_lr()[0]})
            if rank == 0:
                with open(out / "loss.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": done, "loss": losses[-1], "lr": scheduler.get_last_lr()[0],
                                        "seconds": round(dt, 4)}) + "\n")
                if done % cfg.train.log_every == 0 or done == total:
                    run.log_metrics({"loss": step_loss, "lr": scheduler.get_last_lr()[0], "step_time_s": dt,
                                     "samples_per_s": plan.global_batch / dt}, step=done)
                    say(f"  step {done}/{total}  loss {step_loss:.4f}  {plan.global_batch / dt:.1f} samples/s")
            if done % cfg.train.checkpoint_every == 0 or done == total:
                engine.save_checkpoint(str(ckpt), tag=f"step-{done:06d}",
                                       client_state={"step": done, "losses": losses, "fingerprint": fp})
                dist.barrier()
                if rank == 0:
                    _prune(ckpt, cfg.train.keep_checkpoints)
        seconds = time.perf_counter() - t_start
        progress.close()
        dist.barrier()
        metrics: dict[str, Any] = {}
        if rank == 0:
            tag = _checkpoint_tags(ckpt)[-1]
            save_hf(cfg, variant, stage, consolidate(ckpt, tag), tokenizer, out / "model")
            trained = total - start
            metrics = {
                "fingerprint": fp, "variant": variant, "stage": stage, "world_size": world, "steps": total,
                "resumed_from": start, "examples": len(examples), "skipped": skipped,
                "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                "seconds": round(seconds, 1),
                "samples_per_s": round(trained * plan.global_batch / seconds, 2) if trained else None,
                "trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in params), "zero_stage": sc.zero_stage,
                "partitioned_init": inputs.partitioned,
                "checkpoint": str(ckpt / tag), "model": str(out / "model"),
            }
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
            run.log_metrics({"final_loss": metrics["final_loss"] or 0.0, "train_seconds": seconds,
                             **{f"skipped_{k}": v for k, v in skipped.items()}})
            run.log_loss_curve(list(enumerate(losses, 1)), title=f"{variant} stage {stage} loss")
            run.log_artifact(out / "deepspeed_config.json", "config")
            run.log_artifact(out / "recipe.yaml", "config")
            run.log_artifact(out / "metrics.json", "metrics")
            if stage == 2:
                run.log_model_folder(out / "model")
                name = registered_name(cfg, variant)
                if losses and math.isfinite(losses[-1]) and losses[-1] < losses[0]:
                    version = track.register_model(run.run_id, "model", name, cfg=cfg) if run.enabled else None
                    metrics["registered"] = {"name": name, "version": version}
                    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        dist.barrier()
        return metrics
