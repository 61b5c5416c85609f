"""Readers and writers for the real corpus formats the platform consumes.

The bundled world writes these formats and every later step reads them with the loaders here, so the
same loaders read real data on a cluster:

- web corpus: WebDataset tar shards as img2dataset writes CC3M/CC12M (``{key}.jpg|png``,
  ``{key}.txt``, ``{key}.json``) plus one parquet of metadata per shard;
- alignment / instruction sets: LLaVA JSON (``id``, ``image``, ``conversations``);
- scene annotations and captions: COCO ``instances`` and ``captions`` JSON;
- POPE question files (JSON lines: ``question_id``, ``image``, ``text``, ``label``);
- FINER-style JSON lines (``basic-level-lbl``, ``coarse-level-lbl``, ``fine-level-lbl``, ``attributes``);
- MME-style folders (``{task}/images/{name}``, ``{task}/questions_answers_YN/{stem}.txt``);
- a text corpus in JSON lines (``{"id", "text"}``).

Readers raise :class:`~tuna.errors.DataFormatError` naming the file, the record and the field.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.errors import DataFormatError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def dump_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no trailing spaces)."""
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def dump_jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not valid UTF-8 JSON ({err})") from None


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """JSON lines, each a mapping holding ``required`` keys; blank lines are skipped."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 ({err})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DataFormatError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- web


@dataclass(frozen=True)
class WebSample:
    """One raw web sample; bytes are undecoded so a batch job can quarantine what does not decode."""

    key: str
    shard: str
    image: bytes | None
    image_ext: str | None
    caption: bytes | None
    meta: dict[str, Any]

    def text(self) -> str:
        """The caption as text; raises CorruptSample when missing, empty or not UTF-8."""
        from tuna.errors import CorruptSample

        if self.caption is None:
            raise CorruptSample(self.key, "no caption (.txt) in the shard", "no_caption")
        try:
            text = self.caption.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptSample(self.key, f"caption is not UTF-8 (byte {err.start})", "non_utf8_caption") from None
        if not text.strip():
            raise CorruptSample(self.key, "caption is empty", "empty_caption")
        return text


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_web_shard(path: Path, samples: Sequence[tuple[str, bytes, str, bytes, dict[str, Any]]]) -> None:
    """Write one WebDataset shard ``path`` (.tar) and its metadata ``path.with_suffix('.parquet')``.

    ``samples``: (key, image bytes, image ext, caption bytes, meta). Byte-identical for equal input.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, ext, caption, meta in samples:
            _tar_add(tar, f"{key}.{ext}", image)
            _tar_add(tar, f"{key}.txt", caption)
            _tar_add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    table = pa.table({
        "key": [s[0] for s in samples],
        "caption": [s[3].decode("utf-8", errors="replace") for s in samples],
        "status": ["success"] * len(samples),
        "width": [int(s[4].get("width", 0)) for s in samples],
        "height": [int(s[4].get("height", 0)) for s in samples],
    })
    pq.write_table(table, path.with_suffix(".parquet"), compression="zstd")


def iter_web(folder: Path) -> Iterator[WebSample]:
    """Every sample of every ``*.tar`` shard in ``folder`` (sorted), grouped by key."""
    shards = sorted(Path(folder).glob("*.tar"))
    if not shards:
        raise DataFormatError(f"{folder}: no WebDataset shards (*.tar); build the corpus first (tuna world)")
    for shard in shards:
        try:
            tar = tarfile.open(shard, "r")
        except (tarfile.TarError, OSError) as err:
            raise DataFormatError(f"{shard}: not a readable tar shard ({err})") from None
        with tar:
            current: str | None = None
            parts: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if current is not None and key != current:
                    yield _web_sample(current, shard.name, parts)
                    parts = {}
                current = key
                f = tar.extractfile(member)
                parts[ext.lower()] = f.read() if f else b""
            if current is not None:
                yield _web_sample(current, shard.name, parts)


def _web_sample(key: str, shard: str, parts: dict[str, bytes]) -> WebSample:
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    try:
        meta = json.loads(parts["json"]) if "json" in parts else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    return WebSample(key=key, shard=shard, image=parts.get(ext) if ext else None, image_ext=ext,
                     caption=parts.get("txt"), meta=meta)


# ------------------------------------------------------------------------------------------- llava


@dataclass(frozen=True)
class LlavaRecord:
    """One LLaVA sample: an image path (absolute) and alternating human/gpt turns."""

    id: str
    image: Path
    conversations: list[dict[str, str]]


def load_llava(path: Path, image_folder: Path | None = None) -> list[LlavaRecord]:
    """A LLaVA JSON file (pretrain or instruction); images resolve against ``image_folder``
    (default: ``images/`` next to the file)."""
    path = Path(path)
    folder = Path(image_folder) if image_folder is not None else path.parent / "images"
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    out = []
    for n, row in enumerate(data):
        where = f"{path}[{n}]"
        if not isinstance(row, dict) or "conversations" not in row or "id" not in row:
            raise DataFormatError(f"{where}: a sample needs 'id' and 'conversations'")
        conv = row["conversations"]
        if not isinstance(conv, list) or len(conv) < 2:
            raise DataFormatError(f"{where}: 'conversations' must hold at least one human/gpt pair")
        for t, turn in enumerate(conv):
            want = "human" if t % 2 == 0 else "gpt"
            if not isinstance(turn, dict) or turn.get("from") != want or not isinstance(turn.get("value"), str):
                raise DataFormatError(f"{where}.conversations[{t}]: expected {{'from': '{want}', 'value': str}}")
        if "image" in row and "<image>" not in conv[0]["value"]:
            raise DataFormatError(f"{where}: first human turn lacks the <image> token")
        out.append(LlavaRecord(id=str(row["id"]), image=folder / row["image"] if "image" in row else Path(), conversations=conv))
    return out


# -------------------------------------------------------------------------------------------- coco


def load_coco(path: Path) -> dict[str, Any]:
    """COCO instances or captions JSON, checked for the keys later steps use."""
    data = _read_json(Path(path))
    for key in ("images", "annotations"):
        if key not in data or not isinstance(data[key], list):
            raise DataFormatError(f"{path}: COCO file lacks the '{key}' list")
    ids = {im["id"] for im in data["images"]}
    for n, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in ids:
            raise DataFormatError(f"{path}: annotations[{n}] refers to unknown image_id {ann.get('image_id')!r}")
    return data


def coco_objects_by_image(coco: dict[str, Any]) -> dict[str, list[str]]:
    """file_name -> category names of its instances (the ground truth CHAIR and POPE use)."""
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list[str]] = {f: [] for f in files.values()}
    for ann in coco["annotations"]:
        out[files[ann["image_id"]]].append(names[ann["category_id"]])
    return out


# ------------------------------------------------------------------------------------- eval files

POPE_FIELDS = ("question_id", "image", "text", "label")
FINER_FIELDS = ("id", "image", "basic-level-lbl", "coarse-level-lbl", "fine-level-lbl")


def load_pope(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path, POPE_FIELDS)
    for row in rows:
        if row["label"] not in ("yes", "no"):
            raise DataFormatError(f"{path}: question {row['question_id']}: label must be 'yes' or 'no', got {row['label']!r}")
    return rows


def load_finer(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path, FINER_FIELDS)


@dataclass(frozen=True)
class MmeItem:
    task: str
    image: Path
    question: str
    answer: str  # "Yes" or "No"


def load_mme(folder: Path) -> list[MmeItem]:
    """An MME-style benchmark folder: one sub-folder per subtask, two yes/no questions per image."""
    folder = Path(folder)
    tasks = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not tasks:
        raise DataFormatError(f"{folder}: no MME subtask folders")
    items = []
    for task in tasks:
        for qa in sorted((task / "questions_answers_YN").glob("*.txt")):
            images = [p for p in (task / "images").glob(qa.stem + ".*")]
            if not images:
                raise DataFormatError(f"{qa}: no image named {qa.stem}.* in {task / 'images'}")
            for n, line in enumerate(qa.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                q, sep, a = line.rpartition("\t")
                if not sep or a.strip() not in ("Yes", "No"):
                    raise DataFormatError(f"{qa}:{n}: expected 'question<TAB>Yes|No'")
                items.append(MmeItem(task=task.name, image=images[0], question=q, answer=a.strip()))
    return items


def iter_text(path: Path) -> Iterator[str]:
    """Documents of a JSON-lines text corpus (``{"text": ...}``)."""
    for row in read_jsonl(path, ("text",)):
        yield row["text"]
