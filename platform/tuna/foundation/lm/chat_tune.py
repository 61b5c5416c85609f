"""Chat tuning of the tiny Llama after pre-training: what makes a LLaMA a Vicuna, on text-only conversations.

Pre-training reads the scene-membership and retrieval-reading documents as plain text, where their one-token
answers ("Yes", "No", a class name) are a few percent of the loss: whether the tiny LM picks up the skill they
carry (list membership: "is X among the things named?") then depends on luck (the membership probe of mini's LM
went from 80% to chance when the world's instruction text changed on 2026-12-04). Chat tuning trains on the same
kind of conversations with the loss on the assistant turns only, as Vicuna's supervised fine-tuning does, and mixes
in pre-training text (loss on every token) so the class knowledge stays.

Pure torch / transformers: nothing here writes files or touches a tracking engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tuna.errors import DataFormatError
from tuna.schedule import warmup_cosine

ASSISTANT, USER = " ASSISTANT:", " USER:"  # the chat markers of the conversations (vicuna_v1's roles)


def marker_ids(tokenizer: Any, marker: str) -> list[int]:
    """Token ids of ``marker`` as it appears inside a conversation (after a space, without ``<s>``)."""
    ids = tokenizer.encode(marker, add_special_tokens=False)
    if not ids:
        raise DataFormatError(f"the tokenizer encodes the chat marker {marker!r} to no tokens; train it on chat text")
    return ids


def _find(seq: Sequence[int], sub: Sequence[int], start: int) -> int:
    """First index >= ``start`` where ``sub`` occurs in ``seq``; -1 when it does not."""
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if list(seq[i:i + n]) == list(sub):
            return i
    return -1


def answer_labels(ids: Sequence[int], assistant: Sequence[int], user: Sequence[int]) -> list[int]:
    """``ids`` where a token belongs to an assistant turn (after an ``assistant`` marker, up to the next ``user``
    marker or the end, end-of-sequence included), -100 elsewhere: the loss of chat tuning."""
    labels = [-100] * len(ids)
    i = _find(ids, assistant, 0)
    while i >= 0:
        begin = i + len(assistant)
        end = _find(ids, user, begin)
        stop = len(ids) if end < 0 else end
        labels[begin:stop] = list(ids[begin:stop])
        i = _find(ids, assistant, stop)
    return labels


def _batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(x) for x, _ in rows)
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (xi, yi) in enumerate(rows):
        x[r, :len(xi)], y[r, :len(yi)], mask[r, :len(xi)] = torch.tensor(xi), torch.tensor(yi), 1
    return {"input_ids": x, "labels": y, "attention_mask": mask}


def chat_tune(model: Any, tokenizer: Any, conversations: Sequence[list[int]], text: Sequence[list[int]], *,
              steps: int, batch_size: int, lr: float, text_share: float, max_tokens: int, warmup: float, seed: int,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` AdamW steps of ``batch_size`` documents: conversations (token ids,
    loss on the assistant turns) and, ``text_share`` of each batch, text documents (loss on every token), each cut
    to ``max_tokens``. Returns the step counts, the first and last losses and the seconds taken."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    assistant, user = marker_ids(tokenizer, ASSISTANT), marker_ids(tokenizer, USER)
    convs = [(c[:max_tokens], answer_labels(c[:max_tokens], assistant, user)) for c in conversations]
    convs = [(x, y) for x, y in convs if any(t != -100 for t in y)]
    n_text = round(text_share * batch_size) if text else 0
    if not convs:
        raise DataFormatError(f"chat tuning found no conversation with an assistant turn ({ASSISTANT.strip()!r} "
                              f"then an answer) among {len(conversations)}; set lm.scene_docs_per_class or "
                              f"lm.reading_docs_per_class, or lm.chat_steps: 0")
    texts = [(t[:max_tokens], t[:max_tokens]) for t in text]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng = np.random.default_rng(seed + 1_299_709)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, round(warmup * steps)), steps))
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        rows = [convs[int(i)] for i in rng.integers(len(convs), size=batch_size - n_text)]
        rows += [texts[int(i)] for i in rng.integers(len(texts), size=n_text)] if n_text else []
        loss = model(**_batch(rows, pad), use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 4) == 0 or step + 1 == steps:
            log(f"lm chat tuning step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.3f} "
                f"({time.perf_counter() - t0:.0f}s)")
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "conversations": len(convs), "text_per_batch": n_text,
            "first": round(losses[0], 4), "last": round(float(np.mean(losses[-50:])), 4),
            "train_seconds": round(time.perf_counter() - t0, 1)}


__all__ = ["ASSISTANT", "USER", "answer_labels", "chat_tune", "marker_ids"]
