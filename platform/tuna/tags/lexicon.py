"""Closed word classes the tag miner relies on: generic alt-text words, attribute words, determiners.

These are English lists, not the world's vocabulary: colour, size and pattern adjectives are closed
classes that a small tagger often mis-tags (``purple/NN``, ``wavy/NN``), so the miner recognises them
by word before trusting the part-of-speech tag. Everything is lowercase.
"""

from __future__ import annotations

# Words that describe the picture, not its content (CC3M alt-text boilerplate); a noun phrase headed by
# one of them is dropped with its modifiers ("a textured background", "stock photo", "free image").
GENERIC_WORDS: frozenset[str] = frozenset("""
    image images photo photos photograph photographs picture pictures pic pics view views illustration
    illustrations background backgrounds stock vector vectors clipart clip art artwork close closeup
    close-up shot shots snapshot snapshots sale free isolated copy space copyspace royalty wallpaper
    wallpapers icon icons logo template templates texture design designs concept concepts cartoon
    drawing sketch render rendering scene thing things object objects stuff item items type kind kinds
    bunch set group front side top bottom left right center centre middle close-ups
    one ones something someone nothing portrait portraits foreground
""".split())

# Heads that name no thing in the picture (times, seasons, "in half"): dropped as heads, kept as
# modifiers ("autumn leaves" -> leaf with attribute autumn; "a city in the winter" -> city).
NON_OBJECT_HEADS: frozenset[str] = frozenset("""
    day days night nights daytime nighttime morning mornings afternoon afternoons evening evenings
    time times moment moments year years winter summer autumn spring half halves way distance
""".split())

# "X of Y" where X is a quantity, a collection or a portion: the phrase names Y only ("a group of
# people" -> person, "a slice of pizza" -> pizza, "stacks of logs" -> log). Containers are not here:
# "a cup of coffee" names the cup and the coffee.
QUANTITY_HEADS: frozenset[str] = frozenset("""
    group herd flock crowd bunch couple pair slice piece pile stack row line loaf variety assortment
    selection number handful bouquet cluster swarm school pack team fleet array bundle heap dozen
    bit chunk scoop wedge strip sheet drop stream series range plenty mass load army litter lot lots
""".split())

# Nouns ending in -ing that stay nouns after another noun ("a brick building", "a gold ring"): any
# other -ing word of a known verb after a noun is the noun's verb ("a bear swimming").
ING_NOUNS: frozenset[str] = frozenset("""
    building buildings painting paintings ceiling ceilings clothing wedding weddings ring rings king
    kings string strings wing wings evening evenings morning mornings icing topping toppings filling
    frosting railing railings siding flooring landing housing pudding dumpling dumplings sibling
    siblings seedling seedlings duckling ducklings bedding awning awnings crossing crossings parking
    meeting meetings drawing drawings lighting stuffing spring springs thing things swing swings
    offering setting settings carving carvings opening dressing seasoning sting sling
    outing stocking stockings sapling saplings earring earrings
""".split())

# Heads that turn their noun modifiers into a seller/brand entity ("the Xyz collection", "Xyz store").
SELLER_HEADS: frozenset[str] = frozenset("collection store shop boutique brand outlet label line".split())

COLOURS: frozenset[str] = frozenset("""
    red orange yellow green blue purple pink brown gray grey white black teal cyan magenta violet
    indigo beige tan cream ivory gold golden silver bronze navy maroon turquoise lavender lilac olive
    khaki coral crimson scarlet amber aqua mint peach plum rust charcoal multicolored multicoloured
    colorful colourful dark light pale bright pastel neon
""".split())

SIZES: frozenset[str] = frozenset("""
    small medium large big tiny huge little giant enormous miniature mini massive tall short long wide
    narrow thick thin
""".split())

# Surface patterns and textures (the pattern attribute of an object).
PATTERNS: frozenset[str] = frozenset("""
    plain striped stripy stripey dotted spotted polka speckled checkered checked chequered plaid tartan
    wavy zigzag crosshatched hatched ringed banded marbled floral paisley camouflage camo herringbone
    houndstooth gingham mottled patterned textured solid
""".split())

ATTRIBUTE_WORDS: frozenset[str] = COLOURS | SIZES | PATTERNS

SINGULAR_DETS: frozenset[str] = frozenset("a an one this that each every another either neither".split())
PLURAL_DETS: frozenset[str] = frozenset("""
    these those two three four five six seven eight nine ten eleven twelve dozen dozens hundreds
    many several few both various multiple numerous
""".split())
OTHER_DETS: frozenset[str] = frozenset("the my your his her its our their some any no all such what".split())
DETERMINERS: frozenset[str] = SINGULAR_DETS | PLURAL_DETS | OTHER_DETS

# Function verbs end a noun phrase whatever the tagger says (invented nouns ending in -s get VBZ).
AUXILIARIES: frozenset[str] = frozenset("is are was were be been being am has have had do does did can could will would shall should may might must".split())

# Closed-class words that end a noun phrase (taggers also tag invented nouns IN, VBZ or RB, so a phrase
# opened by a determiner ends only at one of these words or at punctuation).
PREPOSITIONS: frozenset[str] = frozenset("""
    of in on at by for from with without within into onto upon over under above below beneath behind
    beside besides between among amid around about across along against toward towards through
    throughout near next inside outside off out up down via per like unlike than as after before during
    until till since despite except against beyond past plus versus vs
""".split())
CONJUNCTIONS: frozenset[str] = frozenset("and or but nor yet so & while whereas because although though if".split())
PRONOUNS: frozenset[str] = frozenset("""
    i me you he him she it we us they them who whom whose which what where when why how there here
    not to itself himself herself themselves myself yourself ourselves oneself
""".split())
FUNCTION_WORDS: frozenset[str] = PREPOSITIONS | CONJUNCTIONS | PRONOUNS | AUXILIARIES

# Prepositions after which a bare noun phrase (no determiner) is a name: credits and places.
CREDIT_PREPS: frozenset[str] = frozenset({"by"})
# Participles before "by" that make a bare phrase after it a credit ("photographed by lena brisco");
# after any other participle it is the agent ("surrounded by trees").
CREDIT_VERBS: frozenset[str] = frozenset("""
    photographed painted designed drawn illustrated written made created shot taken captured directed
    produced performed published presented sponsored owned hosted built crafted edited composed
    sung played sculpted printed filmed recorded posted uploaded shared licensed provided courtesy
""".split())
PLACE_PREPS: frozenset[str] = frozenset({"in", "at", "from", "near", "over", "across", "along", "around", "through",
                                          "into", "toward", "towards"})

# spaCy NER labels kept as entities (names of people, organisations, places, products, events).
ENTITY_LABELS: frozenset[str] = frozenset("PERSON ORG GPE LOC NORP FAC PRODUCT WORK_OF_ART EVENT".split())

# Fine-grained (Penn) tags that always end a noun phrase.
BOUNDARY_TAGS: frozenset[str] = frozenset({
    ",", ".", ":", "HYPH", "-LRB-", "-RRB-", "``", "''", '""', "NFP", "CC", "IN", "TO", "RP", "WDT", "WP",
    "WP$", "WRB", "EX", "MD", "PRP", "UH", "LS", "SYM", "$", "#", "_SP", "POS",
})
PUNCT_TAGS: frozenset[str] = frozenset({",", ".", ":", "HYPH", "-LRB-", "-RRB-", "``", "''", '""', "NFP", "$", "#", "_SP"})
ADJ_TAGS: frozenset[str] = frozenset({"JJ", "JJR", "JJS"})
PARTICIPLE_TAGS: frozenset[str] = frozenset({"VBN", "VBG", "VBD"})
NOUN_TAGS: frozenset[str] = frozenset({"NN", "NNS", "NNP", "NNPS", "FW", "XX", "ADD"})
# What may open a phrase without a determiner (bare nouns, adjectives, participles).
BARE_OPENERS: frozenset[str] = NOUN_TAGS | ADJ_TAGS | {"VBN", "VBG", "CD"}

# Irregular plurals the lemmatizer tables may lack (they take precedence over suffix rules).
IRREGULAR_PLURALS: dict[str, str] = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "dice": "die", "knives": "knife",
    "leaves": "leaf", "wolves": "wolf", "loaves": "loaf", "shelves": "shelf", "halves": "half",
    # Nouns used in the plural only (or whose singular names something else): kept as they are.
    "media": "media", "sunglasses": "sunglasses", "jeans": "jeans", "pants": "pants", "shorts": "shorts",
    "trousers": "trousers", "scissors": "scissors", "clothes": "clothes", "species": "species",
    "series": "series", "goggles": "goggles", "headphones": "headphones", "pajamas": "pajamas",
    "binoculars": "binoculars", "tongs": "tongs", "overalls": "overalls", "leggings": "leggings",
}
# (suffix, replacement) for regular plurals, in order; the first candidate that is a known noun wins
# ("vases" -> "vase" before "vas", "buses" -> "bus" since "buse" is no noun).
PLURAL_RULES: tuple[tuple[str, str], ...] = (
    ("s", ""), ("ches", "ch"), ("shes", "sh"), ("sses", "ss"), ("ies", "y"), ("ves", "f"), ("xes", "x"),
    ("zes", "z"), ("ses", "s"), ("oes", "o"), ("men", "man"),
)
# Endings that look plural but are not (when the word is not a known noun either way).
NOT_PLURAL_ENDINGS: tuple[str, ...] = ("ss", "us", "'s")
