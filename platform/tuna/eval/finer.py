"""FINER-style exact match at three label levels, token F1, and the prompts eval and serving share.

Exact match (EM), per record and level:

1. the answer is the text after the last "Answer:" (case-insensitive) when the generation has one,
   else the whole generation;
2. it is normalised: lowercase, every punctuation character replaced by a space, the articles
   a / an / the removed, whitespace collapsed; then split into tokens;
3. a level is a hit when one of its accepted labels, normalised the same way, occurs as a contiguous
   token sequence inside the first :data:`EM_WINDOW` (20) tokens. A level accepts its own label or a
   finer one: superordinate accepts {superordinate, coarse, fine}, coarse accepts {coarse, fine}, fine
   accepts {fine}; each also in its plural form (``tuna.world.language.plural``).

Token F1 is SQuAD-style (bag of tokens) between the whole normalised answer and the fine label.
An answer that normalises to nothing (empty or whitespace-only generation, "Answer:", "The.") is wrong
at every level and counted in ``empty``.
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
# level -> the record field holding its label (FINER's field names)
LEVEL_FIELDS = {"superordinate": "basic-level-lbl", "coarse": "coarse-level-lbl", "fine": "fine-level-lbl"}

_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def extract_answer(text: str) -> str:
    """The text after the last "Answer:" (any case) in ``text``, or ``text`` itself when it has none."""
    if not isinstance(text, str):
        raise TypeError(f"a generation must be a str, got {type(text).__name__}: {text!r}")
    marks = list(_ANSWER.finditer(text))
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


def level_hits(prediction: str, labels: Mapping[str, str], window: int = EM_WINDOW) -> dict[str, bool]:
    """level -> hit for one generation; ``labels`` maps each of :data:`LEVELS` to its gold label."""
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}")
    missing = [lvl for lvl in LEVELS if lvl not in labels]
    if missing:
        raise ValueError(f"labels lack level(s) {', '.join(missing)}; got {sorted(labels)}")
    head = answer_tokens(prediction)[:window]
    hits: dict[str, bool] = {}
    for i, level in enumerate(LEVELS):
        accepted = [form for finer in LEVELS[i:] for form in label_forms(labels[finer])]
        hits[level] = any(_contains(head, form) for form in accepted)
    return hits


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD-style token F1 between the normalised answer of ``prediction`` and the normalised ``gold``."""
    pred = answer_tokens(prediction)
    ref = normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def record_labels(record: Mapping[str, Any], index: int = 0) -> dict[str, str]:
    """level -> label of a FINER record (fields ``basic-level-lbl``, ``coarse-level-lbl``, ``fine-level-lbl``)."""
    out = {}
    for level, field in LEVEL_FIELDS.items():
        value = record.get(field)
        if not isinstance(value, str) or not normalize(value):
            raise ValueError(f"FINER record {index} (id {record.get('id')!r}): field {field!r} must be a "
                             f"non-empty label, got {value!r}")
        out[level] = value
    return out


def finer_metrics(predictions: Sequence[str], records: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """EM per level, mean token F1 against the fine label, n and the count of empty answers.

    ``predictions`` pair with ``records`` (FINER rows, e.g. from ``tuna.formats.load_finer``) by position.
    EM values and token_f1 are fractions in [0, 1].
    """
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} FINER records; they must pair up by position")
    if not records:
        raise ValueError("no FINER records to score")
    hits = dict.fromkeys(LEVELS, 0)
    f1 = 0.0
    empty = 0
    for i, (pred, record) in enumerate(zip(predictions, records)):
        labels = record_labels(record, i)
        if not answer_tokens(pred):
            empty += 1
            continue
        for level, hit in level_hits(pred, labels).items():
            hits[level] += hit
        f1 += token_f1(pred, labels["fine"])
    n = len(records)
    return {"superordinate_em": hits["superordinate"] / n, "coarse_em": hits["coarse"] / n,
            "fine_em": hits["fine"] / n, "token_f1": f1 / n, "n": n, "empty": empty}


# ----------------------------------------------------------------------------------------- prompts


def _check_concept(superordinate: str) -> str:
    if not isinstance(superordinate, str) or not superordinate.strip():
        raise ValueError(f"the superordinate label must be a non-empty string, got {superordinate!r}")
    return superordinate.strip()


def direct_prompt(superordinate: str) -> str:
    """The one-turn question: which kind of ``superordinate`` is shown (the world's instruction phrasing)."""
    sup = _check_concept(superordinate)
    return f"What kind of {sup} is in the image?"


def attrseek_prompts(superordinate: str) -> tuple[str, str]:
    """The two ATTRSEEK turns for an image of a ``superordinate``: (turn 1, turn 2).

    Turn 1 asks for the visual attributes, to be answered after "Attributes:"; turn 2 (sent after the
    model's turn-1 reply) asks for the name given those attributes, to be answered after "Answer:".
    """
    sup = _check_concept(superordinate)
    turn1 = (f"Describe the visual attributes of the {sup} in the image that tell which kind of {sup} it is: "
             f"its shape, pattern, marks and colours. Reply as \"Attributes: ...\".")
    turn2 = (f"Based on these attributes, what kind of {sup} is in the image? "
             f"Reply as \"Answer: <name>\".")
    return turn1, turn2
