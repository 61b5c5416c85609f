"""FINER-style exact match at three label levels, token F1, and the prompts eval and serving share.

Two exact-match (EM) rules, both per record and level, both reported (``finer_metrics``):

**FINER's rule** (the headline ``<level>_em``), as ``llava/eval/eval_fgvc.py`` of FINER
(github.com/wjdghks950/Finer) scores:

1. the answer is the text after the FIRST "Answer:" (exact case, ``text.find("Answer:")``), or the whole
   generation when it has none; stripped, "</s>" removed (``remove_ans_prefix``);
2. answer and gold label are normalised by ``normalize_answer``: lowercase, punctuation characters
   DELETED ("black-capped" -> "blackcapped"), the articles a / an / the replaced by a space,
   whitespace collapsed;
3. a gold label hits when its normalised text is a SUBSTRING of the first 20 normalised answer tokens
   joined by spaces (``exact_match_score``: "owl" hits "snowy owl", and also "bowl"), or when the whole
   normalised answer equals it;
4. a level takes the best over its accepted labels: superordinate accepts ``basic-level-lbl`` plus
   every ``coarse-level-lbl`` and ``fine-level-lbl``, coarse accepts the coarse and fine labels, fine
   the fine labels. In FINER's files the coarse and fine fields are LISTS of labels (eval_fgvc.py joins
   them with ``+``); a bare string is taken here as one label (eval_fgvc.py would add it character by
   character to the list).

**Whole-word rule** (ours, kept as ``<level>_em_word``):

1. the answer is the text after the LAST "Answer:" (any case), else the whole generation;
2. lowercase, every punctuation character replaced by a SPACE, articles removed, whitespace collapsed;
   then split into tokens;
3. a label hits when it (or its plural, ``tuna.world.language.plural``) occurs as a contiguous token
   sequence in the first :data:`EM_WINDOW` (20) tokens; the same acceptance per level as above.

It differs from FINER's rule on partial words ("owl" in "bowl" is no hit), hyphens, plurals such as
"berries", and answers with several "Answer:".

Token F1 is SQuAD-style (bag of tokens) between the whole normalised answer (whole-word reading) and the
fine label (the best over the fine labels). An answer that normalises to nothing under FINER's reading
(empty or whitespace-only generation, "Answer:", "The.") is counted in ``empty``; it is wrong at every
level under both rules.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tuna.world.language import plural

EM_WINDOW = 20
LEVELS = ("superordinate", "coarse", "fine")
# level -> the record field holding its label(s) (FINER's field names)
LEVEL_FIELDS = {"superordinate": "basic-level-lbl", "coarse": "coarse-level-lbl", "fine": "fine-level-lbl"}
Labels = Mapping[str, str | Sequence[str]]  # level -> one label or a list of labels

_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
FINER_PREFIX = "Answer:"  # eval_fgvc.py's remove_ans_prefix: the first occurrence, exact case


# ------------------------------------------------------------------------ FINER's rule (eval_fgvc.py)


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a generation must be a str, got {type(text).__name__}: {text!r}")
    return text


def finer_answer(text: str) -> str:
    """FINER's answer text: after the first "Answer:" (exact case) if any, stripped, "</s>" removed."""
    at = _check_text(text).find(FINER_PREFIX)
    return text[0 if at == -1 else at + len(FINER_PREFIX):].strip().replace("</s>", "")


def finer_normalize(text: str) -> str:
    """eval_fgvc.py's ``normalize_answer``: lowercase, delete punctuation, articles -> space, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def finer_exact_match(answer: str, gold: str, window: int = EM_WINDOW) -> bool:
    """eval_fgvc.py's ``exact_match_score`` on an extracted ``answer`` (see :func:`finer_answer`): the
    normalised gold is a substring of the first ``window`` normalised answer tokens, or equals the answer."""
    pred, ref = finer_normalize(answer), finer_normalize(gold)
    return ref in " ".join(pred.split()[:window]) or pred == ref


def _accepted(labels: Labels, level: str) -> list[str]:
    """The gold labels a level accepts: its own and every finer level's (FINER's acceptance)."""
    missing = [lvl for lvl in LEVELS if lvl not in labels]
    if missing:
        raise ValueError(f"labels lack level(s) {', '.join(missing)}; got {sorted(labels)}")
    out: list[str] = []
    for finer in LEVELS[LEVELS.index(level):]:
        value = labels[finer]
        out += [value] if isinstance(value, str) else list(value)
    return out


def finer_level_hits(prediction: str, labels: Labels, window: int = EM_WINDOW) -> dict[str, bool]:
    """level -> hit under FINER's rule for one generation; ``labels`` maps each of :data:`LEVELS` to a
    label or a list of labels."""
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}")
    answer = finer_answer(prediction)
    return {level: any(finer_exact_match(answer, gold, window) for gold in _accepted(labels, level))
            for level in LEVELS}


# --------------------------------------------------------------------------------- whole-word rule


def extract_answer(text: str) -> str:
    """The text after the last "Answer:" (any case) in ``text``, or ``text`` itself when it has none."""
    marks = list(_ANSWER.finditer(_check_text(text)))
    return text[marks[-1].end():] if marks else text


def normalize(text: str) -> str:
    """Lowercase, punctuation -> space, drop a/an/the, collapse whitespace (no "Answer:" handling)."""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The normalised tokens of a generation's answer: :func:`extract_answer` then :func:`normalize`."""
    return normalize(extract_answer(text)).split()


def _contains(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    k = len(phrase)
    return k > 0 and any(list(tokens[i:i + k]) == list(phrase) for i in range(len(tokens) - k + 1))


def label_forms(label: str) -> list[list[str]]:
    """The token sequences that count as ``label``: its normalised form and its plural."""
    forms = [normalize(label), normalize(plural(label.strip()))]
    return [f.split() for f in dict.fromkeys(forms) if f]


def tag_names(tag: str, label: str) -> bool:
    """True when ``tag`` names ``label`` by the whole-word rule: the label or its plural is a token sequence of the
    normalised tag ("checkered kraidroul" names kraidroul; "dining table" names "table" but "tablet" does not)."""
    tokens = normalize(tag).split()
    return any(_contains(tokens, form) for form in label_forms(label))


def level_hits(prediction: str, labels: Labels, window: int = EM_WINDOW) -> dict[str, bool]:
    """level -> hit under the whole-word rule for one generation; ``labels`` as in :func:`finer_level_hits`."""
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}")
    head = answer_tokens(prediction)[:window]
    return {level: any(_contains(head, form) for gold in _accepted(labels, level) for form in label_forms(gold))
            for level in LEVELS}


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD-style token F1 between the normalised answer of ``prediction`` and the normalised ``gold``."""
    pred = answer_tokens(prediction)
    ref = normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def tag_quality(tags: Sequence[Sequence[str]], records: Sequence[Mapping[str, Any]],
                top: int | None = None) -> dict[str, float | int]:
    """How good the retrieved tags of FINER images are, by the whole-word rule (a tag names the class when a fine label
    or its plural is a token sequence of it: "checkered kraidroul" names kraidroul): ``gold_in_tags`` is the share (0-1)
    of images with at least one tag naming the gold fine class, ``gold_majority`` the share whose tags name it in more
    than half of them, ``gold_first`` the share whose first (highest-scored) tag names it; ``n`` images, ``untagged``
    of them with no tag at all (they count as misses). ``top``: only each image's first ``top`` tags count (the whole
    image's, when region tags follow them)."""
    if len(tags) != len(records):
        raise ValueError(f"{len(tags)} tag lists for {len(records)} FINER records")
    anywhere = majority = first = untagged = 0
    for i, (row, record) in enumerate(zip(tags, records)):
        golds = record_labels(record, i)["fine"]
        named = [any(tag_names(t, gold) for gold in golds) for t in row[:top]]
        untagged += not row
        anywhere += any(named)
        majority += sum(named) * 2 > len(named) > 0
        first += bool(named) and named[0]
    n = len(records)
    pct = (lambda k: round(k / n, 4)) if n else (lambda k: 0.0)
    return {"gold_in_tags": pct(anywhere), "gold_majority": pct(majority), "gold_first": pct(first), "n": n,
            "untagged": untagged}


# ---------------------------------------------------------------------------------------- records


def record_labels(record: Mapping[str, Any], index: int = 0) -> dict[str, list[str]]:
    """level -> labels of a FINER record (fields ``basic-level-lbl``, ``coarse-level-lbl``,
    ``fine-level-lbl``; each a label or a non-empty list of labels, as FINER's files hold them)."""
    out = {}
    for level, field in LEVEL_FIELDS.items():
        value = record.get(field)
        labels = [value] if isinstance(value, str) else value
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(v, str) and finer_normalize(v) and normalize(v) for v in labels)):
            raise ValueError(f"FINER record {index} (id {record.get('id')!r}): field {field!r} must be a non-empty "
                             f"label or a non-empty list of such labels, got {value!r}")
        out[level] = labels
    return out


def finer_metrics(predictions: Sequence[str], records: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """EM per level under FINER's rule (``<level>_em``, the headline) and the whole-word rule
    (``<level>_em_word``), mean token F1 against the fine label(s), n and the count of empty answers.

    ``predictions`` pair with ``records`` (FINER rows, e.g. from ``tuna.formats.load_finer``) by position.
    EM values and token_f1 are fractions in [0, 1].
    """
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} FINER records; they must pair up by position")
    if not records:
        raise ValueError("no FINER records to score")
    official = dict.fromkeys(LEVELS, 0)
    word = dict.fromkeys(LEVELS, 0)
    f1 = 0.0
    empty = 0
    for i, (pred, record) in enumerate(zip(predictions, records)):
        labels = record_labels(record, i)
        empty += not finer_normalize(finer_answer(pred))
        for level, hit in finer_level_hits(pred, labels).items():
            official[level] += hit
        for level, hit in level_hits(pred, labels).items():
            word[level] += hit
        f1 += max(token_f1(pred, gold) for gold in labels["fine"])
    n = len(records)
    return {**{f"{level}_em": official[level] / n for level in LEVELS},
            **{f"{level}_em_word": word[level] / n for level in LEVELS},
            "token_f1": f1 / n, "n": n, "empty": empty}


# ----------------------------------------------------------------------------------------- prompts
#
# FINER asks each level with its own question and scores each level on its own generation
# (llava/serve/prompts.py and llava/serve/cli.py of wjdghks950/Finer; run_cli_fgvc_tasks.sh passes
# --use_gold_coarse, so the concept named in the coarse question is the gold basic-level label and in
# the fine question the gold coarse label). :func:`finer_questions` writes those questions.
#
# The world's eval (tuna.eval.evaluate.eval_finer) asks ONE question per image, in the world's own
# phrasing (:func:`direct_prompt`, :func:`attrseek_prompts`), and scores that one generation at all three
# levels: the world's instruction data teaches which-kind questions answered with the fine name only
# ("What kind of <superordinate> is in the image?", "What kind of <coarse> is this?"), so a model
# trained on it can only be asked the fine level; FINER's per-level wording is for real FINER runs.


def _one(value: str | Sequence[str], what: str) -> str:
    """The label a FINER question names: a string, or the first of a list (FINER's cli.py draws one at
    random with ``random.choice``; the first keeps runs deterministic)."""
    label = value if isinstance(value, str) else (value[0] if value else "")
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"the {what} label must be a non-empty string or list of strings, got {value!r}")
    return label.strip()


def finer_questions(record: Mapping[str, Any], categories: Sequence[str],
                    example: tuple[str, str] = ("Owl Parrot", "Parrot")) -> dict[str, str]:
    """level -> the question FINER asks for ``record`` at that level (its CUB-200 / NAbirds wording).

    ``categories``: the superordinate choices listed in the superordinate question (FINER lists e.g.
    'Birds', 'Insects', 'Fungi'); ``example``: the (fine, coarse) pair its questions cite. Coarse names
    the gold basic-level label, fine the gold coarse label (``--use_gold_coarse``).
    """
    if not categories:
        raise ValueError("the superordinate question needs its list of categories, got none")
    fine_ex, coarse_ex = example
    basic, coarse = _one(record.get("basic-level-lbl"), "basic-level"), _one(record.get("coarse-level-lbl"), "coarse-level")
    answer_after = 'Provide your answer after "Answer:".'
    return {
        "superordinate": ("What is the name of the organism that appears in this image? Provide your answer after "
                          f'"Answer:" from one of the following categories: {list(categories)}.'),
        "coarse": (f"What is the name of the {basic} that appears in this image? For example, if it's a picture of "
                   f"a {fine_ex}, give a coarse-grained label for the image '{coarse_ex}'.\n{answer_after}"),
        "fine": (f"What is the name of the {coarse} that appears in this image? For example, if it's a picture of "
                 f"a {fine_ex}, give a fine-grained label for the image '{fine_ex}'.\n{answer_after}"),
    }



def _check_concept(superordinate: str) -> str:
    if not isinstance(superordinate, str) or not superordinate.strip():
        raise ValueError(f"the superordinate label must be a non-empty string, got {superordinate!r}")
    return superordinate.strip()


def finer_attrseek_questions(record: Mapping[str, Any]) -> tuple[str, str]:
    """FINER's two ATTRSEEK turns for ``record`` (``attr_seek`` then ``attr_seek_fine`` of its prompts.py), both
    naming the gold coarse label (``--use_gold_coarse``)."""
    coarse = _one(record.get("coarse-level-lbl"), "coarse-level")
    return (f"What kind of external descriptive attributes do you see from the {coarse} in this image? Provide the "
            f'set of detailed physical attributes after "Attributes:".',
            f"Now, tell me what kind of {coarse} it is. For example, if it's a picture of a bengal tiger, give a "
            f"fine-grained label for the image 'Bengal Tiger' or use its binomial nomenclature 'Panthera tigris "
            f"tigris'.\nProvide your answer after \"Answer:\".")


def direct_prompt(superordinate: str) -> str:
    """The one-turn question: which kind of ``superordinate`` is shown (the world's instruction phrasing)."""
    sup = _check_concept(superordinate)
    return f"What kind of {sup} is in the image?"


def attrseek_prompts(superordinate: str) -> tuple[str, str]:
    """The two ATTRSEEK turns for an image of a ``superordinate``: (turn 1, turn 2).

    Turn 1 asks for the visual attributes, to be answered after "Attributes:"; turn 2 (sent after the
    model's turn-1 reply) asks for the name given those attributes, to be answered after "Answer:".
    The world's phrasing; FINER's own (``attr_seek`` / ``attr_seek_fine`` in its llava/serve/prompts.py)
    names the gold coarse label: "What kind of external descriptive attributes do you see from the
    <coarse> in this image? Provide the set of detailed physical attributes after "Attributes:"." then
    "Now, tell me what kind of <coarse> it is. ... give a fine-grained label ... Provide your answer after
    "Answer:"." (see the note above :func:`finer_questions`).
    """
    from tuna.world.language import ATTRSEEK_TURNS  # the phrasing the world's ATTRSEEK rows teach

    sup = _check_concept(superordinate)
    return ATTRSEEK_TURNS[0].format(sup=sup), ATTRSEEK_TURNS[1].format(sup=sup)
