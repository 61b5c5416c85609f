"""The fast mining path (numpy BLAS, compact tokens, exact-duplicate reuse, GC paused per batch) gives
exactly the tags of the plain spaCy path (thinc's default BLIS, spaCy Token objects, every caption
parsed) on the smoke world's captions and on crafted repeats."""

from __future__ import annotations

import gc
import random

import pytest

from tuna.errors import CorruptSample
from tuna.formats import iter_web
from tuna.recipe import MineConfig, Recipe
from tuna.samples import caption_text
from tuna.sources import sources
from tuna.tags.miner import CaptionTags, TagMiner


@pytest.fixture(scope="module")
def plain_miner() -> TagMiner:
    return TagMiner(MineConfig(), fast=False)


def world_captions(cfg: Recipe) -> list[str]:
    out = []
    for domain in ("A", "B"):
        for sample in iter_web(sources(cfg).web(domain).path):
            try:
                out.append(caption_text(sample, cfg.mine.max_caption_chars))
            except CorruptSample:
                continue
    return out


def test_fast_path_gives_the_plain_spacy_paths_tags_on_the_smoke_captions(
        smoke_world: tuple[Recipe, dict], miner: TagMiner, plain_miner: TagMiner) -> None:
    cfg, _ = smoke_world
    captions = world_captions(cfg)
    assert len(captions) > 300
    assert miner.fast and not plain_miner.fast
    fast, plain = list(miner.mine(captions)), list(plain_miner.mine(captions))
    assert len(fast) == len(plain) == len(captions)
    differences = [(c, f, p) for c, f, p in zip(captions, fast, plain) if f != p]
    assert differences == []


def test_repeated_captions_get_their_own_rows_and_the_same_tags(miner: TagMiner, plain_miner: TagMiner) -> None:
    base = ["a small red zedul and a dotted pivin", "A blue tunic by Zolvar in Port Ashby", "stock photo",
            "two red zeduls and three berries", "", "a crosshatched glozhair"]
    rng = random.Random(0)
    captions = base + [rng.choice(base) for _ in range(60)] + base[::-1]
    small = TagMiner.__new__(TagMiner)  # the loaded session miner with batches of 4, so repeats cross batches
    small.__dict__.update(miner.__dict__)
    small.cfg = MineConfig(batch_size=4)
    before = small.duplicates
    out = list(small.mine(captions))
    assert len(out) == len(captions)
    assert out == list(plain_miner.mine(captions))
    assert small.duplicates - before == len(captions) - len(set(captions))
    assert captions[-1] == captions[0] and out[-1] == out[0] and out[-1] is not out[0]
    out[-1].tags.append("changed")  # a repeat's lists are its own
    assert "changed" not in out[0].tags
    assert out[4] == CaptionTags()


def test_repeats_are_reused_within_one_call_only(miner: TagMiner) -> None:
    captions = ["a teal ringed quarei", "a teal ringed quarei"]
    before = miner.duplicates
    list(miner.mine(captions))
    list(miner.mine(captions))  # a second call parses its first caption again (no state between calls)
    assert miner.duplicates - before == 2


def test_plain_path_parses_every_caption(plain_miner: TagMiner) -> None:
    before = plain_miner.duplicates
    assert len(list(plain_miner.mine(["a zedul"] * 5))) == 5
    assert plain_miner.duplicates == before


def test_numpy_blas_only_for_the_miners_own_pipeline(miner: TagMiner, plain_miner: TagMiner) -> None:
    import spacy
    from thinc.api import NumpyOps, get_current_ops

    fast_ops = {type(n.ops).__name__ + str(getattr(n.ops, "use_blis", None)) for n in miner.nlp.get_pipe("tok2vec").model.walk()}
    assert fast_ops == {"NumpyOpsFalse"}
    assert miner.nlp.get_pipe("ner").model.ops.use_blis is False
    assert plain_miner.nlp.get_pipe("tok2vec").model.ops.use_blis is True
    assert type(get_current_ops()) is NumpyOps and get_current_ops().use_blis  # the process default is untouched
    assert spacy.blank("en").tokenizer is not None and get_current_ops().use_blis


def test_gc_state_restored_between_batches(miner: TagMiner) -> None:
    small = TagMiner.__new__(TagMiner)
    small.__dict__.update(miner.__dict__)
    small.cfg = MineConfig(batch_size=2)
    seen = []
    for _ in small.mine(["a zedul", "a pivin", "a red zedul", "a blue pivin", "a zenai"]):
        seen.append(gc.isenabled())  # the caller runs with the collector as it left it
    assert seen == [True] * 5
    gc.disable()
    try:
        list(small.mine(["a zedul", "a pivin", "a red zedul"]))
        assert not gc.isenabled()  # never switched on behind the caller's back
    finally:
        gc.enable()


def test_embedding_memo_wraps_both_tok2vecs_and_matches_their_own_layers(miner: TagMiner, plain_miner: TagMiner) -> None:
    import numpy as np

    assert [m.features.attrs["columns"] for m in miner.memos] == [
        ["NORM", "PREFIX", "SUFFIX", "SHAPE", "SPACY", "IS_SPACE"], ["NORM", "PREFIX", "SUFFIX", "SHAPE"]]  # tok2vec, ner
    assert plain_miner.memos == []
    captions = ["a small red zedul and a dotted pivin", "A blue tunic by Zolvar in Port Ashby", "", "stock photo"] * 20
    docs = [miner.nlp.make_doc(c) for c in captions]
    for memo in miner.memos:
        memo.reset()
        tokens, computed = memo.tokens, memo.computed
        got = memo.node.predict(docs)
        want = memo.original(memo.node, docs, False)[0]
        assert [g.shape for g in got] == [w.shape for w in want]
        # the same layers on a different matrix shape: equal up to float32 rounding
        assert max(float(np.abs(g - w).max()) for g, w in zip(got, want) if len(g)) < 1e-5
        assert memo.tokens - tokens == sum(len(d) for d in docs)
        assert memo.computed - computed == len({(t.norm_, t.text, bool(t.whitespace_)) for d in docs for t in d})
        again = memo.computed
        memo.node.predict(docs[:4])  # remembered: nothing computed again
        assert memo.computed == again
