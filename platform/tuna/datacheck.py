"""`tuna data check`: every declared input read by its own loader before any step spends time on it.

For each source of the recipe's ``data:`` section: the counts its format has (samples, questions, images, shards),
missing and unreadable images, schema errors, duplicate ids, text-only samples and, for web corpora, what the batch
steps will quarantine. Each problem is one :class:`Finding` line naming the source, the file and line, and the fix.
A finding is fatal when a step would fail on it (no such path, a file not in its declared format, a schema error,
more than ``max_missing`` of a source's images absent); the rest are warnings, and the batch steps skip and count
those samples into their quarantine lists.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import CorruptSample, DataFormatError
from tuna.sources import Source

FATAL, WARNING = "fatal", "warning"


@dataclass(frozen=True)
class Finding:
    """One problem of one source: where (``file:line``), what, and the fix."""

    source: str
    severity: str
    where: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: data.{self.source}: {self.where}: {self.message}; fix: {self.fix}"


@dataclass
class SourceCheck:
    """What checking one source found."""

    name: str
    format: str
    path: str
    from_world: bool
    counts: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    skipped: str = ""   # why the source was not checked (an optional world source that is not written)

    @property
    def fatal(self) -> bool:
        return any(f.severity == FATAL for f in self.findings)

    def add(self, severity: str, where: str, message: str, fix: str) -> None:
        self.findings.append(Finding(self.name, severity, where, message, fix))


@dataclass(frozen=True)
class CheckOptions:
    """How strict the check is and how much it decodes."""

    max_missing: float = 0.05   # fraction of a source's images that may be absent before it is fatal
    decode_limit: int = 2000    # images decoded per source (all are checked for existence)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_missing <= 1.0:
            raise ValueError(f"max_missing must be a fraction in [0, 1], got {self.max_missing}")
        if self.decode_limit < 0:
            raise ValueError(f"decode_limit must be >= 0, got {self.decode_limit}")


def _decodes(path: Path) -> str | None:
    """None when the file decodes as an image, else the reason."""
    from tuna.samples import decode_image

    try:
        decode_image(path.read_bytes(), str(path))
    except CorruptSample as err:
        return err.reason
    except OSError as err:
        return f"unreadable ({err})"
    return None


def check_images(chk: SourceCheck, images: Iterable[tuple[Path, str]], opts: CheckOptions, root: Path) -> None:
    """Existence of every (image, where-named) pair, decoding of the first ``decode_limit``; counts and findings."""
    seen: dict[Path, str] = {}
    for path, where in images:
        seen.setdefault(path, where)
    missing = [(p, w) for p, w in seen.items() if not p.is_file()]
    bad = []
    present = [p for p in seen if p not in dict(missing)]
    for p in present[:opts.decode_limit]:
        reason = _decodes(p)
        if reason:
            bad.append((p, reason))
    chk.counts.update(images=len(seen), missing_images=len(missing), unreadable_images=len(bad),
                      decoded_images=min(len(present), opts.decode_limit))
    if missing:
        share = len(missing) / max(len(seen), 1)
        severity = FATAL if share > opts.max_missing else WARNING
        p, where = missing[0]
        chk.add(severity, where, f"{len(missing)} of {len(seen)} images missing ({share:.0%}) under {root}, e.g. {p}",
                f"point data.{chk.name}.images at the folder that holds them, or restore the files"
                + ("" if severity == FATAL else " (steps skip and count them)"))
    if bad:
        p, reason = bad[0]
        chk.add(WARNING, str(p), f"{len(bad)} image(s) do not decode, e.g. this one: {reason}",
                "re-download or remove them (steps skip and count them)")


def _duplicates(chk: SourceCheck, keyed: Sequence[tuple[Any, str]], what: str) -> None:
    counts = Counter(k for k, _ in keyed)
    dups = [k for k, n in counts.items() if n > 1]
    chk.counts[f"duplicate_{what}s"] = len(dups)
    if dups:
        where = [w for k, w in keyed if k == dups[0]]
        chk.add(WARNING, where[1], f"{len(dups)} duplicate {what}(s), e.g. {dups[0]!r} also at {where[0]}",
                f"give each sample its own {what} (results keyed by {what} would collide)")


# ------------------------------------------------------------------------------------------ per format


def _web(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.web import iter_web, shard_paths, shard_status

    shards, missing_shards = shard_paths(src.path)
    skipped: list[tuple[CorruptSample, str]] = []
    keys: list[tuple[str, str]] = []
    kinds: Counter[str] = Counter()
    decoded = 0
    for s in iter_web(src.path, lambda err, where: skipped.append((err, where))):
        keys.append((s.key, f"{s.shard}:{s.key}"))
        try:
            s.text()
            if s.image is None:
                raise CorruptSample(s.key, "no image member (.jpg/.png/.webp)", "no_image")
            if decoded < opts.decode_limit:
                decoded += 1
                from tuna.samples import decode_image

                decode_image(s.image, s.key)
        except CorruptSample as err:
            kinds[err.kind] += 1
            if kinds[err.kind] == 1:
                chk.add(WARNING, f"{s.shard}:{s.key}", f"sample {err.reason}", "none needed: steps skip and count such samples")
    statuses: Counter[str] = Counter()
    for shard in shards:
        statuses.update(shard_status(shard))
    chk.counts.update(shards=len(shards), samples=len(keys), decoded_images=decoded, **{f"skipped_{k}": n for k, n in kinds.items()})
    if statuses:
        chk.counts["parquet_rows"] = sum(statuses.values())
        chk.counts["failed_downloads"] = sum(n for k, n in statuses.items() if k != "success")
    for err, where in skipped:
        chk.add(WARNING if shards else FATAL, where, err.reason,
                "re-download the shard or leave it out of the path (steps skip and count it)")
    chk.counts["bad_shards"] = len(skipped) - len(missing_shards)
    chk.counts["missing_shards"] = len(missing_shards)
    _duplicates(chk, keys, "key")


def _llava(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.llava import load_llava

    records = load_llava(src.path, src.images)
    chk.counts.update(samples=len(records), text_only=sum(r.image is None for r in records),
                      multi_turn=sum(len(r.conversations) > 2 for r in records))
    _duplicates(chk, [(r.id, f"{src.path}:{r.line}") for r in records], "id")
    check_images(chk, [(r.image, f"{src.path}:{r.line}") for r in records if r.image is not None], opts, src.images)


def _pope(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.pope import pope_lines, pope_split_files

    images = []
    for split, file in pope_split_files(src.path).items():
        rows = pope_lines(file)
        chk.counts[f"questions_{split}"] = len(rows)
        _duplicates(chk, [(r["question_id"], f"{file}:{n}") for n, r in rows], f"{split} question_id")
        images += [(src.images / r["image"], f"{file}:{n}") for n, r in rows]
    check_images(chk, images, opts, src.images)


def _finer(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.finer import LABEL_FIELDS, finer_file, finer_lines

    file = finer_file(src.path)
    rows = finer_lines(src.path)
    chk.counts.update(rows=len(rows), list_labels=sum(any(isinstance(r[f], list) for f in LABEL_FIELDS) for _, r in rows))
    _duplicates(chk, [(r["id"], f"{file}:{n}") for n, r in rows], "id")
    check_images(chk, [(src.images / r["image"], f"{file}:{n}") for n, r in rows], opts, src.images)


def _mme(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.mme import load_mme, mme_group

    items = load_mme(src.path)
    tasks = Counter(i.task for i in items)
    chk.counts.update(questions=len(items), subtasks=len(tasks))
    unknown = sorted(t for t in tasks if mme_group(t) is None)
    if unknown:
        chk.add(WARNING, str(src.path / unknown[0]), f"subtask(s) {', '.join(unknown)} are not MME's",
                "rename to MME's subtask names (existence, count, position, color, OCR, ...) to get MME's groups")
    per_image = Counter((i.task, i.image) for i in items)
    odd = [(k, n) for k, n in per_image.items() if n != 2]
    chk.counts["images_without_a_pair"] = len(odd)
    if odd:
        (task, image), n = odd[0]
        chk.add(FATAL, str(image.with_suffix(".txt")), f"{len(odd)} image(s) do not have exactly 2 questions (this one: {n})",
                "MME scores questions in pairs per image: give each image one Yes and one No question")
    _duplicates(chk, [((i.task, i.image.name, i.question), f"{i.file}:{i.line}") for i in items], "question")


def _coco(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.coco import coco_files, load_coco

    files = coco_files(src.path, src.image_root, captions=False)   # CHAIR reads only the instances
    instances = load_coco(files.instances)
    if files.captions is not None:
        chk.counts["captions"] = len(load_coco(files.captions)["annotations"])
    chk.counts.update(instances=len(instances["annotations"]), categories=len(instances.get("categories", [])))
    _duplicates(chk, [(im["id"], f"{files.instances}: images[{n}]") for n, im in enumerate(instances["images"])], "image id")
    check_images(chk, [(files.images / im["file_name"], f"{files.instances}: images[{n}]")
                       for n, im in enumerate(instances["images"])], opts, files.images)


def _text(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.jsonio import read_jsonl

    chk.counts["documents"] = len(read_jsonl(src.path, ("text",)))


def _taxonomy(chk: SourceCheck, src: Source, opts: CheckOptions) -> None:
    from tuna.readers.jsonio import read_json

    data = read_json(src.path)
    chk.counts["domains"] = len(data) if isinstance(data, dict) else 0


CHECKS: dict[str, Callable[[SourceCheck, Source, CheckOptions], None]] = {
    "webdataset": _web, "llava_json": _llava, "pope": _pope, "finer_jsonl": _finer, "mme": _mme,
    "coco_captions": _coco, "text_jsonl": _text, "taxonomy_json": _taxonomy,
}


def _exists(src: Source) -> bool:
    if src.format == "webdataset":
        from tuna.readers.web import shard_paths

        shards, missing = shard_paths(src.path)
        return bool(shards) or (bool(missing) and "{" in str(src.path))
    return src.path.exists()


def check_source(src: Source, opts: CheckOptions | None = None) -> SourceCheck:
    """Read ``src`` with its format's loader and report counts and findings; never raises on bad data."""
    opts = opts or CheckOptions()
    chk = SourceCheck(src.name, src.format, str(src.path), src.from_world)
    if not _exists(src):
        if src.from_world and src.name == "web_clip":
            chk.skipped = "not written (world.sizes.clip_web = 0)"
            return chk
        if src.from_world and src.name.startswith(("pope_val", "finer_val", "mme_val")):
            chk.skipped = "not written (world.sizes.*_val = 0)"
            return chk
        fix = "run `tuna world` first" if src.from_world else f"set data.{src.name}.path to an existing {src.format} source"
        chk.add(FATAL, str(src.path), "does not exist", fix)
        return chk
    try:
        CHECKS[src.format](chk, src, opts)
    except DataFormatError as err:
        where, _, message = str(err).partition(": ")
        message, _, fix = message.partition("; ")
        chk.add(FATAL, where, message, fix or f"make it {src.format} as the README's data sources describe, or "
                f"declare its real format in data.{src.name}.format")
    return chk


def check_sources(sources: Sequence[Source], opts: CheckOptions | None = None) -> list[SourceCheck]:
    """:func:`check_source` for each source."""
    return [check_source(s, opts) for s in sources]


def _summary(chk: SourceCheck) -> str:
    if chk.skipped:
        return chk.skipped
    shown = {k: v for n, (k, v) in enumerate(chk.counts.items()) if v or n == 0}   # zeros are not news
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in shown.items()) or "-"


def report_lines(checks: Sequence[SourceCheck]) -> list[str]:
    """The short report: one line per source, then one line per finding, then the verdict."""
    width = max((len(c.name) for c in checks), default=4)
    out = []
    for c in checks:
        status = "skip" if c.skipped else ("FAIL" if c.fatal else ("warn" if c.findings else "ok"))
        origin = "world" if c.from_world else c.path
        out.append(f"{status:<4}  {c.name:<{width}}  {c.format:<13}  {_summary(c)}  [{origin}]")
    findings = [f for c in checks for f in c.findings]
    if findings:
        out.append("")
        out += [f.line() for f in sorted(findings, key=lambda f: f.severity != FATAL)]
    fatal = sum(f.severity == FATAL for f in findings)
    out.append("")
    out.append(f"{len(checks)} sources: {fatal} fatal, {len(findings) - fatal} warnings"
               + ("; fix the fatal ones before training" if fatal else ""))
    return out


def report_json(checks: Sequence[SourceCheck]) -> dict[str, Any]:
    """The report as JSON-ready data."""
    return {"sources": [{**asdict(c), "fatal": c.fatal} for c in checks],
            "fatal": sum(c.fatal for c in checks),
            "findings": sum(len(c.findings) for c in checks)}


def write_report(checks: Sequence[SourceCheck], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(checks), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def preflight(srcs: Sequence[Source], decode_limit: int = 100) -> None:
    """The check every run does before any step spends time: the sources a user declared (the world's copies are
    written by `tuna world` and checked by its tests) are read by their loaders, web corpora only as far as their
    shards resolving (reading every shard of CC12M is `tuna data check`'s job). Raises one DataFormatError
    naming the first fatal finding and how many more there are."""
    checks = []
    for src in (s for s in srcs if not s.from_world):
        if src.format == "webdataset":
            from tuna.readers.web import shard_paths

            chk = SourceCheck(src.name, src.format, str(src.path), False)
            if not shard_paths(src.path)[0]:
                chk.add(FATAL, str(src.path), "no WebDataset shard (.tar) there",
                        f"point data.{src.name}.path at a folder, glob or brace list of img2dataset shards")
            checks.append(chk)
        else:
            checks.append(check_source(src, CheckOptions(decode_limit=decode_limit)))
    fatal = [f for c in checks for f in c.findings if f.severity == FATAL]
    if fatal:
        more = f" ({len(fatal) - 1} more fatal finding(s): run `tuna data check`)" if len(fatal) > 1 else ""
        raise DataFormatError(fatal[0].line().removeprefix("fatal: ") + more)


__all__ = ["CHECKS", "FATAL", "WARNING", "CheckOptions", "Finding", "SourceCheck", "check_images", "check_source",
           "check_sources", "preflight", "report_json", "report_lines", "write_report"]
