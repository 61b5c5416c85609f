"""POPE: yes/no answer parsing and the per-split metrics (accuracy, precision, recall, F1, yes-ratio).

The parsing rule is the one of POPE's ``evaluate.py`` (github.com/RUCAIBox/POPE; LLaVA's
``llava/eval/eval_pope.py`` repeats it): keep only the text before the first ".", delete commas, split
on single spaces; if one of the words is exactly ``No``, ``not`` or ``no`` the answer is "no", otherwise
"yes". Its quirks are kept on purpose so numbers stay comparable with published ones: "Not sure" is a
"yes" (capitalised "Not" is not in the list), "Nope" is a "yes", "No\\nthere is ..." without a space is
a "yes".

Two additions of ours, both documented where they act:

- the generation is stripped of leading/trailing whitespace first (LLaVA's ``model_vqa_loader`` writes
  ``outputs.strip()``, so this is what POPE's rule sees in the LLaVA pipeline);
- an empty or whitespace-only generation is *unparsed* (``None``): neither yes nor no, always wrong,
  counted separately. POPE's rule would call it "yes".

Metrics treat "yes" as the positive class. An unparsed answer is never a predicted "yes": it lowers
accuracy, and it lowers recall when the label is "yes"; it does not enter precision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

YesNo = Literal["yes", "no"]
NEGATION_WORDS = ("No", "not", "no")  # POPE's list, case-sensitive as in evaluate.py
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse_yes_no(text: str) -> YesNo | None:
    """POPE's reading of one generation: "yes", "no", or None when it is empty or whitespace-only."""
    if not isinstance(text, str):
        raise TypeError(f"a generation must be a str, got {type(text).__name__}: {text!r}")
    text = text.strip()
    if not text:
        return None
    if "." in text:  # only the first sentence counts
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in words for w in NEGATION_WORDS) else "yes"


def _label(value: object, index: int) -> YesNo:
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return "yes" if value.strip().lower() == "yes" else "no"
    raise ValueError(f"label {index} must be 'yes' or 'no', got {value!r}")


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float | int]:
    """Metrics of one POPE split: ``answers`` (raw generations) against ``labels`` ("yes"/"no"), by position.

    Returns accuracy, precision, recall, f1, yes_ratio (fractions in [0, 1]), n, unparsed and the
    confusion counts tp/fp/tn/fn over parsed answers. Precision is 0.0 when nothing was answered "yes"
    (POPE's script divides by zero there); F1 is 0.0 when precision + recall is 0.
    """
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} labels; they must pair up by position")
    if not labels:
        raise ValueError("no POPE answers to score (empty split)")
    tp = fp = tn = fn = unparsed = 0
    positives = 0
    for i, (answer, raw_label) in enumerate(zip(answers, labels)):
        label = _label(raw_label, i)
        positives += label == "yes"
        pred = parse_yes_no(answer)
        if pred is None:
            unparsed += 1
        elif pred == "yes":
            tp += label == "yes"
            fp += label == "no"
        else:
            tn += label == "no"
            fn += label == "yes"
    n = len(labels)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, positives)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n, "n": n, "unparsed": unparsed, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def pope_summary(per_split: Mapping[str, Mapping[str, float | int]]) -> dict[str, float | int]:
    """The headline numbers as LLaVA-1.5 and TUNA report POPE: F1 and accuracy averaged over the splits
    (unweighted mean of the per-split values from :func:`pope_metrics`)."""
    if not per_split:
        raise ValueError("no POPE splits to summarise")
    for split, m in per_split.items():
        missing = [k for k in ("f1", "accuracy") if k not in m]
        if missing:
            raise ValueError(f"POPE split {split!r} lacks {', '.join(missing)}; pass pope_metrics() results")
    k = len(per_split)
    out = {"f1": sum(float(m["f1"]) for m in per_split.values()) / k,
           "accuracy": sum(float(m["accuracy"]) for m in per_split.values()) / k,
           "splits": k}
    if all("yes_ratio" in m for m in per_split.values()):
        out["yes_ratio"] = sum(float(m["yes_ratio"]) for m in per_split.values()) / k
    return out


_OBJECT = re.compile(r"^\s*is there an? (.+?) in the (?:image|picture|photo)\s*\??\s*$", re.IGNORECASE)


def question_object(question: str) -> str | None:
    """The object a POPE question asks about ("Is there a dining table in the image?" -> "dining table"), or None
    for a question not in POPE's template."""
    match = _OBJECT.match(question)
    return match[1] if match else None


def pope_by_tags(answers: Sequence[str], labels: Sequence[str], questions: Sequence[str],
                 tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """One split's :func:`pope_metrics` apart for the questions whose object the model's retrieved tags name (by
    FINER's whole-word rule, :func:`tuna.eval.finer.tag_names`) and those whose object no tag names: ``named``,
    ``unnamed`` (``{"n": 0}`` when empty) and ``unmatched``, the questions outside POPE's template (in neither).
    The recall of ``unnamed`` is how often a model finds a present object its tags missed."""
    from tuna.eval.finer import tag_names

    if not len(answers) == len(labels) == len(questions) == len(tags):
        raise ValueError(f"{len(answers)} answers, {len(labels)} labels, {len(questions)} questions and {len(tags)} "
                         "tag lists; they must pair up by position")
    parts: dict[str, tuple[list[str], list[str]]] = {"named": ([], []), "unnamed": ([], [])}
    unmatched = 0
    for answer, label, question, shown in zip(answers, labels, questions, tags):
        obj = question_object(question)
        if obj is None:
            unmatched += 1
            continue
        part = parts["named" if any(tag_names(t, obj) for t in shown) else "unnamed"]
        part[0].append(answer)
        part[1].append(label)
    out: dict[str, Any] = {k: pope_metrics(*v) if v[1] else {"n": 0} for k, v in parts.items()}
    out["unmatched"] = unmatched
    return out


# ------------------------------------------------------------------------------ loader-side helpers


def score_pope_rows(rows: Sequence[Mapping[str, Any]], answers: Mapping[Any, str]) -> dict[str, float | int]:
    """:func:`pope_metrics` for question ``rows`` with ``answers`` keyed by ``question_id``; a question
    without an answer raises (a silently shorter split would change the metrics)."""
    missing = [r["question_id"] for r in rows if r["question_id"] not in answers]
    if missing:
        raise ValueError(f"{len(missing)} POPE question(s) have no answer, e.g. question_id {missing[0]!r}")
    return pope_metrics([answers[r["question_id"]] for r in rows], [r["label"] for r in rows])
