"""`tuna plan`: the recipe's real architecture on the meta device, parameters per part, memory per GPU.

Configs come from the checkpoint folders the recipe names (their ``config.json``; hub ids are never fetched) or
from the sizes declared in the recipe's ``plan:`` section; :mod:`tuna.model.architecture` builds the model on
the meta device and counts. Memory per GPU, for ZeRO-2 and ZeRO-3, each stage, with and without gradient
checkpointing (Psi = all parameters, Psi_t = those training in the stage, N = GPUs, w = bytes per weight at the
precision: 2 for bf16/fp16, 4 for fp32):

- model states, as DeepSpeed's estimators count them (``estimate_zero2_model_states_mem_needs`` /
  ``estimate_zero3_model_states_mem_needs`` in deepspeed/runtime/zero/, the "Memory Requirements" page of
  deepspeed.readthedocs.io): mixed precision keeps 18 bytes per trained parameter beyond its weight (2 bf16
  grads + 4 fp32 grads + 4 fp32 master + 8 Adam moments; fp32 training: 4 grads + 8 Adam = 12), sharded over N;
  ZeRO-2: ``w*Psi + 18*Psi_t/N``; ZeRO-3: ``w*Psi/N + 18*Psi_t/N + 4*largest_layer`` (the gathered layer).
  Frozen parameters (CLIP, the LM in stage 1) hold only their weights.
- activations of the LM (after Korthikanti et al. 2022, "Reducing Activation Recomputation", adapted to a
  Llama layer with SDPA/flash attention, so no s^2 score matrix is kept): per layer and token
  ``w*(7h + 3h_kv + 4i)`` bytes (norm in/out, q, k, v, RoPE'd q/k, attention out, MLP norm in/out, gate, up,
  act, product); with checkpointing only each layer's input ``w*h`` is kept plus one layer recomputed; logits
  ``s*b*V*(w + 8)`` (the LM's logits, their fp32 copy for the loss and its gradient). s = text max_length +
  visual tokens + tag block; b = the stage's micro-batch. Stage 1 keeps the LM activations too (gradients
  flow through the frozen LM to the projector); the frozen CLIP runs without grad (transient only).
  Not counted: CUDA context, allocator fragmentation, NCCL and ZeRO bucket buffers (DeepSpeed defaults ~1-2 GB).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.layout import layout
from tuna.recipe import Recipe

GIB = 1024**3
WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
STATE_BYTES = {"bf16": 18, "fp16": 18, "fp32": 12}   # per trained parameter beyond its weight (see the module doc)
GATHER_BYTES = 4                                      # DeepSpeed's largest_layer_memory = 4 * largest_layer_params


class PlanError(TunaError):
    """The recipe does not say enough to build the architecture."""


@dataclass(frozen=True)
class MemoryRow:
    """Estimated memory of one GPU for one stage, ZeRO stage and checkpointing choice (bytes)."""

    stage: int
    zero: int
    checkpointing: bool
    recipe_choice: bool            # the recipe's ZeRO stage for this stage
    weights: int
    grads_optimizer: int
    gathered_layer: int
    activations: int
    total: int
    fits: bool                     # total <= plan.gpu_memory_gib


@dataclass(frozen=True)
class Plan:
    """What `tuna plan` reports (``to_dict`` is the JSON form)."""

    recipe: str
    variant: str
    sources: dict[str, str]        # where each config came from
    parts: dict[str, int]          # parameters per part (tuna.model.architecture.PARTS)
    total: int
    llava_total: int               # vision tower + projector + LM: what a LLaVA-1.5 checkpoint holds
    trainable: dict[int, int]      # per training stage
    largest_layer: int
    gpus: int
    precision: str
    gpu_memory_gib: float
    micro_batch: dict[int, int]
    sequence: dict[int, int]       # tokens per example the LM reads in each stage (text + visual + tags)
    rows: list[MemoryRow] = field(default_factory=list)
    seconds: float = 0.0
    build: dict[int, dict[str, int]] = field(default_factory=dict)  # per stage: weights one rank holds when built

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ configs


def _folder_config(path: str | None) -> Any | None:
    """The config of a local checkpoint folder, or None (hub ids and missing folders are never fetched)."""
    if not path or not (Path(path).expanduser() / "config.json").is_file():
        return None
    from transformers import AutoConfig

    from tuna.model import TunaConfig  # noqa: F401  (registers model_type "tuna")

    try:
        return AutoConfig.from_pretrained(str(Path(path).expanduser()))
    except (OSError, ValueError, KeyError) as err:
        raise PlanError(f"cannot read {path}/config.json ({type(err).__name__}: {str(err).splitlines()[0]}); fix or "
                        f"replace that file") from None


def resolve_configs(cfg: Recipe) -> tuple[Any, Any, dict[str, str]]:
    """(CLIPConfig, causal LM config, sources): a named folder's config.json first, else the plan: sizes."""
    from tuna.model.architecture import clip_config_from_sizes, lm_config_from_sizes

    clip_src = cfg.model.vision_tower or str(layout(cfg).encoder)
    lm_src = cfg.model.llava or cfg.model.language_model or str(layout(cfg).lm)
    sources: dict[str, str] = {}
    clip = _folder_config(clip_src)
    if clip is not None and clip.model_type != "clip":
        raise PlanError(f"model.vision_tower: {clip_src} holds a {clip.model_type!r} model; TUNA needs a full CLIP "
                        f"(both towers: the tag encoder queries with the text tower)")
    if clip is not None:
        sources["clip"] = f"{clip_src}/config.json"
    elif cfg.plan.vision is not None and cfg.plan.clip_text is not None:
        clip = clip_config_from_sizes(asdict(cfg.plan.vision), asdict(cfg.plan.clip_text))
        sources["clip"] = "recipe plan.vision + plan.clip_text"
    else:
        raise PlanError(f"no CLIP sizes: {clip_src!r} is not a local folder with a config.json (hub ids are not "
                        f"fetched) and plan.vision / plan.clip_text are not declared; declare them in the recipe "
                        f"(configs/llava7b.yaml holds CLIP ViT-L/14-336's) or point model.vision_tower at a folder")
    lm = _folder_config(lm_src)
    if lm is not None and lm.model_type == "llava":
        lm, sources["lm"] = lm.text_config, f"{lm_src}/config.json (text_config)"
    elif lm is not None:
        sources["lm"] = f"{lm_src}/config.json"
    elif cfg.plan.lm is not None:
        lm, sources["lm"] = lm_config_from_sizes(asdict(cfg.plan.lm)), "recipe plan.lm"
    else:
        raise PlanError(f"no LM sizes: {lm_src!r} is not a local folder with a config.json (hub ids are not fetched) "
                        f"and plan.lm is not declared; declare it (configs/llava7b.yaml holds Vicuna-7B's) or point "
                        f"model.language_model at a folder")
    return clip, lm, sources


def _gpus_and_precision(cfg: Recipe) -> tuple[int, str]:
    c = cfg.cluster
    gpus = cfg.plan.gpus or (c.num_nodes * c.gpus_per_node if c.gpus_per_node > 0 else cfg.train.ranks)
    precision = (c.precision or cfg.train.precision) if c.gpus_per_node > 0 else cfg.train.precision
    return gpus, precision


# ------------------------------------------------------------------------------------------ memory


def activation_bytes(lm_cfg: Any, batch: int, seq: int, weight_bytes: int, checkpointing: bool) -> int:
    """LM activations kept for backward on one GPU (bytes), per the module doc's formula."""
    h, i, layers = lm_cfg.hidden_size, lm_cfg.intermediate_size, lm_cfg.num_hidden_layers
    heads = lm_cfg.num_attention_heads
    h_kv = h * (getattr(lm_cfg, "num_key_value_heads", None) or heads) // heads
    tokens = batch * seq
    layer = tokens * (7 * h + 3 * h_kv + 4 * i) * weight_bytes
    logits = tokens * lm_cfg.vocab_size * (weight_bytes + 8)
    kept = layers * tokens * h * weight_bytes + layer if checkpointing else layers * layer
    return kept + logits


def memory_rows(cfg: Recipe, lm_cfg: Any, total: int, trainable: dict[int, int], largest: int,
                sequence: dict[int, int], gpus: int, precision: str) -> list[MemoryRow]:
    """The memory table: stages 1 and 2 x ZeRO-2/3 x checkpointing off/on."""
    w, s = WEIGHT_BYTES[precision], STATE_BYTES[precision]
    rows = []
    for stage in (1, 2):
        sc = cfg.train.stage(stage)
        zero_recipe = cfg.cluster.zero_stage or sc.zero_stage
        for zero in (2, 3):
            weights = w * total if zero == 2 else w * total / gpus
            states = s * trainable[stage] / gpus
            gather = GATHER_BYTES * largest if zero == 3 else 0
            for ckpt in (False, True):
                act = activation_bytes(lm_cfg, sc.batch_size, sequence[stage], w, ckpt)
                whole = int(weights + states + gather + act)
                rows.append(MemoryRow(stage, zero, ckpt, zero == zero_recipe, int(weights), int(states), int(gather),
                                      act, whole, whole <= cfg.plan.gpu_memory_gib * GIB))
    return rows


def build_bytes(cfg: Recipe, parts: dict[str, int], gpus: int, precision: str) -> dict[int, dict[str, int]]:
    """Weights one rank holds right after building each stage's model (before ``deepspeed.initialize``), as the recipe
    builds it (``train.zero3_init`` on a ZeRO-3 stage: stage 2 wholly partitioned, stage 1 only the LM) and whole."""
    w, total = WEIGHT_BYTES[precision], sum(parts.values())
    out = {}
    for stage in (1, 2):
        partitioned = cfg.train.zero3_init and (cfg.cluster.zero_stage or cfg.train.stage(stage).zero_stage) == 3
        shared = total if stage == 2 else parts.get("language_model", 0)
        recipe = w * (total - shared + shared / gpus) if partitioned else w * total
        out[stage] = {"recipe": int(recipe), "whole": w * total, "partitioned": int(partitioned)}
    return out


def make_plan(cfg: Recipe, variant: str = "tuna") -> Plan:
    """Build the architecture of ``variant`` on the meta device and estimate memory per GPU."""
    from tuna.model import TunaConfig
    from tuna.model.architecture import LLAVA_PARTS, count_parts, largest_layer, meta_tuna, trainable_count
    from tuna.variants import variant_model

    start = time.perf_counter()
    clip, lm, sources = resolve_configs(cfg)
    settings = variant_model(cfg, variant)
    config = TunaConfig(clip_config=clip, text_config=lm, projector_type=settings["projector"],
                        vision_feature_layer=settings["vision_feature_layer"],
                        vision_feature_select_strategy=settings["vision_feature_select_strategy"],
                        vision_feature_pool=settings["vision_feature_pool"],
                        vision_crops=settings["vision_crops"], num_tags=settings["num_tags"],
                        tag_mode=settings["tag_mode"], use_tuner=settings["tuner"], max_tag_tokens=8,
                        tuner_rank_prior=settings["tuner_rank_prior"], tuner_order=settings["tuner_order"],
                        tag_position=settings["tag_position"])
    model = meta_tuna(config)
    parts = count_parts(model)
    trainable = {stage: trainable_count(model, stage, cfg.train.stage(stage).train_word_embeddings) for stage in (1, 2)}
    tags = config.num_tags * (1 + config.max_tag_tokens) if config.tag_mode != "none" else 0
    sequence = {stage: cfg.train.stage(stage).max_length + config.num_patches + tags for stage in (1, 2)}
    gpus, precision = _gpus_and_precision(cfg)
    largest = largest_layer(model)
    rows = memory_rows(cfg, config.text_config, sum(parts.values()), trainable, largest, sequence, gpus, precision)
    return Plan(cfg.run.name, variant, sources, parts, sum(parts.values()), sum(parts[p] for p in LLAVA_PARTS),
                trainable, largest, gpus, precision, cfg.plan.gpu_memory_gib,
                {s: cfg.train.stage(s).batch_size for s in (1, 2)}, sequence, rows, round(time.perf_counter() - start, 2),
                build_bytes(cfg, parts, gpus, precision))


# ------------------------------------------------------------------------------------------ report


def _b(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e7 else f"{n / 1e6:.3f}M" if n >= 1e4 else str(n)


def plan_lines(plan: Plan) -> list[str]:
    """The short table `tuna plan` prints."""
    lines = [f"plan {plan.recipe} (variant {plan.variant}): {plan.gpus} GPUs, {plan.precision}, built on the meta "
             f"device in {plan.seconds:.1f}s; sources: " + "; ".join(f"{k} {v}" for k, v in plan.sources.items()),
             f"  {'part':<15}{'params':>10}"]
    lines += [f"  {part:<15}{_b(n):>10}" for part, n in plan.parts.items()]
    lines.append(f"  {'total':<15}{_b(plan.total):>10}   (LLaVA-1.5 parts: vision tower + projector + LM = "
                 f"{_b(plan.llava_total)})")
    lines.append("  trainable: " + ", ".join(f"stage {s} {_b(n)}" for s, n in plan.trainable.items())
                 + f"; largest layer {_b(plan.largest_layer)}")
    lines.append(f"  memory per GPU (GiB; * = the recipe's ZeRO stage; fits = <= {plan.gpu_memory_gib:g} GiB):")
    lines.append(f"  {'stage':<6}{'zero':<6}{'ckpt':<6}{'batch x seq':<13}{'weights':>8}{'grad+opt':>9}"
                 f"{'gather':>7}{'activ.':>8}{'total':>8}  fits")
    for r in plan.rows:
        lines.append(f"  {r.stage:<6}{str(r.zero) + ('*' if r.recipe_choice else ''):<6}{'on' if r.checkpointing else 'off':<6}"
                     f"{f'{plan.micro_batch[r.stage]} x {plan.sequence[r.stage]}':<13}{r.weights / GIB:>8.2f}"
                     f"{r.grads_optimizer / GIB:>9.2f}{r.gathered_layer / GIB:>7.2f}{r.activations / GIB:>8.2f}"
                     f"{r.total / GIB:>8.2f}  {'yes' if r.fits else 'no'}")
    if plan.build:
        lines.append("  weights per rank at build, before deepspeed.initialize (GiB): " + "; ".join(
            f"stage {s} {b['recipe'] / GIB:.2f}" + (f" (train.zero3_init; built whole: {b['whole'] / GIB:.2f})"
                                                    if b["partitioned"] else " (built whole)")
            for s, b in plan.build.items()))
    return lines


def tracking_configured(cfg: Recipe) -> bool:
    """True when MLflow is configured: $MLFLOW_TRACKING_URI or track.tracking_uri."""
    from tuna.track import TRACKING_URI_ENV

    return bool(os.environ.get(TRACKING_URI_ENV, "").strip() or cfg.track.tracking_uri)


def log_plan(plan: Plan, cfg: Recipe) -> str | None:
    """Log the plan to MLflow (a ``plan`` run, nested under the pipeline run when one is open); returns its id."""
    import tempfile

    from tuna import track

    with track.stage_run("plan", cfg) as run:
        run.log_params({"plan": {"variant": plan.variant, "gpus": plan.gpus, "precision": plan.precision,
                                 "sources": plan.sources, "micro_batch": plan.micro_batch, "sequence": plan.sequence}})
        metrics: dict[str, float] = {f"params_{p}": n for p, n in plan.parts.items()}
        metrics |= {"params_total": plan.total, "params_llava": plan.llava_total}
        metrics |= {f"params_trainable_stage{s}": n for s, n in plan.trainable.items()}
        metrics |= {f"mem_gib_stage{r.stage}_zero{r.zero}_{'ckpt' if r.checkpointing else 'nockpt'}": r.total / GIB
                    for r in plan.rows}
        run.log_metrics(metrics)
        with tempfile.TemporaryDirectory(prefix="tuna-plan-") as tmp:
            path = Path(tmp) / "plan.json"
            path.write_text(json.dumps(plan.to_dict(), indent=1), encoding="utf-8")
            run.log_artifact(path)
        return run.run_id


def run_plan(cfg: Recipe, variant: str = "tuna", as_json: bool = False, track_it: bool = True,
             out: Callable[[str], None] = print) -> Plan:
    """`tuna plan`: print the table (or the JSON), then log to MLflow when tracking is configured and wanted."""
    plan = make_plan(cfg, variant)
    text = [json.dumps(plan.to_dict(), indent=1)] if as_json else plan_lines(plan)
    for line in text:
        out(line)
    if track_it and tracking_configured(cfg):
        try:
            run_id = log_plan(plan, cfg)
        except TunaError as err:   # the table is out; say how to get it without MLflow
            raise TunaError(f"{err}; or plan without logging: tuna plan --no-track") from None
        if not as_json:
            out(f"  logged to MLflow run {run_id}")
    return plan


__all__ = ["MemoryRow", "Plan", "PlanError", "activation_bytes", "log_plan", "make_plan", "memory_rows", "plan_lines",
           "resolve_configs", "run_plan", "tracking_configured"]
