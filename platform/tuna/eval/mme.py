"""MME-style scores: per subtask accuracy (per question), accuracy+ (per image) and score.

Scored as MME's own ``eval_tool/calculation.py`` scores (the ``eval_tool.zip`` of the MME release,
github.com/BradyFU/Awesome-Multimodal-Large-Language-Models, branch ``Evaluation``, ``tools/``; LLaVA-1.5's
``scripts/v1_5/eval/mme.sh`` runs it after ``convert_answer_to_mme.py``):

- an answer is read by :func:`read_mme_answer` ("yes", "no" or "other"; "other" is wrong whatever the
  gold answer, and is counted as ``unparsed``, calculation.py's ``other_num``);
- the two questions of an image form a pair (calculation.py takes the lines of a subtask file two by
  two and asserts each chunk has two; lmms-eval's ``mme_aggregate_results`` groups by ``question_id``,
  the image's path in its MME copy, and asserts "MME only supports pairwise evaluation"); we group by
  (subtask, image) and require exactly two;
- accuracy = right answers / questions; accuracy+ = images with both answers right / images;
  score = accuracy * 100 + accuracy+ * 100, so at most 200 per subtask. calculation.py prints one total
  per group (Perception, Cognition); our ``total`` sums every subtask of the set (the world's four
  subtasks are all perception ones).

The generation is stripped of surrounding whitespace before it is read, as LLaVA's ``model_vqa_loader``
writes ``outputs.strip()`` and ``convert_answer_to_mme.py`` copies that text into the line calculation.py
reads (:func:`tuna.inference.Predictor.answer` strips the same way). POPE's answers are read by POPE's
own rule (:func:`tuna.eval.pope.parse_yes_no`); the two rules differ, e.g. on "NO", "Nope", "Not sure".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from tuna.formats import MmeItem
from tuna.readers.mme import mme_group

MmeReading = Literal["yes", "no", "other"]
PER_IMAGE = 2  # questions per image: one answered "Yes", one "No"


def read_mme_answer(text: str) -> MmeReading:
    """MME's reading of one answer, as ``calculation.py`` (``parse_pred_ans``) reads it.

    The rule, from ``eval_tool/calculation.py`` of the MME release: the answer is lower-cased (nothing
    stripped); if it is exactly "yes" or "no" that is the reading; otherwise only its first four
    characters count: "yes" inside them reads "yes", else "no" inside them reads "no", else "other".
    So "NO" and "No." read "no", and so do "Nope", "Not sure", "None", "Nothing" and "Know" (the letters
    "no" lead); "Eyes" reads "yes"; "There is no cat", "I don't know", "" and "  yes" (two leading spaces
    push "yes" past the fourth character) read "other". lmms-eval's ``mme/utils.py`` differs: it strips,
    drops every "." and reads a lone "y" / "n"; we follow MME's script.

    A newline is a character like any other here ("Yes\\nNo" reads "yes"); calculation.py itself reads
    one answer per line of a tab-separated file, so a multi-line answer cannot reach it whole.
    """
    if not isinstance(text, str):
        raise TypeError(f"a generation must be a str, got {type(text).__name__}: {text!r}")
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer  # type: ignore[return-value]
    head = answer[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _gold(item: MmeItem, index: int) -> str:
    answer = item.answer.strip().lower() if isinstance(item.answer, str) else None
    if answer not in ("yes", "no"):
        raise ValueError(f"MME item {index} ({item.task}/{item.image}): answer must be 'Yes' or 'No', got {item.answer!r}")
    return answer


def mme_metrics(items: Sequence[MmeItem], predictions: Sequence[str]) -> dict[str, Any]:
    """Scores of ``predictions`` (raw generations) for MME ``items`` (``tuna.formats.load_mme``), by position.

    Returns ``{"tasks": {task: {accuracy, accuracy_plus, score, questions, images, unparsed}},
    "total": sum of task scores, "groups": {perception|cognition|other: sum of their task scores}, "n": questions,
    "unparsed": answers read as "other"}``; accuracy and
    accuracy_plus are fractions, score is in points (0-200 per task). Images are grouped by
    (task, image path) and must carry exactly two questions each; an image counts for accuracy+ when
    both of its answers are right.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} MME questions; they must pair up by position")
    if not items:
        raise ValueError("no MME questions to score")
    # task -> image -> [right, right]
    per_image: dict[str, dict[str, list[bool]]] = {}
    unparsed: dict[str, int] = {}
    for i, (item, pred) in enumerate(zip(items, predictions)):
        gold = _gold(item, i)
        reading = read_mme_answer(pred.strip() if isinstance(pred, str) else pred)
        unparsed[item.task] = unparsed.get(item.task, 0) + (reading == "other")
        per_image.setdefault(item.task, {}).setdefault(str(item.image), []).append(reading == gold)
    tasks: dict[str, dict[str, float | int]] = {}
    for task in sorted(per_image):
        images = per_image[task]
        odd = next(((img, len(oks)) for img, oks in images.items() if len(oks) != PER_IMAGE), None)
        if odd:
            raise ValueError(f"MME subtask {task!r}: image {odd[0]} has {odd[1]} question(s); MME scores images "
                             f"in pairs of {PER_IMAGE} (one 'Yes', one 'No'), as calculation.py does")
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in images.values()) / len(images)
        tasks[task] = {"accuracy": acc, "accuracy_plus": acc_plus, "score": acc * 100 + acc_plus * 100,
                       "questions": len(answers), "images": len(images), "unparsed": unparsed[task]}
    groups: dict[str, float] = {}
    for task, t in tasks.items():   # MME reports perception and cognition totals apart (calculation.py)
        group = mme_group(task) or "other"
        groups[group] = groups.get(group, 0.0) + float(t["score"])
    return {"tasks": tasks, "total": sum(float(t["score"]) for t in tasks.values()), "groups": groups, "n": len(items),
            "unparsed": sum(unparsed.values())}
