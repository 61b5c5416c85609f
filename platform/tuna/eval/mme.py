"""MME-style scores: per subtask accuracy (per question), accuracy+ (per image) and score.

Each image of a subtask carries two yes/no questions (one "Yes", one "No"). For a subtask:
accuracy = right answers / questions; accuracy+ = images whose questions are all right / images;
score = (accuracy + accuracy+) * 100, so at most 200 per subtask; the total is the sum over subtasks.
Answers are read with POPE's rule (:func:`tuna.eval.pope.parse_yes_no`); an empty or whitespace-only
generation is unparsed and wrong. (MME's own ``calculation.py`` reads the first characters of the
lower-cased answer instead; we share POPE's rule so both benchmarks read answers the same way.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuna.eval.pope import parse_yes_no
from tuna.formats import MmeItem


def _gold(item: MmeItem, index: int) -> str:
    answer = item.answer.strip().lower() if isinstance(item.answer, str) else None
    if answer not in ("yes", "no"):
        raise ValueError(f"MME item {index} ({item.task}/{item.image}): answer must be 'Yes' or 'No', got {item.answer!r}")
    return answer


def mme_metrics(items: Sequence[MmeItem], predictions: Sequence[str]) -> dict[str, Any]:
    """Scores of ``predictions`` (raw generations) for MME ``items`` (``tuna.formats.load_mme``), by position.

    Returns ``{"tasks": {task: {accuracy, accuracy_plus, score, questions, images, unparsed}},
    "total": sum of task scores, "n": questions, "unparsed": unparsed answers}``; accuracy and
    accuracy_plus are fractions, score is in points (0-200 per task). Images are grouped by
    (task, image path); an image counts for accuracy+ when every one of its questions is right.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} MME questions; they must pair up by position")
    if not items:
        raise ValueError("no MME questions to score")
    # task -> image -> [right, right, ...]
    per_image: dict[str, dict[str, list[bool]]] = {}
    unparsed: dict[str, int] = {}
    for i, (item, pred) in enumerate(zip(items, predictions)):
        gold = _gold(item, i)
        parsed = parse_yes_no(pred)
        unparsed[item.task] = unparsed.get(item.task, 0) + (parsed is None)
        per_image.setdefault(item.task, {}).setdefault(str(item.image), []).append(parsed == gold)
    tasks: dict[str, dict[str, float | int]] = {}
    for task in sorted(per_image):
        images = per_image[task]
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in images.values()) / len(images)
        tasks[task] = {"accuracy": acc, "accuracy_plus": acc_plus, "score": (acc + acc_plus) * 100,
                       "questions": len(answers), "images": len(images), "unparsed": unparsed[task]}
    return {"tasks": tasks, "total": sum(float(t["score"]) for t in tasks.values()), "n": len(items),
            "unparsed": sum(unparsed.values())}
