"""Pre-training the tiny Llama on the world's text: corpus, model, packed-block loop, perplexity, knowledge probe.

The pieces :func:`tuna.foundation.lm.language_model.train_lm` puts together. Pure torch / transformers: nothing
here writes files or touches a tracking engine.

- :func:`load_corpus` reads the training-side text of a world: the text corpus (every class, OOD and
  domain B included; a seeded share of its documents is held out for validation), the alignment
  captions and the instruction conversations (answers are pre-training text, every turn is tokenizer text);
- :func:`build_model` is a ``LlamaForCausalLM`` sized by the ``lm`` recipe section;
- :func:`pretrain` packs ``<s> document </s>`` sequences into fixed blocks, reshuffled each epoch, and
  trains with AdamW, linear warmup and cosine decay (deterministic for a seed and thread count); the
  text corpus is repeated ``lm.text_repeats`` times per epoch, since the class knowledge lives there;
- :func:`perplexity` scores held-out documents one by one (no packing across documents);
- :func:`knowledge_probe` greedily continues the corpus's own phrasing, ``"Q: What is a zedul? A: A
  zedul is a"``, and checks that the continuation names the class's coarse class (``berry``);
- :func:`membership_probe` asks "Is there a X?" about a one-line scene text (held-out scenes of each split's
  classes) and scores the " Yes" / " No" next-token logits: the list-membership skill POPE needs, text only.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from tuna.errors import DataFormatError
from tuna.formats import iter_text, load_llava
from tuna.recipe import LMConfig
from tuna.schedule import warmup_cosine
from tuna.world.language import article
from tuna.world.reading import reading_samples, scene_samples

CORPUS_SOURCES = ("text", "alignment", "instruction")  # the recipe's data: sources the LM reads (never an eval set)
CORPUS_FILES = ("text/corpus.jsonl", "alignment/pretrain.json", "instruction/instruct.json")  # their names in the hash
PROBE_SPLITS = ("id", "ood", "b")
_WORD = re.compile(r"[a-z]+")


@dataclass
class Corpus:
    """The training-side text of a world, split for pre-training."""

    text: list[str]                      # text-corpus documents kept for training (the class knowledge)
    val: list[str]                       # held-out text-corpus documents (validation perplexity)
    captions: list[str]                  # alignment captions (the gpt turns of the LLaVA pretrain JSON)
    answers: list[str]                   # instruction answers (every gpt turn)
    questions: list[str]                 # instruction questions (every human turn): tokenizer text only
    sha256: str                          # hash of the input files, in CORPUS_FILES order
    counts: dict[str, int] = field(default_factory=dict)

    def documents(self, text_repeats: int = 1) -> list[str]:
        """Pre-training documents: the kept text documents ``text_repeats`` times, captions and answers once."""
        return self.text * text_repeats + self.captions + self.answers

    def tokenizer_texts(self) -> list[str]:
        """What the tokenizer learns from: kept text documents, captions and every instruction turn."""
        return self.text + self.captions + self.questions + self.answers


def corpus_sha256(paths: Sequence[Path]) -> str:
    """sha256 over the names and bytes of the LM input files (``CORPUS_SOURCES`` order); DataFormatError when one is missing."""
    h = hashlib.sha256()
    for rel, path in zip(CORPUS_FILES, paths, strict=True):
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataFormatError(f"{path}: not found; generate the world first (tuna world)") from None
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def load_corpus(paths: Sequence[Path], val_fraction: float, seed: int) -> Corpus:
    """Read the text corpus, alignment captions and instruction conversations (``CORPUS_SOURCES`` order); hold out
    text documents."""
    text_file, alignment, instruction = (Path(p) for p in paths)
    digest = corpus_sha256(paths)
    text = [t for t in iter_text(text_file) if t.strip()]
    if len(text) < 2:
        raise DataFormatError(f"{text_file}: needs at least 2 documents to hold one out, got {len(text)}")
    captions = [turn["value"] for rec in load_llava(alignment) for turn in rec.conversations[1::2]]
    conversations = load_llava(instruction)
    answers = [turn["value"] for rec in conversations for turn in rec.conversations[1::2]]
    questions = [turn["value"] for rec in conversations for turn in rec.conversations[0::2]]
    n_val = min(len(text) - 1, max(1, round(val_fraction * len(text))))
    held = set(np.random.default_rng(seed).permutation(len(text))[:n_val].tolist())
    train_text = [t for i, t in enumerate(text) if i not in held]
    val = [t for i, t in enumerate(text) if i in held]
    return Corpus(text=train_text, val=val, captions=captions, answers=answers, questions=questions, sha256=digest,
                  counts={"text_docs": len(text), "text_train_docs": len(train_text), "text_val_docs": len(val),
                          "captions": len(captions), "answers": len(answers)})


def reading_documents(taxonomy: dict[str, Any], per_class: int, seed: int, k: int = 5) -> list[str]:
    """Retrieval-reading documents (:func:`tuna.world.reading.reading_samples`) in the chat layout of
    instruction tuning, as pre-training text: ``USER: {tags}\n{question} ASSISTANT: {answer}``."""
    return [f"USER: {' '.join(r.tags)}\n{r.question} ASSISTANT: {r.answer}"
            for r in reading_samples(taxonomy, per_class, seed, k)]


def scene_documents(taxonomy: dict[str, Any], per_class: int, seed: int, look_alike_share: float | None = None
                    ) -> list[str]:
    """Scene-membership documents (:func:`tuna.world.reading.scene_samples`) in the chat layout of instruction
    tuning: ``USER: {scene}\n{question} ASSISTANT: {answer} USER: {question} ASSISTANT: {answer} ...``."""
    docs = []
    for s in scene_samples(taxonomy, per_class, seed, look_alike_share=look_alike_share):
        (q0, a0), rest = s.turns[0], s.turns[1:]
        docs.append(f"USER: {s.scene}\n{q0} ASSISTANT: {a0}" + "".join(f" USER: {q} ASSISTANT: {a}" for q, a in rest))
    return docs


def build_model(lm: LMConfig, tokenizer: Any) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary (call ``torch.manual_seed`` first)."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
                         num_hidden_layers=lm.layers, num_attention_heads=lm.heads, num_key_value_heads=lm.kv_heads,
                         max_position_embeddings=lm.max_length, tie_word_embeddings=lm.tie_word_embeddings,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_documents(tokenizer: Any, docs: Sequence[str]) -> list[list[int]]:
    """``<s> document </s>`` token ids per document."""
    if not docs:
        return []
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer(list(docs), add_special_tokens=True)["input_ids"]]


def pack(docs: Sequence[list[int]], order: Sequence[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, block_size) blocks of the documents concatenated in ``order`` and their position ids, which restart at 0
    where a document starts (transformers then lets each token attend only within its own document); the last
    partial block is dropped."""
    flat = [t for i in order for t in docs[i]]
    pos = [p for i in order for p in range(len(docs[i]))]
    n = len(flat) // block_size
    return (torch.tensor(flat[: n * block_size], dtype=torch.long).view(n, block_size),
            torch.tensor(pos[: n * block_size], dtype=torch.long).view(n, block_size))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed_tokens" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(model: LlamaForCausalLM, docs: Sequence[list[int]], lm: LMConfig, seed: int, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model`` in place on packed blocks of ``docs`` (each token sees only its own document); returns the
    loss curve and step counts."""
    total_tokens = sum(len(d) for d in docs)
    blocks_per_epoch = total_tokens // lm.block_size
    if blocks_per_epoch < 1:
        raise DataFormatError(f"the corpus holds {total_tokens} tokens, fewer than one block of lm.block_size "
                              f"{lm.block_size}; lower lm.block_size or grow the world")
    steps_per_epoch = math.ceil(blocks_per_epoch / lm.batch_size)
    total = steps_per_epoch * lm.epochs
    warmup = max(1, round(lm.warmup * total))
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(_param_groups(model, lm.weight_decay), lr=lm.lr, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(warmup, total))
    model.train()
    epoch_losses: list[float] = []
    first: float | None = None
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="lm", unit="step", disable=not progress, leave=False)
    for epoch in range(lm.epochs):
        blocks, positions = pack(docs, rng.permutation(len(docs)).tolist(), lm.block_size)  # new boundaries every epoch
        running = 0.0
        for s in range(steps_per_epoch):
            x = blocks[s * lm.batch_size:(s + 1) * lm.batch_size]               # (B, block_size)
            p = positions[s * lm.batch_size:(s + 1) * lm.batch_size]
            # no attention mask + restarting positions: transformers masks attention across documents
            loss = model(input_ids=x, position_ids=p, labels=x, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            first = value if first is None else first
            running += value
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}", refresh=False)
        epoch_losses.append(running / steps_per_epoch)
        log(f"lm epoch {epoch + 1}/{lm.epochs}: loss {epoch_losses[-1]:.3f} ({time.perf_counter() - t0:.0f}s)")
    bar.close()
    model.eval()
    return {"steps": total, "batch_size": lm.batch_size, "block_size": lm.block_size, "tokens_per_epoch": total_tokens,
            "first": round(first, 4) if first is not None else None, "last_epoch": round(epoch_losses[-1], 4),
            "per_epoch": [round(v, 4) for v in epoch_losses], "train_seconds": round(time.perf_counter() - t0, 1)}


@torch.inference_mode()
def perplexity(model: Any, tokenizer: Any, docs: Sequence[str], batch_size: int = 16) -> dict[str, float]:
    """Token-weighted loss and perplexity of ``docs``, each scored alone as ``<s> document </s>``."""
    ids = encode_documents(tokenizer, docs)
    device = model.device
    nll, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        width = max(len(d) for d in chunk)
        x = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, d in enumerate(chunk):
            x[r, :len(d)] = torch.tensor(d)
            mask[r, :len(d)] = 1
        x, mask = x.to(device), mask.to(device)
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        target = x[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
    loss = nll / max(1, count)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 3), "tokens": count, "docs": len(ids)}


def probe_prompt(name: str) -> str:
    """The text corpus's own question, stopped where the coarse class comes next."""
    a = article(name)
    return f"Q: What is {a} {name}? A: {a.capitalize()} {name} is a"


def _answer_token(tokenizer: Any, word: str) -> int:
    """The first token of ``word`` as an answer after ``ASSISTANT:`` (byte-level and SentencePiece tokenizers alike)."""
    base = tokenizer.encode("ASSISTANT:", add_special_tokens=False)
    full = tokenizer.encode(f"ASSISTANT: {word}", add_special_tokens=False)
    return full[len(base)] if full[:len(base)] == base and len(full) > len(base) else full[-1]


MEMBERSHIP_SEED = 104_729  # added to the run seed: probe scenes differ from the pre-training scene documents


@torch.inference_mode()
def membership_probe(model: Any, tokenizer: Any, taxonomy: dict[str, Any], seed: int, per_class: int = 4,
                     batch_size: int = 32) -> dict[str, Any]:
    """Per split: accuracy and yes-ratio of "Is there a X?" questions about a scene text naming 1..4 objects of the
    split's classes (two questions about named objects, two about unnamed ones: one a look-alike sibling of a named
    object when there is one), answered by comparing the " Yes" and " No" next-token logits after
    ``USER: {scene}\n{question} ASSISTANT:``; ``look_alike_no`` / ``other_no``: accuracy on the two kinds of "No"."""
    yes_id, no_id = (_answer_token(tokenizer, w) for w in ("Yes", "No"))
    out: dict[str, Any] = {}
    for split, classes in probe_classes(taxonomy).items():
        if len(classes) < 2:
            continue
        items = [(f"USER: {s.scene}\n{q} ASSISTANT:", a == "Yes", alike)
                 for s in scene_samples({split: {"classes": classes}}, per_class, seed + MEMBERSHIP_SEED, per_doc=2)
                 for (q, a), alike in zip(s.turns, s.look_alike, strict=True)]
        said = []
        for i in range(0, len(items), batch_size):
            x, mask = _left_padded(tokenizer, [p for p, _, _ in items[i:i + batch_size]])
            last = model(input_ids=x.to(model.device), attention_mask=mask.to(model.device)).logits[:, -1].float()
            said += (last[:, yes_id] > last[:, no_id]).tolist()
        right = [s == t for s, (_, t, _) in zip(said, items)]
        n = len(items)
        out[split] = {"n": n, "accuracy": round(sum(right) / n, 4), "yes_ratio": round(sum(said) / n, 4)}
        for key, keep in (("look_alike_no", lambda t, a: a), ("other_no", lambda t, a: not t and not a)):
            kind = [r for r, (_, t, a) in zip(right, items) if keep(t, a)]
            out[split][key] = round(sum(kind) / len(kind), 4) if kind else None
    return out


def probe_classes(taxonomy: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Probe splits of a world's ``taxonomy.json``: ID and OOD classes of domain A, all of domain B."""
    a = taxonomy.get("A", {}).get("classes", [])
    return {"id": [c for c in a if not c["ood"]], "ood": [c for c in a if c["ood"]],
            "b": list(taxonomy.get("B", {}).get("classes", []))}


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _left_padded(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``prompts`` with ``<s>``, left-padded by hand (a ``padding=True`` call would store
    padding in the tokenizer, and a saved tokenizer would then carry it)."""
    rows = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    width = max(len(r) for r in rows)
    pad = _pad_id(tokenizer)
    x = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return x, mask


@torch.inference_mode()
def greedy_continue(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 10,
                    batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens."""
    out: list[str] = []
    pad = _pad_id(tokenizer)
    for i in range(0, len(prompts), batch_size):
        x, mask = _left_padded(tokenizer, prompts[i:i + batch_size])
        width = x.shape[1]
        gen = model.generate(input_ids=x.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id)
        out.extend(tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True))
    return out


def knowledge_probe(model: Any, tokenizer: Any, taxonomy: dict[str, Any], examples: int = 3) -> dict[str, Any]:
    """Per split: share of classes whose continuation names their coarse class (``coarse``), their
    superordinate (``superordinate``), and reproduces the corpus answer word for word (``exact``:
    ``"wavy berry, a kind of fruit"``); plus a few (prompt, continuation) examples."""
    out: dict[str, Any] = {"prompt": probe_prompt("{name}")}
    for split, classes in probe_classes(taxonomy).items():
        if not classes:
            continue
        texts = greedy_continue(model, tokenizer, [probe_prompt(c["name"]) for c in classes])
        coarse = sup = exact = 0
        for c, text in zip(classes, texts):
            words = _WORD.findall(text.split(".")[0].lower())
            coarse += c["coarse"] in words
            sup += c["superordinate"] in words
            exact += text.strip().startswith(f"{c['pattern']} {c['coarse']}, a kind of {c['superordinate']}")
        n = len(classes)
        out[split] = {"n": n, "coarse": round(coarse / n, 4), "superordinate": round(sup / n, 4),
                      "exact": round(exact / n, 4),
                      "examples": [[probe_prompt(c["name"]), t] for c, t in list(zip(classes, texts))[:examples]]}
    return out
