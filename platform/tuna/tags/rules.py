"""The tag rules: a tagged caption's tokens -> objects, attribute pairs, entities and flat tags.

:class:`TagRules` reads only token attributes named as on spaCy's ``Token`` (``i``, ``text``,
``lower_``, ``tag_``, ``is_alpha``, ``is_punct``, ``like_num``) and NER spans, plus the English word
tables of the pipeline's lemmatizer; :class:`tuna.tags.miner.TagMiner` runs the pipeline and feeds it.

Per caption the rules return:

- ``objects``: head nouns with their noun compounds ("wine glass"), lowercased and singular
  ("zeduls" -> "zedul"; the determiner decides first, so "a kouzaines" stays), generic words
  (image, photo, background, ...) dropped;
- ``attributes``: adjectives and participles that modify an object ("striped", "purple");
- ``entities``: names of people, brands and places (spaCy NER on capitalised text; a bare phrase
  after "by" or after "in/at/from/over/..." whose words are not English nouns; "the Xyz collection";
  capitalised proper nouns NER missed in a caption that is not title case; camel case, "iPhone");
- ``tags``: the flat list a datastore row stores: every object, then one "attribute object" phrase
  per attribute of each object, then the entities; de-duplicated, in caption order.

Real captions (COCO/CC3M-like; bench/mine_real.py scores them against hand-written gold) add:

- a verb right after a noun ends the noun's phrase ("a chef | preparing | sushi", "a bear
  swimming/NN"), except -ing nouns ("a brick building") and -ing modifiers between nouns;
- trailing participles and adjectives after a noun are dropped ("a lake surrounded by", "a basket
  full of"), and a bare phrase after such a participle + "by" is its agent, not a credit;
- "X of Y" with a quantity or collection X names Y only ("a group of people" -> person, "a slice of
  pizza" -> pizza); containers stay ("a cup of coffee" -> cup, coffee);
- an English plural is made singular whatever the determiner ("a man grilling burgers");
- time words are no objects ("at night"); possessors are objects of their own ("a dog's face").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuna.tags import lexicon as lx

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Token


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



class TagRules:
    """The phrase rules over one caption's tokens, with the English word tables they consult."""

    def __init__(self, nlp: Language) -> None:
        nouns: set[str] = set()
        adjs: set[str] = set()
        words: set[str] = set()
        verbs: set[str] = set()
        advs: set[str] = set()
        irregular = dict(lx.IRREGULAR_PLURALS)
        if "lemmatizer" in nlp.component_names:
            lookups = nlp.get_pipe("lemmatizer").lookups
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
        # Adjective-only words ("new", "wavy"); not the plurals of nouns the table also lists as slang
        # adjectives ("clouds", "nuts", "bats": "in the clouds" names clouds).
        plurals = {w for w in adjs if w.endswith("s") and (w[:-1] in nouns or (w.endswith("es") and w[:-2] in nouns))}
        self.known_adjs = frozenset(adjs - nouns - plurals)
        self.adj_words = frozenset(adjs)  # any word the tables list as an adjective ("full", also a noun)
        self.known_words = frozenset(words)  # any English content word the tables list
        self.known_verbs = frozenset(verbs)
        self.known_advs = frozenset(advs - nouns)
        self.irregular = irregular

    def extract_tokens(self, toks: Sequence[Any], ents: Iterable[tuple[str, int, int]] = ()) -> CaptionTags:
        """The tag rules over a caption's tokens (see :meth:`tuna.tags.miner.TagMiner.tokens`) and its NER spans (label, start, end)."""
        entities: list[str] = []
        in_entity: set[int] = set()
        for label, start, end in ents:
            name = _capitalised_part(toks[start:end]) if label in lx.ENTITY_LABELS else []
            if name:
                entities.append(" ".join(t.lower_ for t in name if not t.is_punct))
                in_entity.update(t.i for t in name)
        objects: list[str] = []
        pairs: list[tuple[str, str]] = []
        chunks = list(_chunks(toks, self.known_words, self._is_finite_verb, self._is_verb_after_noun))
        carry: tuple[str, list[str], list[Token]] | None = None
        for k, (prep, dets, words) in enumerate(chunks):
            if carry is not None:  # "a black and | white dog": the first colour is the dog's too
                prep, dets, words, carry = carry[0], carry[1], carry[2] + words, None
            if k + 1 < len(chunks) and self._is_quantity(toks, words):
                continue  # "a group of people": the next phrase names the thing
            if k + 1 < len(chunks) and self._is_coordinated_attribute(toks, words, chunks[k + 1][2]):
                carry = (prep, dets, words)
                continue
            self._phrase(toks, prep, dets, words, in_entity, objects, pairs, entities)
        objects = list(dict.fromkeys(objects))
        pairs = list(dict.fromkeys(pairs))
        entities = list(dict.fromkeys(e for e in entities if e))
        attributes = list(dict.fromkeys(a for a, _ in pairs))
        tags = list(dict.fromkeys(objects + [f"{a} {o}" for a, o in pairs] + entities))
        return CaptionTags(objects=objects, attributes=attributes, entities=entities, tags=tags, pairs=pairs)

    def _phrase(self, toks: Sequence[Any], prep: str, dets: list[str], words: list[Token], in_entity: set[int],
                objects: list[str], pairs: list[tuple[str, str]], entities: list[str]) -> None:
        # A trailing participle after a noun is a verb ("a zenai photographed by ...", "a frozen lake
        # surrounded by ...", "a vase filled with ..."), as is a trailing adjective ("cookies fresh from").
        while len(words) >= 2 and self._is_trailing(words[-1], words[-2]):
            words = words[:-1]
        # A picture word after a noun names the picture, not the noun ("a red dress stock photo").
        while (len(words) >= 2 and words[-1].lower_ in lx.GENERIC_WORDS and self._is_nounish(words[-2])
               and words[-2].tag_ in lx.NOUN_TAGS):  # not "aerial/JJ view"
            words = words[:-1]
        words = [w for w in words if w.is_alpha or "-" in w.text]
        if not words or "no" in dets:
            return  # "with no mark" names what is absent
        head = words[-1]
        low = head.lower_
        if head.i in in_entity:  # the phrase ends in an entity already kept ("actor John Smith")
            before = [w for w in words if w.i < head.i and w.i not in in_entity]
            if before and before[-1].i + 1 in in_entity and not self._is_attribute_word(before[-1]):
                self._phrase(toks, prep, dets, before, in_entity, objects, pairs, entities)
            return
        if low in lx.SELLER_HEADS:  # "the Xyz collection", "xyz store": the maker is a name
            names = [w for w in words[:-1] if w.i not in in_entity and not self._is_attribute_word(w)]
            if not names:
                return
            if all(w.lower_ not in self.known_nouns or w.text[:1].isupper() for w in names):
                entities.append(" ".join(w.lower_ for w in names))
                return  # otherwise an ordinary object ("coffee shop")
        if low in lx.GENERIC_WORDS or low in self.known_adjs or low in lx.NON_OBJECT_HEADS:
            return
        if head.text[:1].islower() and not head.text.islower() and head.text[1:].lower() != head.text[1:]:
            entities.append(low)  # a camel-case brand the tagger and NER miss ("an iPhone", "eBay")
            return
        run = len(words)
        while run > 0 and words[run - 1].text[:1].isupper():
            run -= 1
        if run < len(words) and self._is_unlabelled_name(toks, words[run:]):
            entities.append(" ".join(w.lower_ for w in words[run:]))  # "the new Tesla Model": the name part
            return
        if low in lx.ATTRIBUTE_WORDS and not (dets and len(words) == 1 and low in self.known_nouns):
            return  # a predicate or elliptic adjective ("is red"); "an orange" is still a fruit
        mods = words[:-1]
        if not dets and prep in lx.CREDIT_PREPS | lx.PLACE_PREPS and not any(self._is_attribute_word(w) for w in mods):
            # A bare phrase after "by" is a credit (unless it is the agent of a participle, "surrounded
            # by pine trees"); after "in/at/from/near" a place when its words are not all English nouns
            # or the tagger calls them proper nouns ("in mirefield", "in ostrava bay").
            named = (any(w.lower_ not in self.known_nouns and self.singular(w.lower_) not in self.known_nouns for w in words)
                     or all(w.tag_ in ("NNP", "NNPS") for w in words))
            if named or (prep in lx.CREDIT_PREPS and not self._is_agent(toks, words)):
                entities.append(" ".join(w.lower_ for w in words))
                return
        if not dets and (head.tag_ in lx.PARTICIPLE_TAGS
                         or (head.tag_ in lx.ADJ_TAGS and low not in self.known_nouns and low not in self.irregular)):
            return  # a bare adjective or participle ("free", "isolated", "walking") names nothing; "geese/JJ" does
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

    def _is_nounish(self, w: Token) -> bool:
        """A word that can end a noun phrase: tagged a noun, an English noun whatever its tag
        ("kitten/JJ"), or unknown to the tables; never an attribute word."""
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or low in self.known_adjs:
            return False
        return w.tag_ in lx.NOUN_TAGS or low in self.known_nouns or (w.is_alpha and low not in self.known_words)

    def _is_trailing(self, w: Token, before: Token) -> bool:
        """``w`` after ``before`` at the end of a phrase is no part of it: a participle or past form
        after any word but an attribute word (the old rule), or, after a noun, an English participle
        or adjective the tables list as an adjective too ("surrounded", "filled", "fresh")."""
        if self._is_verb_form(w) and not self._is_attribute_word(before):
            return True
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or not self._is_nounish(before):
            return False
        if w.tag_ in lx.ADJ_TAGS and low in self.adj_words:
            return True  # "a basket full/JJ of", also a noun in the tables
        return low in self.known_adjs and (w.tag_ in lx.PARTICIPLE_TAGS or low.endswith("ed"))

    def _verb_stem(self, low: str) -> bool:
        """True when an -ing word is a form of a known English verb ("preparing", "swimming", "lying")."""
        if not low.endswith("ing") or len(low) < 5:
            return False
        stem = low[:-3]
        verbs = self.known_verbs
        return (stem in verbs or stem + "e" in verbs or (len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in verbs)
                or (stem.endswith("y") and stem[:-1] + "ie" in verbs))

    def _is_verb_after_noun(self, w: Token, before: Token, after: Token | None) -> bool:
        """``w`` right after the noun ``before`` is that noun's verb, so the noun phrase ends before it:
        an -ing form of a known verb ("a chef preparing sushi", "a bear swimming/NN"; not the -ing
        nouns of :data:`~tuna.tags.lexicon.ING_NOUNS`, "a brick building", nor an -ing modifier
        between nouns that the tagger calls a noun or that follows a name, "an ice skating/NN rink",
        "a Nike running shoe") or a word the tables list only as a verb ("actress arrive/NN")."""
        low = w.lower_
        if not w.is_alpha or not self._is_nounish(before):
            return False
        if low.endswith("ing"):
            if low in lx.ING_NOUNS or not (w.tag_ == "VBG" or self._verb_stem(low)):
                return False
            modifier = (after is not None and after.tag_ == "NN" and after.lower_ not in lx.FUNCTION_WORDS
                        and (w.tag_ != "VBG" or before.tag_ in ("NNP", "NNPS")))
            return not modifier
        return (low in self.known_verbs and low not in self.known_nouns and low not in self.known_adjs
                and low not in lx.FUNCTION_WORDS and w.tag_ in ("NN", "VB", "VBP"))

    def _is_agent(self, toks: Sequence[Any], words: list[Token]) -> bool:
        """A bare phrase after "by" names the agent of a participle ("surrounded by trees", "covered by
        snow"), not a credit, when its head is a plural English noun or the participle is no verb of
        making (photographed, painted, designed, ...)."""
        if words[-1].tag_ == "NNS" and words[-1].lower_ not in self.known_nouns and self.singular(words[-1].lower_) in self.known_nouns:
            return True
        k = words[0].i - 2  # the word before "by"
        if k < 0:
            return False
        verb = toks[k]
        return verb.tag_ in ("VBN", "VBD") and verb.lower_ not in lx.CREDIT_VERBS

    def _is_coordinated_attribute(self, toks: Sequence[Any], words: list[Token], following: list[Token]) -> bool:
        """The phrase is only attribute words joined by "and" to the attribute word opening the next
        phrase ("a black and white dog", "a red and blue zedul")."""
        if not all(w.lower_ in lx.ATTRIBUTE_WORDS for w in words):
            return False
        k = words[-1].i + 1
        return (k + 1 < len(toks) and toks[k].lower_ == "and" and bool(following) and following[0].i == k + 1
                and following[0].lower_ in lx.ATTRIBUTE_WORDS and len(following) > 1)

    def _is_unlabelled_name(self, toks: Sequence[Any], words: list[Token]) -> bool:
        """Capitalised proper nouns (a phrase's last words) NER left unlabelled ("the Colosseum", "Elon Musk
        presents ..."), in a caption that is not title case (some word after the first is lowercase,
        so not "Vintage Car On Road"); attribute words never ("A Small Zedul"). At the caption's
        start, where any word is capitalised, it takes two words and one that no table lists."""
        if not all(w.text[:1].isupper() and w.tag_ in ("NNP", "NNPS") and w.lower_ not in lx.ATTRIBUTE_WORDS for w in words):
            return False
        if words[0].i == 0 and (len(words) < 2 or all(self.singular(w.lower_) in self.known_words for w in words)):
            return False
        return any(w.is_alpha and w.text.islower() for w in toks[1:])

    def _is_quantity(self, toks: Sequence[Any], words: list[Token]) -> bool:
        """The phrase is the X of "X of Y" with a quantity or collection X ("a group of", "slices of")."""
        head = words[-1]
        low = head.lower_
        if not (low in lx.QUANTITY_HEADS or self.singular(low) in lx.QUANTITY_HEADS):
            return False
        nxt = head.i + 1
        return nxt < len(toks) and toks[nxt].lower_ == "of"

    def _is_attribute(self, w: Token) -> bool:
        low = w.lower_
        if low in lx.ATTRIBUTE_WORDS or low in self.known_adjs:
            return True
        if low in self.known_nouns:
            if w.tag_ in ("VBG", "VBN") and low.endswith(("ing", "ed")):
                return low not in lx.GENERIC_WORDS  # "a smiling woman", "a parked car"
            return w.tag_ in lx.ADJ_TAGS and low not in lx.GENERIC_WORDS
        return w.tag_ in lx.ADJ_TAGS or w.tag_ in lx.PARTICIPLE_TAGS or (low.endswith("ed") and len(low) > 4)

    def _is_plural(self, dets: list[str], head: Token) -> bool:
        low = head.lower_
        if low.endswith("s") and low not in self.known_nouns and self.singular(low) in self.known_nouns:
            return True  # an English plural ("burgers", "logs") whatever the determiner or tag says
        if self.irregular.get(low, low) != low and low not in self.known_nouns:
            return True  # "geese/JJ", "children"
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



# ------------------------------------------------------------------------------------------ helpers


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


def _chunks(doc: Sequence[Any], known_words: frozenset[str], is_verb: Any,
            verb_after_noun: Any = None) -> Iterator[tuple[str, list[str], list[Token]]]:
    """Base noun phrases as (preceding preposition, determiners, content tokens).

    A phrase opens at a determiner, a number or a preposition (then takes any token: taggers mis-tag
    invented nouns as verbs or adverbs) or at a noun, an adjective or a word no English table lists (a
    bare phrase, which stops at anything else), and closes at punctuation, a conjunction, a
    preposition, an auxiliary, a known finite verb or adverb (``is_verb``) or the next determiner.
    A word that ``verb_after_noun(word, previous word, next word or None)`` calls the verb of the noun before it closes
    the phrase too and is dropped; what follows opens a bare phrase ("a chef | preparing | sushi").
    """
    determiners, function_words, attribute_words = lx.DETERMINERS, lx.FUNCTION_WORDS, lx.ATTRIBUTE_WORDS
    punct_tags, boundary_tags, bare_openers, prepositions = lx.PUNCT_TAGS, lx.BOUNDARY_TAGS, lx.BARE_OPENERS, lx.PREPOSITIONS
    prep = ""
    dets: list[str] = []
    words: list[Token] = []
    open_ = False
    for k, tok in enumerate(doc):
        low = tok.lower_
        tag = tok.tag_
        if low in determiners or (not words and (tag in _DET_TAGS or (tag == "CD" and tok.like_num))):
            if words:
                yield prep, dets, words
                prep, dets, words = "", [], []
            dets.append(low)
            open_ = True
            continue
        if words and verb_after_noun is not None and verb_after_noun(tok, words[-1], doc[k + 1] if k + 1 < len(doc) else None):
            yield prep, dets, words
            prep, dets, words, open_ = "", [], [], False
            continue
        unknown = tok.is_alpha and low not in known_words  # an invented word or a name: its tag is a guess
        if open_:  # after a determiner or preposition only closed-class words and punctuation end a phrase
            boundary = low in function_words or tok.is_punct or tag in punct_tags or is_verb(tok)
        else:
            boundary = ((tag in boundary_tags and not unknown and low not in attribute_words)
                        or low in function_words or tok.is_punct or is_verb(tok))
        if tag == "POS" and words:  # "a dog 's face": the owner is a phrase of its own
            yield prep, dets, words
            prep, dets, words, open_ = "", [], [], True
            continue
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
