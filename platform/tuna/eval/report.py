"""The evaluation report: one markdown file, its PNG figures and a flat ``metrics.json``.

:func:`write_report` reads what `tuna eval` saved (``<data_dir>/eval/<variant>/metrics.json``, and
``<data_dir>/eval/probes.json`` when the probes have run) and writes ``<data_dir>/eval/report/``:

- ``report.md``: the summary table, per-task details (FINER, POPE, MME, CHAIR), the datastore swap,
  the tuner's weights, the probes, links to the figures and the command that produced it;
- ``headline.png`` (headline metrics per variant), ``pope_splits.png`` (POPE F1 per split),
  ``swap.png`` (TUNA on domain B with datastore A, B or none), ``tuner_weights.png`` (the adaptive
  weight tuner's weight per retrieved tag for a few OOD FINER images, from the trained TUNA model) and
  ``probes.png`` (only when ``probes.json`` exists);
- ``metrics.json``: the flat headline numbers per variant (what DVC and MLflow compare);
- ``manifest.json``: what the report was made from (so an unchanged report is not rewritten by `tuna run`).

Figures are drawn with matplotlib's Agg canvas (no display). Given a :class:`tuna.track.Run`, the
folder is logged as the run's ``report/`` artifacts and the flat numbers as its metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuna.eval.evaluate import EvalError, write_json
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.sources import sources

if TYPE_CHECKING:
    from tuna.track import Run

REPORT_VERSION = "tuna.report/1"
POPE_SPLITS = ("random", "popular", "adversarial")
# Headline bars: (key in headline(), label); FINER B is the swapped-in datastore's, no tags for a model without them.
HEADLINE_BARS = (("finer_id_fine_em", "FINER ID\nfine EM"), ("finer_ood_fine_em", "FINER OOD\nfine EM"),
                 ("finer_b_fine_em", "FINER B\nfine EM"), ("pope_id_f1", "POPE ID\nF1"), ("pope_ood_f1", "POPE OOD\nF1"),
                 ("chair_ood_i", "CHAIR_i OOD\n(lower better)"), ("chair_ood_s", "CHAIR_s OOD\n(lower better)"))
SAMPLE_IMAGES = 6  # images in the tuner-weight heatmap


def _load_variants(cfg: Recipe, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for v in dict.fromkeys(variants):
        path = layout(cfg).eval_metrics(v)
        if path.is_file():
            out[v] = json.loads(path.read_text(encoding="utf-8"))
    return out


def _probes_path(cfg: Recipe) -> Path:
    return layout(cfg).probes


def _sources(cfg: Recipe, variants: Sequence[str]) -> dict[str, Any]:
    """What a report depends on: each variant's eval fingerprint and the probes file's digest."""
    fps = {}
    for v in dict.fromkeys(variants):
        try:
            fps[v] = json.loads(layout(cfg).eval_metrics(v).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            fps[v] = None
    probes = _probes_path(cfg)
    digest = hashlib.sha256(probes.read_bytes()).hexdigest()[:16] if probes.is_file() else None
    return {"version": REPORT_VERSION, "variants": fps, "probes": digest}


def is_up_to_date(cfg: Recipe, variants: Sequence[str]) -> bool:
    """True when ``report.md`` exists and was made from the current metrics of ``variants`` (and probes)."""
    folder = layout(cfg).report
    try:
        saved = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / "report.md").is_file() and saved == _sources(cfg, variants)


def flat_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant: its headline numbers plus POPE F1 per split (``pope_<group>_<split>_f1``)."""
    out: dict[str, dict[str, float]] = {}
    for v, m in metrics.items():
        row = {k: float(x) for k, x in m.get("headline", {}).items()}
        for group, res in m.get("pope", {}).items():
            for split, s in res.get("per_split", {}).items():
                row[f"pope_{group}_{split}_f1"] = float(s["f1"])
        out[v] = row
    return out


def mlflow_metrics(flat: dict[str, dict[str, float]], probes: dict[str, Any] | None = None) -> dict[str, float]:
    """``{variant}_{key}`` (MLflow keys: ``@`` becomes ``_at_``), plus ``probe_<name>_<split>_<features>``."""
    out = {f"{v}_{k}".replace("@", "_at_"): x for v, r in flat.items() for k, x in r.items() if math.isfinite(x)}
    for name, split, feature, value in _probe_points(probes or {}):
        out[f"probe_{name}_{split}_{feature}"] = value
    return out


# ---------------------------------------------------------------- figures

def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    return path


def _grouped_bars(ax: Any, labels: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str,
                  annotate: bool = True) -> None:
    """Bars of each series side by side at every label (None -> no bar); values in percent."""
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        heights = [100 * v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=name)
        if annotate:
            for bar, v in zip(bars, values):
                text = "n/a" if v is None else f"{100 * v:.1f}"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(5.0, ax.get_ylim()[1] * 1.3))  # headroom for the labels and the legend
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def headline_png(flat: dict[str, dict[str, float]], path: Path) -> Path | None:
    bars = [(k, label) for k, label in HEADLINE_BARS
            if any(r.get(k) is not None for r in flat.values())]
    if not bars:
        return None
    series = {v: [r.get(k) for k, _ in bars] for v, r in flat.items()}
    fig = _figure(max(6.0, 1.3 * len(bars) + 0.4 * len(flat)), 4.2)
    ax = fig.add_subplot()
    _grouped_bars(ax, [label for _, label in bars], series, "percent")
    ax.set_title("headline metrics per variant (FINER B: tags from the swapped-in datastore, if the model takes tags)")
    return _save(fig, path)


def pope_png(metrics: dict[str, dict[str, Any]], path: Path) -> Path | None:
    groups = [g for g in ("id", "ood") if any(g in m.get("pope", {}) for m in metrics.values())]
    if not groups:
        return None
    fig = _figure(5.0 * len(groups), 4.0)
    for i, group in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        series = {v: [m["pope"][group]["per_split"].get(s, {}).get("f1") if group in m.get("pope", {}) else None
                      for s in POPE_SPLITS] for v, m in metrics.items()}
        _grouped_bars(ax, list(POPE_SPLITS), series, "F1 (percent)")
        ax.set_title(f"POPE {group.upper()} F1 per split")
    return _save(fig, path)


def _swap(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """TUNA's domain-B FINER results per datastore: {store: {"fine_em", "coarse_em", "attrseek_fine_em"}}."""
    finer = metrics.get("tuna", {}).get("finer", {})
    out = {}
    for store, res in ((k.removeprefix("b@"), r) for k, r in finer.items() if k.startswith("b@")):  # own, swapped-in, none
        if res:
            out[store] = {"fine_em": res["direct"]["fine_em"], "coarse_em": res["direct"]["coarse_em"]}
            if "attrseek" in res:
                out[store]["attrseek_fine_em"] = res["attrseek"]["fine_em"]
    return out


def swap_png(swap: dict[str, dict[str, float]], path: Path) -> Path | None:
    if not swap:
        return None
    stores = list(swap)
    keys = [("fine_em", "fine EM (direct)"), ("coarse_em", "coarse EM (direct)"), ("attrseek_fine_em", "fine EM (ATTRSEEK)")]
    series = {label: [swap[s].get(k) for s in stores] for k, label in keys if any(k in swap[s] for s in stores)}
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, [f"datastore {s}" if s != "none" else "no tags" for s in stores], series, "percent")
    ax.set_title("datastore swap: TUNA on domain-B FINER, no retraining")
    return _save(fig, path)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def probe_groups(probes: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """The plottable probes of probes.json: ``{probe: {split: {features: value}}}`` with every value a
    share in [0, 1] (accuracies, overlaps). ``<probe>_std`` entries (error bars), counts and other
    shapes (claims, settings, notes) are left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, splits in probes.items():
        if str(name).endswith("_std") or not isinstance(splits, dict) or not splits:
            continue
        if not all(isinstance(f, dict) and f and all(_is_number(x) for x in f.values()) for f in splits.values()):
            continue
        if all(0.0 <= x <= 1.0 for f in splits.values() for x in f.values()):
            out[str(name)] = {str(sp): {str(k): float(x) for k, x in f.items()} for sp, f in splits.items()}
    return out


def _probe_std(probes: dict[str, Any], name: str, split: str, feature: str) -> float | None:
    value = (probes.get(f"{name}_std") or {}).get(split, {})
    value = value.get(feature) if isinstance(value, dict) else None
    return float(value) if _is_number(value) else None


def _probe_points(probes: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """(probe, split, features, value) for every value of :func:`probe_groups`."""
    return [(name, split, feature, value) for name, splits in probe_groups(probes).items()
            for split, feats in splits.items() for feature, value in feats.items()]


def probes_png(probes: dict[str, Any], path: Path) -> Path | None:
    groups = probe_groups(probes)
    if not groups:
        return None
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = _figure(6.5 * cols, 4.2 * rows)
    for i, (name, splits) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        names = list(splits)
        feats = list(dict.fromkeys(f for s in splits.values() for f in s))
        _grouped_bars(ax, names, {f: [splits[s].get(f) for s in names] for f in feats}, "percent")
        width = 0.8 / len(feats)
        for j, f in enumerate(feats):  # error bars where probes.json has <probe>_std
            for k, s in enumerate(names):
                std, value = _probe_std(probes, name, s, f), splits[s].get(f)
                if std is not None and value is not None:
                    ax.errorbar(k + (j - (len(feats) - 1) / 2) * width, 100 * value, yerr=100 * std, color="black",
                                capsize=2, linewidth=0.8)
        ax.legend(fontsize=7, ncols=2)
        ax.set_title(name.replace("_", " ") + (" (mean +- std)" if f"{name}_std" in probes else ""))
    return _save(fig, path)


def tuner_samples(cfg: Recipe, count: int = SAMPLE_IMAGES) -> list[dict[str, Any]] | str:
    """The tuner's weight per retrieved tag for ``count`` OOD FINER images (distinct gold classes when possible).

    Returns rows {"image", "gold", "answer", "tags", "weights"}, or the reason there are none.
    """
    from tuna.eval.finer import direct_prompt
    from tuna.formats import load_finer
    from tuna.samples import decode_image

    if "ood" not in sources(cfg).splits("finer"):
        return "no FINER OOD split (data.finer_ood is disabled)"
    folder = layout(cfg).model("tuna", 2)
    cache = layout(cfg).eval_cache(f"finer-ood-tags-{cfg.model.datastore}")
    if not (folder / "config.json").is_file():
        return f"no trained TUNA model at {folder}"
    if not cache.is_file():
        return f"no retrieved tags at {cache} (evaluate TUNA on FINER first)"
    tags = json.loads(cache.read_text(encoding="utf-8"))["tags"]
    split = sources(cfg).eval_set("finer", "ood").path
    records = {r["image"]: r for r in load_finer(split / "finer.jsonl")}
    chosen, seen = [], set()
    for name in sorted(tags):
        r = records.get(name)
        if r is None or not tags[name] or not (split / "images" / name).is_file():
            continue
        if r["fine-level-lbl"] in seen:
            continue
        seen.add(r["fine-level-lbl"])
        chosen.append(r)
        if len(chosen) == count:
            break
    if not chosen:
        return f"no OOD FINER image has retrieved tags in {cache}"
    from tuna.inference import Predictor

    predictor = Predictor(folder, cfg.train.system_prompt, threads=cfg.eval.threads)
    if not predictor.uses_tags:
        return f"the model at {folder} takes no tags"
    images = [decode_image((split / "images" / r["image"]).read_bytes(), r["image"]) for r in chosen]
    answers = predictor.answer(images, [[] for _ in chosen], [direct_prompt(r["basic-level-lbl"]) for r in chosen],
                               [[t for t, _ in tags[r["image"]]] for r in chosen], max_new_tokens=16)
    return [{"image": r["image"], "gold": r["fine-level-lbl"], "answer": a.text, "tags": a.tags, "weights": a.tag_weights}
            for r, a in zip(chosen, answers)]


def tuner_png(samples: list[dict[str, Any]], path: Path) -> Path | None:
    if not samples:
        return None
    import numpy as np

    k = max(len(s["tags"]) for s in samples)
    grid = np.full((len(samples), k), np.nan)
    for i, s in enumerate(samples):
        grid[i, : len(s["weights"])] = s["weights"]
    fig = _figure(2.0 * k + 2.5, 0.75 * len(samples) + 1.4)
    ax = fig.add_subplot()
    top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(top, 1e-6), aspect="auto")
    for i, s in enumerate(samples):
        for j, (tag, w) in enumerate(zip(s["tags"], s["weights"])):
            hit = tag.split()[-1:] == [s["gold"]]
            colour = "black" if w > 0.6 * top else "white"
            ax.text(j, i, f"{tag}{' *' if hit else ''}\n{w:.3f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(k), [f"tag {j + 1}" for j in range(k)], fontsize=8)
    ax.set_yticks(range(len(samples)), [f"{s['image']}\ngold {s['gold']}\nsaid {s['answer'][:24]!r}" for s in samples],
                  fontsize=7)
    ax.set_xlabel("retrieval rank (* = names the gold class)")
    ax.set_title("adaptive weight tuner: weight per retrieved tag (TUNA, OOD FINER, datastore A)")
    fig.colorbar(im, ax=ax, label="tuner weight")
    return _save(fig, path)


# ---------------------------------------------------------------- markdown

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def _finer_md(metrics: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for v, m in metrics.items():
        for key, res in m.get("finer", {}).items():
            d = res["direct"]
            a = res.get("attrseek", {})
            rows.append([v, key, _pct(d["superordinate_em"]), _pct(d["coarse_em"]), _pct(d["fine_em"]),
                         _pct(d.get("fine_em_word")), _pct(d["token_f1"]), _pct(a.get("fine_em")), str(d["n"])])
    if not rows:
        return []
    return ["## FINER (exact match, percent)", "",
            "`b@X`: domain B answered with datastore X (`none`: no tags). EM is FINER's rule (eval_fgvc.py: the "
            "label as a substring of the first 20 words after the first \"Answer:\"); whole-word: the label as "
            "whole words (or its plural) after the last \"Answer:\".", "",
            *_md_table(["variant", "split", "superordinate EM", "coarse EM", "fine EM", "fine EM (whole-word)",
                        "token F1", "ATTRSEEK fine EM", "n"], rows), ""]


def _pope_md(metrics: dict[str, dict[str, Any]], png: Path | None) -> list[str]:
    rows = []
    for v, m in metrics.items():
        for group, res in m.get("pope", {}).items():
            for split in POPE_SPLITS:
                s = res.get("per_split", {}).get(split)
                if s:
                    rows.append([v, group, split, _pct(s["accuracy"]), _pct(s["precision"]), _pct(s["recall"]),
                                 _pct(s["f1"]), _pct(s["yes_ratio"]), str(s["n"])])
    if not rows:
        return []
    return ["## POPE per split (percent)", "", *_md_table(
        ["variant", "group", "split", "accuracy", "precision", "recall", "F1", "yes ratio", "n"], rows), "",
        *([f"![POPE F1 per split]({png.name})", ""] if png else [])]


def _mme_md(metrics: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for v, m in metrics.items():
        for group, res in m.get("mme", {}).items():
            tasks = res.get("tasks", {})
            rows.append([v, group, f"{res['total']:.0f}",
                         ", ".join(f"{t} {s['score']:.0f}" for t, s in sorted(tasks.items()))])
    if not rows:
        return []
    return ["## MME-style yes/no (score = accuracy + accuracy+, per subtask 0-200)", "",
            "Answers read as MME's calculation.py reads them: lower-cased, \"yes\" or \"no\" within the first "
            "four characters, anything else wrong.", "",
            *_md_table(["variant", "group", "total", "subtasks"], rows), ""]


def _chair_md(metrics: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for v, m in metrics.items():
        for group, res in m.get("chair", {}).items():
            rows.append([v, group, _pct(res["chair_i"]), _pct(res["chair_s"]), _pct(res["recall"]), str(res["n"])])
    if not rows:
        return []
    return ["## CHAIR on detailed descriptions (percent; CHAIR lower is better)", "",
            *_md_table(["variant", "group", "CHAIR_i", "CHAIR_s", "object recall", "captions"], rows), ""]


def _swap_md(swap: dict[str, dict[str, float]], png: Path | None) -> list[str]:
    if not swap:
        return []
    rows = [[f"datastore {s}" if s != "none" else "no tags", _pct(r["fine_em"]), _pct(r["coarse_em"]),
             _pct(r.get("attrseek_fine_em"))] for s, r in swap.items()]
    return ["## Datastore swap (TUNA on domain B, no retraining)", "",
            ("The TUNA model trained on domain A answers domain-B FINER questions with tags retrieved from "
             "its own datastore, from the swapped-in one, or with no tags (datastores by their recipe names)."), "",
            *_md_table(["tags from", "fine EM", "coarse EM", "ATTRSEEK fine EM"], rows), "",
            *([f"![datastore swap]({png.name})", ""] if png else [])]


def _tuner_md(samples: list[dict[str, Any]] | str, png: Path | None) -> list[str]:
    lines = ["## Adaptive weight tuner", ""]
    if isinstance(samples, str):
        return lines + [f"No tuner-weight figure: {samples}.", ""]
    lines += [("The trained TUNA model's weight per retrieved tag (softmax over the image's tags of a learned scale "
               "times the cosine between the tag's CLIP text feature and the image's CLIP feature) for OOD FINER "
               "images, with the tags cached by the evaluation (datastore A). `*` marks a tag naming the gold class."), ""]
    rows = [[s["image"], s["gold"], s["answer"].replace("|", "/") or "(empty)",
             ", ".join(f"{t} {w:.3f}" for t, w in zip(s["tags"], s["weights"]))] for s in samples]
    return lines + _md_table(["image", "gold", "answer", "tags (weight)"], rows) + [
        "", *([f"![tuner weights]({png.name})", ""] if png else [])]


PROBE_BOOKKEEPING = ("seconds", "fingerprint", "version", "summary", "models", "settings", "n")


def _scalar(value: Any) -> str:
    return f"{value:.3f}" if _is_number(value) and isinstance(value, float) else json.dumps(value)


def _leaf_lines(value: Any, path: str) -> list[str]:
    """``- path: value`` for a scalar, ``- path: k v, k v`` for a dict of scalars, recursing into nested dicts."""
    if isinstance(value, dict):
        if value and all(not isinstance(v, (dict, list)) for v in value.values()):
            return [f"- {path}: " + ", ".join(f"{k} {_scalar(v)}" for k, v in value.items())]
        return [line for k, v in value.items() for line in _leaf_lines(v, f"{path} / {k}")]
    if isinstance(value, list):
        return []
    return [f"- {path}: {_scalar(value)}"]


def _probes_md(probes: dict[str, Any] | None, png: Path | None, path: Path) -> list[str]:
    lines = ["## Probes", ""]
    if probes is None:
        return lines + [f"No probes yet ({path} does not exist).", ""]
    groups = probe_groups(probes)
    if isinstance(probes.get("summary"), str):
        lines += [f"`{probes['summary']}`", ""]
    if not groups:
        return lines + [f"{path} holds no `{{probe: {{split: {{features: share}}}}}}` entries.", ""]
    splits = list(dict.fromkeys(sp for g in groups.values() for sp in g))
    rows = []
    for name, g in groups.items():
        for feature in dict.fromkeys(f for s in g.values() for f in s):
            cells = []
            for sp in splits:
                value, std = g.get(sp, {}).get(feature), _probe_std(probes, name, sp, feature)
                cells.append(_pct(value) + (f" +- {100 * std:.1f}" if std is not None and value is not None else ""))
            rows.append([name, feature, *cells])
    lines += ["Percent (accuracy for the probes, neighbour overlap for mutual kNN).", "",
              *_md_table(["probe", "features", *splits], rows), ""]
    others = [line for key, value in probes.items()
              if key not in groups and not key.endswith("_std") and key not in PROBE_BOOKKEEPING
              for line in _leaf_lines(value, key)]
    if others:  # loss recovered, claims and whatever else the probes conclude, as path: values
        lines += ["Other probe results:", "", *others, ""]
    return lines + [*([f"![probes]({png.name})", ""] if png else [])]


def _say(line: str) -> None:
    print(line, flush=True)


def write_report(cfg: Recipe, variants: Sequence[str], run: Run | None = None, command: str | None = None,
                 log: Callable[[str], None] = _say) -> Path:
    """Write ``<data_dir>/eval/report/`` (report.md, PNGs, metrics.json) for the evaluated ``variants``; return report.md.

    With ``run`` (an open :class:`tuna.track.Run`), the folder is logged as its ``report/`` artifacts and the
    flat numbers as its metrics. ``command`` is recorded in the report (default: the `tuna eval` call).
    """
    from tuna.eval.suite import table

    metrics = _load_variants(cfg, variants)
    if not metrics:
        raise EvalError(f"no evaluated variant among {', '.join(variants)} under {layout(cfg).eval}; "
                        f"run `tuna eval --config <recipe>` first")
    missing = [v for v in dict.fromkeys(variants) if v not in metrics]
    folder = layout(cfg).report
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):  # a figure that no longer applies must not linger next to the report
        stale.unlink()
    flat = flat_metrics(metrics)
    probes_file = _probes_path(cfg)
    probes = None
    if probes_file.is_file():
        try:
            loaded = json.loads(probes_file.read_text(encoding="utf-8"))
            probes = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            log(f"report: {probes_file} is not valid JSON; probes left out")
    swap = _swap(metrics)
    samples = tuner_samples(cfg) if "tuna" in metrics else "TUNA is not among the evaluated variants"
    pngs = {
        "headline": headline_png(flat, folder / "headline.png"),
        "pope": pope_png(metrics, folder / "pope_splits.png"),
        "swap": swap_png(swap, folder / "swap.png"),
        "tuner": tuner_png(samples, folder / "tuner_weights.png") if isinstance(samples, list) else None,
        "probes": probes_png(probes, folder / "probes.png") if probes else None,
    }
    command = command or f"tuna eval --config configs/{cfg.run.name}.yaml --variant {','.join(metrics)}"
    lines = [f"# TUNA evaluation report: {cfg.run.name} (seed {cfg.run.seed})", "",
             f"Variants: {', '.join(metrics)}" + (f" (not evaluated, left out: {', '.join(missing)})" if missing else "") + ".",
             f"Produced by `{command}` from `{layout(cfg).eval}/<variant>/metrics.json`.", "",
             "## Summary", "", "EM, F1 and CHAIR in percent, MME as its 0-800 score.", "",
             table({v: m["headline"] for v, m in metrics.items()}), "",
             *([f"![headline metrics]({pngs['headline'].name})", ""] if pngs["headline"] else []),
             *_finer_md(metrics), *_pope_md(metrics, pngs["pope"]), *_mme_md(metrics), *_chair_md(metrics),
             *_swap_md(swap, pngs["swap"]), *_tuner_md(samples, pngs["tuner"]),
             *_probes_md(probes, pngs["probes"], probes_file),
             "## Files", "", "- `metrics.json`: the flat headline numbers per variant",
             *(f"- `{p.name}`" for p in pngs.values() if p), ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    write_json(folder / "metrics.json", {**flat, **({"probes": probe_groups(probes)} if probes and probe_groups(probes) else {})})
    write_json(folder / "manifest.json", _sources(cfg, variants))
    if run is not None:
        run.log_metrics(mlflow_metrics(flat, probes))
        run.log_artifact(folder, "report")
        run.set_tags({"tuna.report": str(report)})
    return report


__all__ = ["flat_metrics", "is_up_to_date", "mlflow_metrics", "probe_groups", "tuner_samples", "write_report"]
