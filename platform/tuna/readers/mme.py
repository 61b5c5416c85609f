"""MME (BradyFU/Awesome-Multimodal-Large-Language-Models, ``MME_Benchmark_release_version``) in both layouts of its
release, as LLaVA's ``convert_answer_to_mme.py`` and MME's ``eval_tool`` read them:

(a) one folder per subtask with each image and a same-stem ``.txt`` side by side (``count/000000006040.jpg`` +
    ``count/000000006040.txt``);
(b) ``{subtask}/images/`` + ``{subtask}/questions_answers_YN/`` (artwork, celebrity, landmark, posters, scene).

Each ``.txt`` holds lines ``question<TAB>answer`` (answer ``Yes`` or ``No``), two per image. Subtasks are MME's
(:data:`MME_GROUPS`); other names are read too (the bundled world's are MME's perception ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuna.errors import DataFormatError
from tuna.readers.jsonio import read_text

MME_GROUPS = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class MmeItem:
    task: str
    image: Path
    question: str
    answer: str  # "Yes" or "No"
    file: Path | None = field(default=None, compare=False)   # the .txt it came from (for messages)
    line: int = field(default=0, compare=False)


def mme_group(task: str) -> str | None:
    """MME's group of a subtask ("perception" / "cognition"), None for a name MME does not have."""
    return next((g for g, tasks in MME_GROUPS.items() if task in tasks), None)


def _qa_and_images(task: Path) -> tuple[Path, Path]:
    if (task / "images").is_dir() or (task / "questions_answers_YN").is_dir():
        return task / "questions_answers_YN", task / "images"
    return task, task


def _image_for(qa: Path, images: Path) -> Path:
    found = [images / (qa.stem + s) for s in IMAGE_SUFFIXES if (images / (qa.stem + s)).is_file()]
    if not found:
        found = [p for p in images.glob(qa.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise DataFormatError(f"{qa}: no image named {qa.stem}{{{','.join(IMAGE_SUFFIXES)}}} in {images}; "
                              "restore it or remove the .txt")
    return found[0]


def load_mme(folder: Path) -> list[MmeItem]:
    """Every question of an MME folder (one sub-folder per subtask, either layout), in subtask and file order."""
    folder = Path(folder)
    tasks = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not tasks:
        raise DataFormatError(f"{folder}: no MME subtask folders; point the source at MME_Benchmark_release_version")
    items = []
    for task in tasks:
        qa_dir, images = _qa_and_images(task)
        files = sorted(qa_dir.glob("*.txt"))
        if not files:
            raise DataFormatError(f"{task}: no question files (*.txt) in either MME layout "
                                  "(image + .txt side by side, or images/ + questions_answers_YN/)")
        for qa in files:
            image = _image_for(qa, images)
            for n, line in enumerate(read_text(qa).splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
                    raise DataFormatError(f"{qa}:{n}: expected 'question<TAB>Yes|No', got {line[:80]!r}")
                items.append(MmeItem(task=task.name, image=image, question=parts[0], answer=parts[1].strip(), file=qa, line=n))
    return items


__all__ = ["IMAGE_SUFFIXES", "MME_GROUPS", "MmeItem", "load_mme", "mme_group"]
