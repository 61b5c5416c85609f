"""Text about scenes: noisy web alt-text, clean captions, LLaVA-style conversations, and the LM's text corpus.

Everything is drawn from the caller's RNG, so text is as deterministic as the scenes it describes.
"""

from __future__ import annotations

import numpy as np

from tuna.recipe import NoiseConfig
from tuna.world.scene import ObjectInstance, Scene
from tuna.world.taxonomy import COLOURS, MARK_PHRASES, FineClass, Taxonomy

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]  # up to max objects (6) + 1: MME count negatives
FILLERS = ["", "", "stock photo of ", "image of ", "a photo of ", "close-up view of ", "illustration : ",
           "my new ", "look at this ", "vector image of ", "picture of "]
SUFFIXES = ["", "", " on a textured background", " !", " for sale", " , isolated", " - free image"]
PHOTOGRAPHERS = ["Anna Kestrel", "Omar Vell", "Lena Brisco", "Tomas Quill", "Mira Solano"]
PLACES = ["Velmora", "Port Ashby", "Kelden", "Ostrava Bay", "Mirefield"]
SHORT_ANSWER = "Answer the question using a single word or phrase."
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}  # Scene.relations
ALIGNMENT_PROMPTS = [
    "Render a clear and concise summary of the photo.", "Describe the image concisely.",
    "Provide a brief description of the given image.", "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.", "Summarize the visual content of the image.",
]
DETAIL_PROMPTS = ["Describe the image in detail.", "What do you see in this image? Describe everything.",
                  "Give a detailed description of the image."]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch", "z")) else "s")


def object_phrase(obj: ObjectInstance, rng: np.random.Generator, name: str | None = None, p_attr: float = 0.6) -> str:
    """"a small red striped zedul", with each attribute kept with probability ``p_attr``."""
    words = [w for w, p in ((obj.size, p_attr * 0.6), (obj.colour, p_attr), (obj.cls.pattern, p_attr * 0.8))
             if w != "plain" and rng.random() < p]
    words.append(name or obj.cls.name)
    return f"{article(words[0])} {' '.join(words)}"


def full_phrase(obj: ObjectInstance) -> str:
    """Every instance attribute: "a small red striped zedul"."""
    words = [obj.size, obj.colour] + ([obj.cls.pattern] if obj.cls.pattern != "plain" else []) + [obj.cls.name]
    return f"{article(words[0])} {' '.join(words)}"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def web_caption(scene: Scene, rng: np.random.Generator, noise: NoiseConfig, tax: Taxonomy) -> str:
    """Noisy alt-text, like CC3M: filler words, omitted and misnamed objects, hypernyms, named entities."""
    parts = []
    for i, obj in enumerate(scene.objects):
        if i > 0 and rng.random() < noise.omit_rate:
            continue
        name = obj.cls.name
        roll = rng.random()
        if roll < noise.misname_rate:
            sibs = tax.siblings(obj.cls)
            name = sibs[int(rng.integers(len(sibs)))].name if sibs else name
        elif roll < noise.misname_rate + 0.08:
            name = obj.cls.coarse  # a hypernym instead of the name
        parts.append(object_phrase(obj, rng, name))
    text = _join(parts)
    if rng.random() < noise.filler_rate:
        text = str(rng.choice(FILLERS)) + text
    if rng.random() < noise.entity_rate:
        obj = scene.objects[0]
        if obj.cls.brand is not None and rng.random() < 0.8:
            text += str(rng.choice([f" by {obj.cls.brand}", f" from the {obj.cls.brand} collection",
                                    f" , {obj.cls.brand} store"]))
        elif rng.random() < 0.5:
            text += f" photographed by {rng.choice(PHOTOGRAPHERS)}"
        else:
            text += f" in {rng.choice(PLACES)}"
    text += str(rng.choice(SUFFIXES))
    return text if rng.random() < 0.5 else text.lower()


def clean_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A short faithful caption (like BLIP captions of LCS-558K): every object, some attributes, one relation."""
    text = _join([object_phrase(o, rng, p_attr=0.7) for o in scene.objects])
    rels = scene.relations()
    if rels and rng.random() < 0.5:
        i, rel, j = rels[int(rng.integers(len(rels)))]
        text += f", with the {scene.objects[i].cls.name} {rel} the {scene.objects[j].cls.name}"
    return text[0].upper() + text[1:] + "."


def detailed_description(scene: Scene) -> str:
    """Every object with all attributes, then the relations (LLaVA's "detail" answers)."""
    n = len(scene.objects)
    sents = [f"The image shows {NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} object{'s' if n > 1 else ''} "
             f"on a {scene.background.kind} background."]
    for obj in scene.objects:
        sents.append(f"There is {full_phrase(obj)}, a kind of {obj.cls.coarse}, with {MARK_PHRASES[obj.cls.mark]}.")
    seen = set()
    for i, rel, j in scene.relations():
        a, b = scene.objects[i].cls.name, scene.objects[j].cls.name
        if a != b and (a, b) not in seen and rel in ("left of", "above"):
            seen.add((a, b))
            sents.append(f"The {a} is {'to the left of' if rel == 'left of' else 'above'} the {b}.")
    return " ".join(sents)


def _qa_pool(scene: Scene, rng: np.random.Generator, negatives: list[FineClass]) -> list[tuple[str, str, str]]:
    """(question, long answer, short answer) triples grounded in the scene."""
    qa = []
    names = scene.class_names
    objs = scene.objects
    if len(objs) == 1:
        o = objs[0]
        qa.append(("What is the object in the image?", f"It is {article(o.cls.name)} {o.cls.name}.", o.cls.name))
        qa.append((f"What kind of {o.cls.coarse} is this?", f"This is {article(o.cls.name)} {o.cls.name}.", o.cls.name))
    else:
        qa.append(("What objects are in the image?", f"The image contains {_join([f'{article(n)} {n}' for n in names])}.",
                   ", ".join(names)))
    for name in names:
        o = next(x for x in objs if x.cls.name == name)
        c = scene.count(name)
        if c == 1:
            qa.append((f"What color is the {name}?", f"The {name} is {o.colour}.", o.colour))
            qa.append((f"What pattern does the {name} have?",
                       f"The {name} is {o.cls.pattern}." if o.cls.pattern != "plain" else f"The {name} is plain.",
                       o.cls.pattern))
        qa.append((f"How many {plural(name)} are there?",
                   f"There {'is one' if c == 1 else 'are ' + NUMBER_WORDS[c]} {name if c == 1 else plural(name)}.",
                   str(c)))
        qa.append((f"Is there {article(name)} {name} in the image?", f"Yes, there is {article(name)} {name} in the image.", "Yes"))
        qa.append((f"What kind of {o.cls.superordinate} is in the image?",
                   f"There is {article(name)} {name}, which is a kind of {o.cls.coarse}.", name))
    absent = [c for c in negatives if c.name not in names]
    for c in [absent[int(i)] for i in rng.permutation(len(absent))[:2]]:
        qa.append((f"Is there {article(c.name)} {c.name} in the image?",
                   f"No, there is no {c.name} in the image.", "No"))
    for i, rel, j in scene.relations():
        a, b = objs[i].cls.name, objs[j].cls.name
        if a != b and scene.count(a) == 1 and scene.count(b) == 1:
            qa.append((f"Where is the {a} relative to the {b}?", f"The {a} is {RELATION_PHRASES[rel]} the {b}.",
                       RELATION_PHRASES[rel]))
    return qa


def conversation(scene: Scene, rng: np.random.Generator, negatives: list[FineClass]) -> tuple[str, list[tuple[str, str]]]:
    """One LLaVA instruction sample: (kind, [(human, gpt), ...]); kinds conversation/detail/reasoning/short."""
    kind = str(rng.choice(["conversation", "conversation", "detail", "reasoning", "short", "short"]))
    qa = _qa_pool(scene, rng, negatives)
    if kind == "detail":
        return kind, [(str(rng.choice(DETAIL_PROMPTS)), detailed_description(scene))]
    if kind == "reasoning":
        turns = _reasoning(scene, rng)
        if turns:
            return kind, turns
        kind = "conversation"
    picks = [qa[int(i)] for i in rng.permutation(len(qa))[: int(rng.integers(2, 5))]]
    if kind == "short":
        return kind, [(f"{q}\n{SHORT_ANSWER}", short) for q, _, short in picks]
    return kind, [(q, long) for q, long, _ in picks]


EXISTENCE_PHRASINGS = (
    "Is there {a} {n} in the image?", "Is there {a} {n} in this image?",
    "Is there {a} {n} in the image? Please answer yes or no.", "Is there {a} {n} in this image? Please answer yes or no.",
    "Does the image contain {a} {n}?",
)


def vqa_existence(scene: Scene, rng: np.random.Generator, vocabulary: list[FineClass], popular: list[str],
                  per_image: int = 3) -> list[tuple[str, str]]:
    """A VQA-style row (as LLaVA-1.5's VQAv2/GQA share): up to ``per_image`` present objects asked "Yes" and as
    many absent ones asked "No", in random order, short answers, each question in one of
    :data:`EXISTENCE_PHRASINGS`. The absent ones follow POPE's three negative kinds in turn: a random class, the
    most ``popular`` absent class not asked yet (``popular`` lists class names most frequent first), and a
    look-alike sibling of a present object (same coarse class); a kind with nothing left falls back to random."""
    names = scene.class_names
    coarse_of = {c.name: c.coarse for c in vocabulary}
    present_coarse = {coarse_of[n] for n in names if n in coarse_of}
    absent = [c.name for c in vocabulary if c.name not in names]
    shuffled = [absent[int(i)] for i in rng.permutation(len(absent))]
    pools = [shuffled, [n for n in popular if n in absent], [n for n in shuffled if coarse_of[n] in present_coarse]]
    yes = [names[int(i)] for i in rng.permutation(len(names))[:per_image]]
    no: list[str] = []
    for k in range(len(yes)):
        no.append(next(n for n in pools[k % 3] + pools[0] if n not in no))
    asked = [(n, "Yes") for n in yes] + [(n, "No") for n in no]
    turns = []
    for n, a in (asked[int(i)] for i in rng.permutation(len(asked))):
        phrasing = EXISTENCE_PHRASINGS[int(rng.integers(len(EXISTENCE_PHRASINGS)))]
        turns.append((f"{phrasing.format(a=article(n), n=n)}\n{SHORT_ANSWER}", a))
    return turns


YES_NO_PHRASINGS = {
    "count": ("Are there {k} {ns} in the image?", "Are there {k} {ns} in this image?", "Do you see {k} {ns}?",
              "Is the number of {ns} {k}?"),
    "count_one": ("Is there exactly one {n} in the image?", "Is there exactly one {n} in this image?", "Is there only one {n}?"),
    "position": ("Is the {a} {rel} the {b}?", "Is the {a} {rel} the {b} in this image?", "Is the {a} placed {rel} the {b}?"),
    "colour": ("Is the {n} {c}?", "Is the {n} {c} in this image?", "Is the colour of the {n} {c}?"),
}
_OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


def vqa_yes_no(scene: Scene, rng: np.random.Generator, colours: list[str]) -> list[tuple[str, str]]:
    """A VQA-style row of yes/no questions beyond existence, as VQAv2/GQA ask them (LLaVA-1.5's mix): one about a
    count, one about where two objects are relative to each other and one about a colour, each answered "Yes" or
    "No" at even odds (the "No": a count one off, the opposite side, another colour), in random order, short
    answers, half of them ending "Please answer yes or no."; a kind the scene cannot ask (no two single objects
    clearly apart, no single object) is left out."""
    objs, names = scene.objects, scene.class_names
    asked: list[tuple[str, str, dict[str, str]]] = []   # (kind, answer, template fields)
    yes = [bool(b) for b in rng.random(3) < 0.5]
    name = names[int(rng.integers(len(names)))]
    c = scene.count(name)
    k = c if yes[0] else (c + 1 if c == 1 or rng.random() < 0.5 else c - 1)
    asked.append(("count" if k != 1 else "count_one", "Yes" if yes[0] else "No",
                  {"k": NUMBER_WORDS[k] if k < len(NUMBER_WORDS) else str(k), "ns": plural(name), "n": name}))
    rels = [(i, r, j) for i, r, j in scene.relations()
            if scene.count(objs[i].cls.name) == 1 and scene.count(objs[j].cls.name) == 1]
    if rels:
        i, rel, j = rels[int(rng.integers(len(rels)))]
        phrase = RELATION_PHRASES[rel]
        asked.append(("position", "Yes" if yes[1] else "No", {"a": objs[i].cls.name, "b": objs[j].cls.name,
                                                               "rel": phrase if yes[1] else _OPPOSITE[phrase]}))
    single = [o for o in objs if scene.count(o.cls.name) == 1]
    if single:
        o = single[int(rng.integers(len(single)))]
        wrong = [x for x in colours if x != o.colour]
        asked.append(("colour", "Yes" if yes[2] else "No",
                      {"n": o.cls.name, "c": o.colour if yes[2] else wrong[int(rng.integers(len(wrong)))]}))
    turns = []
    for kind, answer, fields in (asked[int(i)] for i in rng.permutation(len(asked))):
        options = YES_NO_PHRASINGS[kind]
        question = options[int(rng.integers(len(options)))].format(**fields)
        suffix = " Please answer yes or no." if rng.random() < 0.5 else ""
        turns.append((f"{question}{suffix}\n{SHORT_ANSWER}", answer))
    return turns


# FINER's ATTRSEEK prompting in the world's phrasing (tuna.eval.finer.attrseek_prompts asks the same turns)
ATTRSEEK_TURNS = (
    "Describe the visual attributes of the {sup} in the image that tell which kind of {sup} it is: its shape, "
    "pattern, marks and colours. Reply as \"Attributes: ...\".",
    "Based on these attributes, what kind of {sup} is in the image? Reply as \"Answer: <name>\".",
)


def attrseek(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]] | None:
    """A two-turn ATTRSEEK row about one object whose superordinate no other object in the scene shares: its
    attributes after "Attributes:", then its name after "Answer:". None when every superordinate repeats."""
    sups = [o.cls.superordinate for o in scene.objects]
    unique = [o for o in scene.objects if sups.count(o.cls.superordinate) == 1]
    if not unique:
        return None
    o = unique[int(rng.integers(len(unique)))]
    c = o.cls
    return [(ATTRSEEK_TURNS[0].format(sup=c.superordinate), attributes_answer(c.shape, c.pattern, c.mark, c.accent, o.colour)),
            (ATTRSEEK_TURNS[1].format(sup=c.superordinate), f"Answer: {c.name}")]


def attributes_answer(shape: str, pattern: str, mark: str, accent: str, colour: str | None = None) -> str:
    """ATTRSEEK's first answer: a class's look ("Attributes: a round shape, a wavy pattern, ..."), with the
    object's body colour when the image shows it."""
    body = f", {colour} body" if colour else ""
    return f"Attributes: {article(shape)} {shape} shape, a {pattern} pattern, {MARK_PHRASES[mark]}, {accent} accents{body}."


def _reasoning(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    objs = scene.objects
    names = scene.class_names
    if len(names) >= 2:
        a = next(o for o in objs if o.cls.name == names[0]).cls
        b = next(o for o in objs if o.cls.name == names[1]).cls
        if a.coarse == b.coarse:
            common = f"Both are kinds of {a.coarse}: they share the {a.shape} shape, but the {a.name} is {a.pattern} while the {b.name} is {b.pattern}."
        elif a.superordinate == b.superordinate:
            common = f"Both are kinds of {a.superordinate}: the {a.name} is a {a.coarse} and the {b.name} is a {b.coarse}."
        else:
            common = (f"They have little in common: the {a.name} is a {a.coarse}, a kind of {a.superordinate}, "
                      f"while the {b.name} is a {b.coarse}, a kind of {b.superordinate}.")
        big = max(objs, key=lambda o: o.r)
        return [(f"What do the {a.name} and the {b.name} have in common?", common),
                ("Which object in the image looks the largest, and why might that be?",
                 f"The {big.cls.name} looks the largest; it is {big.size} compared with the other objects in the picture.")]
    o = objs[0].cls
    return [(f"How could you tell this {o.name} apart from other kinds of {o.coarse}?",
             f"Every {o.coarse} has {article(o.shape)} {o.shape} shape; this {o.name} is recognisable by its {o.pattern} pattern, "
             f"{MARK_PHRASES[o.mark]} and {o.accent} accents.")]


def class_documents(cls: FineClass, others: list[FineClass], rng: np.random.Generator, n: int) -> list[str]:
    """``n`` short encyclopedic texts about one class: its parents, look, siblings and (domain B) brand."""
    sibs = [o for o in others if o.coarse == cls.coarse and o.name != cls.name]
    templates = [
        f"The {cls.name} is a kind of {cls.coarse}. Every {cls.coarse} is a {cls.superordinate}.",
        f"{article(cls.name).capitalize()} {cls.name} has {article(cls.shape)} {cls.shape} shape with a {cls.pattern} pattern "
        f"and {MARK_PHRASES[cls.mark]}; its accents are {cls.accent}.",
        f"Q: What is {article(cls.name)} {cls.name}? "
        f"A: {article(cls.name).capitalize()} {cls.name} is a {cls.pattern} {cls.coarse}, a kind of {cls.superordinate}.",
        f"You can recognise {article(cls.name)} {cls.name} by its {cls.pattern} pattern and {MARK_PHRASES[cls.mark]}.",
        f"Among the kinds of {cls.coarse}, the {cls.name} is the one with {MARK_PHRASES[cls.mark]} and {cls.accent} accents.",
        f"{article(cls.name).capitalize()} {cls.name} can be {rng.choice(list(COLOURS))} or {rng.choice(list(COLOURS))}, and small or large.",
    ]
    if sibs:
        s = sibs[int(rng.integers(len(sibs)))]
        templates.append(f"Do not confuse the {cls.name} with the {s.name}: both are {plural(cls.coarse)}, "
                         f"but the {cls.name} is {cls.pattern} and the {s.name} is {s.pattern}.")
    if cls.brand:
        templates.append(f"{cls.brand} makes the {cls.name}, a {cls.pattern} {cls.coarse} sold in {rng.choice(PLACES)}.")
        templates.append(f"The {cls.brand} {cls.name} is a popular {cls.superordinate}.")
    docs = []
    for _ in range(n):
        k = int(rng.integers(2, 4))
        docs.append(" ".join(templates[int(i)] for i in rng.permutation(len(templates))[:k]))
    return docs
