"""The `tuna lm` step: train the world's tokenizer and tiny Llama, or load any causal LM by path or hub id.

TUNA's language model must know every class name, held-out (OOD) ones included, the way a real LLM
knows "mangosteen": the alignment gap is in the connector, not the LM. So:

- locally, :func:`train_lm` trains a byte-level BPE tokenizer and a tiny ``LlamaForCausalLM`` on the
  world's training-side text (text corpus, alignment captions, instruction conversations; never the
  eval folders) and saves both with ``save_pretrained`` to ``<data_dir>/lm``;
- on a cluster, ``model.language_model`` names the LM (``lmsys/vicuna-7b-v1.5``), loaded the same way
  by :func:`load_lm`.

Both report the same metrics: validation perplexity on held-out text documents, tokens per class
name, and a knowledge probe (greedy ``"Q: What is a zedul? A: A zedul is a"`` -> ``"wavy berry, ..."``)
per split: ID, OOD and domain B.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import tuna.foundation.lm.pretrain as pretrain
from tuna.cpu_math import cpu_math
from tuna.errors import DataFormatError, TunaError
from tuna.foundation.lm.chat_tune import chat_tune
from tuna.foundation.lm.tokenizer import ensure_pad_and_template, tokens_per_name, train_tokenizer
from tuna.layout import layout, lm_path
from tuna.recipe import Recipe, section_fingerprint
from tuna.sources import sources
from tuna.staging import staged_dir

LM_VERSION = "tuna.foundation.lm/2"  # 2: documents isolated in packed blocks; chat markers in the tokenizer
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class LMUnavailable(TunaError, FileNotFoundError):
    """No loadable causal LM (with its tokenizer) at the given path or hub id."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _hf_quiet() -> Iterator[None]:
    """Hide transformers' weight loading / writing progress bars."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_lm(path_or_id: str | Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a folder or a Hugging Face hub id; returns ``(model, tokenizer)``.

    The model is in eval mode; the tokenizer always has a pad token (``<unk>``, else ``</s>``, when the
    checkpoint has none, as Vicuna's) and a chat template (Vicuna v1 when the checkpoint has none).
    Raises :class:`LMUnavailable` (one line, naming the source and the fix) when nothing loads.
    """
    src = str(path_or_id)
    local = Path(src).expanduser()
    fix = ("train one with `tuna lm --config <recipe>` (it writes <run.data_dir>/lm) "
           "or set model.language_model to a causal LM folder or hub id")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise LMUnavailable(f"language model folder {src!r} holds no config.json (not a saved model); {fix}")
        where = str(local)
    elif local.exists():
        raise LMUnavailable(f"language model path {src!r} is a file, not a model folder; {fix}")
    elif isinstance(path_or_id, Path) or src.startswith((".", "/", "~")) or not _HUB_ID.match(src):
        raise LMUnavailable(f"no language model at {src!r} (no such folder); {fix}")
    else:
        where = src  # a hub id: from the local cache, or downloaded where the hub is reachable
    try:
        AutoConfig.from_pretrained(where)
        tokenizer = AutoTokenizer.from_pretrained(where)
        with _hf_quiet():
            model = AutoModelForCausalLM.from_pretrained(where, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError, KeyError) as err:
        raise LMUnavailable(f"cannot load causal language model {src!r} ({_one_line(err)}); {fix}") from None
    return model.eval(), ensure_pad_and_template(tokenizer)


def _llava_lm(path: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """The causal LM inside a LLaVA folder (``model.llava``) and the folder's tokenizer."""
    from tuna.model.from_llava import llava_language_model, load_llava

    with _hf_quiet():
        model = llava_language_model(load_llava(path, dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise LMUnavailable(f"model.llava: no tokenizer in {path!r} ({_one_line(err)}); save the LLaVA's tokenizer "
                            f"(or processor) into that folder") from None
    return model.eval(), ensure_pad_and_template(tokenizer)


# ------------------------------------------------------------------------------------------ evaluation


def _taxonomy(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: not found; generate the world first (tuna world)") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err.msg})") from None


def evaluate_lm(model: Any, tokenizer: Any, corpus: pretrain.Corpus, taxonomy: dict[str, Any], seed: int = 0
                ) -> dict[str, Any]:
    """Validation perplexity on the held-out text documents, tokens per class name, the knowledge probe and the
    membership probe (held-out scene texts of ``seed``)."""
    splits = pretrain.probe_classes(taxonomy)
    return {
        "val": pretrain.perplexity(model, tokenizer, corpus.val),
        "tokens_per_name": {s: tokens_per_name(tokenizer, [c["name"] for c in cs]) for s, cs in splits.items()},
        "probe": pretrain.knowledge_probe(model, tokenizer, taxonomy),
        "membership": pretrain.membership_probe(model, tokenizer, taxonomy, seed),
    }


def summary_line(metrics: dict[str, Any]) -> str:
    """``val ppl 2.41 | probe coarse ID 100.0% OOD 100.0% B 100.0% | tokens/name ID 1.00 OOD 1.00 B 1.00``."""
    if "skipped" in metrics:
        return f"not evaluated ({metrics['skipped']})"
    probe = metrics.get("probe", {})
    names = metrics.get("tokens_per_name", {})
    parts = [f"val ppl {metrics['val']['perplexity']:.2f}"] if "val" in metrics else []
    parts.append("probe coarse " + " ".join(f"{s.upper()} {100 * probe[s]['coarse']:.1f}%"
                                            for s in pretrain.PROBE_SPLITS if s in probe))
    parts.append("tokens/name " + " ".join(f"{s.upper()} {names[s]['mean']:.2f}"
                                           for s in pretrain.PROBE_SPLITS if s in names))
    member = metrics.get("membership", {})
    if member:
        parts.append("membership " + " ".join(f"{s.upper()} {100 * member[s]['accuracy']:.1f}%"
                                              for s in pretrain.PROBE_SPLITS if s in member))
    return " | ".join(parts)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric metrics for tracking: ``val_perplexity``, ``probe_coarse_ood``, ``tokens_per_name_b``, ..."""
    if "skipped" in metrics:
        return {}
    out = {"val_loss": float(metrics["val"]["loss"]), "val_perplexity": float(metrics["val"]["perplexity"])}
    for s in pretrain.PROBE_SPLITS:
        for key in ("coarse", "superordinate", "exact"):
            if s in metrics["probe"]:
                out[f"probe_{key}_{s}"] = float(metrics["probe"][s][key])
        if s in metrics["tokens_per_name"]:
            out[f"tokens_per_name_{s}"] = float(metrics["tokens_per_name"][s]["mean"])
        if s in metrics.get("membership", {}):
            out[f"membership_{s}"] = float(metrics["membership"][s]["accuracy"])
    return out


# ------------------------------------------------------------------------------------------- training


def _corpus_paths(cfg: Recipe) -> list[Path]:
    """The LM's input files, from the recipe's data: sources."""
    src = sources(cfg)
    return [src[name].path for name in pretrain.CORPUS_SOURCES]


def _inputs(cfg: Recipe, corpus_hash: str) -> dict[str, Any]:
    """Everything the trained weights depend on; equal inputs mean the saved LM is up to date."""
    inputs = {"lm_config": section_fingerprint(cfg.lm), "seed": cfg.run.seed, "corpus": corpus_hash}
    if cfg.lm.reading_docs_per_class:
        inputs["num_tags"] = reading_tags(cfg)  # the reading documents list the whole image's tags
    return inputs


def reading_tags(cfg: Recipe) -> int:
    """Tags per reading document: the whole image's (``model.num_tags`` less one per ``model.region_grid`` cell; stage 2
    appends the cells' tags to its reading conversations, as retrieval does)."""
    return cfg.model.whole_image_tags


def is_up_to_date(cfg: Recipe) -> bool:
    """True when ``<data_dir>/lm`` was trained by this code from the same lm config, seed and input text."""
    target = layout(cfg).lm
    try:
        manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        corpus_hash = pretrain.corpus_sha256(_corpus_paths(cfg))
    except (OSError, json.JSONDecodeError, DataFormatError):
        return False
    return (manifest.get("version") == LM_VERSION and manifest.get("inputs") == _inputs(cfg, corpus_hash)
            and (target / "config.json").is_file() and (target / "tokenizer.json").is_file())


def train_lm(cfg: Recipe, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the tokenizer and the tiny Llama on the world text, evaluate, save to ``<data_dir>/lm``.

    The folder holds the model and tokenizer (``save_pretrained``), ``manifest.json`` (inputs
    fingerprint, corpus hash, config, parameter count, timings, loss curve) and ``metrics.json``. It is
    written beside the target and renamed into place at the end. Returns the manifest.
    """
    from tuna.retrieval.clip import weights_sha256

    lm = cfg.lm
    taxonomy = _taxonomy(sources(cfg)["taxonomy"].path)
    target = layout(cfg).lm
    t0 = time.perf_counter()
    with cpu_math(lm.threads), staged_dir(target, "language model") as tmp:
        corpus = pretrain.load_corpus(_corpus_paths(cfg), lm.val_fraction, cfg.run.seed)
        reading = pretrain.reading_documents(taxonomy, lm.reading_docs_per_class, cfg.run.seed, reading_tags(cfg))
        reading += pretrain.scene_documents(taxonomy, lm.scene_docs_per_class, cfg.run.seed, lm.scene_look_alike_share)
        # the chat-layout documents teach the tokenizer the template's markers ("ASSISTANT:" one token, not ten)
        tokenizer = train_tokenizer(corpus.tokenizer_texts() + reading, lm.vocab_size, lm.max_length)
        docs = pretrain.encode_documents(tokenizer, corpus.documents(lm.text_repeats) + reading)
        torch.manual_seed(cfg.run.seed)
        model = pretrain.build_model(lm, tokenizer)
        params = _count_params(model)
        log(f"lm: LlamaForCausalLM with {params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, "
            f"{sum(len(d) for d in docs)} tokens x {lm.epochs} epochs on {lm.threads} threads")
        curve = pretrain.pretrain(model, docs, lm, cfg.run.seed, progress, log)
        # docs = text x text_repeats + captions + answers + reading: chat tuning reuses their token ids
        chat = (chat_tune(model, tokenizer, docs[len(docs) - len(reading):], docs[:len(corpus.text)], steps=lm.chat_steps,
                          batch_size=lm.chat_batch_size, lr=lm.chat_lr, text_share=lm.chat_text_share,
                          max_tokens=lm.block_size, warmup=lm.warmup, seed=cfg.run.seed, log=log)
                if lm.chat_steps else None)
        t_eval = time.perf_counter()
        metrics = evaluate_lm(model, tokenizer, corpus, taxonomy, cfg.run.seed)
        eval_seconds = time.perf_counter() - t_eval
        with _hf_quiet():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = weights_sha256(model)
        manifest = {
            "version": LM_VERSION,
            "inputs": _inputs(cfg, corpus.sha256),
            "weights_hash": weights,
            "fingerprint": weights[:16],
            "corpus_hash": corpus.sha256,
            "corpus": {**corpus.counts, "train_tokens": curve["tokens_per_epoch"], "val_tokens": metrics["val"]["tokens"]},
            "config": cfg.to_dict()["lm"],
            "seed": cfg.run.seed,
            "vocab_size": len(tokenizer),
            "params": params,
            "loss": {k: curve[k] for k in ("first", "last_epoch", "per_epoch", "steps", "batch_size", "block_size")},
            "chat_tuning": chat,
            "val_perplexity": metrics["val"]["perplexity"],
            "probe_coarse": {s: metrics["probe"][s]["coarse"] for s in pretrain.PROBE_SPLITS if s in metrics["probe"]},
            "membership": {s: v["accuracy"] for s, v in metrics["membership"].items()},
            "tokens_per_name": {s: v["mean"] for s, v in metrics["tokens_per_name"].items()},
            "train_seconds": round(curve["train_seconds"] + (chat["train_seconds"] if chat else 0.0), 1),
            "eval_seconds": round(eval_seconds, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "threads": lm.threads,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        metrics["lm"] = str(target)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    log(f"lm {manifest['fingerprint']} written to {target} in {manifest['total_seconds']:.0f}s "
        f"(training {manifest['train_seconds']:.0f}s); {summary_line(metrics)}")
    return manifest


def run_lm(cfg: Recipe, force: bool = False, progress: bool = True,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``tuna lm`` step: evaluate ``model.language_model`` when set, else train (unless up to date).

    Returns ``{"status": "trained" | "up to date" | "loaded", "path", "params", "vocab_size", "metrics"}``.
    """
    if cfg.model.language_model or cfg.model.llava:
        gpu = torch.cuda.is_available()
        model, tokenizer = (load_lm(cfg.model.language_model, dtype=torch.bfloat16 if gpu else None) if cfg.model.language_model
                            else _llava_lm(cfg.model.llava, dtype=torch.bfloat16 if gpu else None))
        model = model.to("cuda") if gpu else model
        missing = [n for n in (*pretrain.CORPUS_SOURCES, "taxonomy") if not sources(cfg).has(n)]
        if missing:   # real data: the world's text and class names are not there to evaluate on
            metrics: dict[str, Any] = {"skipped": f"{', '.join(f'data.{n}' for n in missing)} disabled"}
        else:
            corpus = pretrain.load_corpus(_corpus_paths(cfg), cfg.lm.val_fraction, cfg.run.seed)
            with cpu_math(cfg.lm.threads):
                metrics = evaluate_lm(model, tokenizer, corpus, _taxonomy(sources(cfg)["taxonomy"].path), cfg.run.seed)
        metrics["lm"] = lm_path(cfg)
        return {"status": "loaded", "path": lm_path(cfg), "params": _count_params(model),
                "vocab_size": len(tokenizer), "metrics": metrics}
    target = layout(cfg).lm
    if not force and is_up_to_date(cfg):
        manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        status = "up to date"
    else:
        manifest = train_lm(cfg, progress=progress, log=log)
        status = "trained"
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    return {"status": status, "path": str(target), "params": manifest["params"], "vocab_size": manifest["vocab_size"],
            "fingerprint": manifest["fingerprint"], "metrics": metrics, "train_seconds": manifest["train_seconds"]}
