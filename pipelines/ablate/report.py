"""The ablation's results: per-seed results aggregated over seeds, compared with the paper, and written as
a markdown table, a json report and a bar plot."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.ablate.variants import COMPARISONS, PAPER, VARIANTS, Comparison
from pipelines.common.figures import write_png
from pipelines.common.storage import write_atomic

IOU_TYPES = ("segm", "bbox")
TABLE_MD = "ablation.md"
TABLE_JSON = "ablation.json"
PLOT_PNG = "ablation.png"
TIE = 0.5  # AP points: a smaller difference has no direction in the table
COMPARED_STATS = ("AP", "AP50", "AP75")  # the numbers the paper's ablation tables give


@dataclass
class SeedResult:
    """One trained (variant, seed): ``metrics`` is ``{"segm": {12 numbers}, "bbox": {...}}`` (percent)."""

    seed: int
    status: str  # "finished" | "failed"
    iterations: int = 0
    train_seconds: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    checkpoint: str | None = None
    error: str | None = None


def stat_names() -> tuple[str, ...]:
    from mrcnn.evaluation import STAT_NAMES

    return STAT_NAMES


# ------------------------------------------------------------------ aggregation
def _spread(values: list[float]) -> dict[str, float | int | None]:
    """mean, sample standard deviation (None for one value), min, max, n; values of -1 (no ground truth
    in that area range) are left out, and an all -1 set gives mean -1."""
    kept = [v for v in values if v is not None and v >= 0]
    if not kept:
        return {"mean": -1.0, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(kept),
        "std": statistics.stdev(kept) if len(kept) > 1 else None,
        "min": min(kept),
        "max": max(kept),
        "n": len(kept),
    }


def aggregate(results: Sequence[SeedResult]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and spread over the finished seeds: ``{iou_type: {stat: {"mean", "std", "min", "max", "n"}}}``.

    An IoU type appears when at least one finished seed has it (a model without a mask branch has no segm).
    """
    finished = [r for r in results if r.status == "finished"]
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for iou_type in IOU_TYPES:
        with_type = [r.metrics[iou_type] for r in finished if iou_type in r.metrics]
        if with_type:
            summary[iou_type] = {name: _spread([m.get(name, -1.0) for m in with_type]) for name in stat_names()}
    return summary


# ------------------------------------------------------------------ the report
def build_report(settings: Mapping[str, Any], results: Mapping[str, Sequence[SeedResult]]) -> dict[str, Any]:
    """The comparison table as a json-ready dict.

    Args:
        settings: what was run (data, preset, steps, seeds...), copied into the report.
        results: per variant name (in table order), one SeedResult per seed.

    Returns:
        ``{"settings", "variants": {name: {"description", "overrides", "status", "runs": [...],
        "summary": aggregate(...)}}, "comparisons": [{"name", "title", "iou_type", "variant", "reference",
        "ours": {"variant": {AP, AP50, AP75}, "reference": ..., "delta": ...}, "paper": [...],
        "same_direction": {AP: bool|None, ...}}]}``. A delta is reference minus variant: what Mask R-CNN's
        choice gains; the paper's deltas are positive. ``same_direction`` is None when a number is missing
        or the difference is under :data:`TIE` points.
    """
    variants = {name: _variant_entry(name, runs) for name, runs in results.items()}
    comparisons = [
        _compare(comparison, variants)
        for comparison in COMPARISONS
        if comparison.variant in variants and comparison.reference in variants
    ]
    return {"paper": PAPER, "settings": dict(settings), "variants": variants, "comparisons": comparisons}


def _variant_entry(name: str, runs: Sequence[SeedResult]) -> dict[str, Any]:
    """A variant's entry of the report: what it is, whether every seed finished, its runs and their summary."""
    variant = VARIANTS.get(name)
    statuses = {r.status for r in runs}
    status = "finished" if statuses == {"finished"} else ("failed" if statuses == {"failed"} else "partial")
    return {
        "description": variant.description if variant else "",
        "overrides": dict(variant.overrides) if variant else {},
        "status": status,
        "runs": [dataclasses.asdict(r) for r in runs],
        "summary": aggregate(runs),
    }


def _compare(comparison: Comparison, variants: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One comparison of the report: our AP/AP50/AP75 of both sides, their deltas, and the paper's."""
    ours: dict[str, dict[str, Any]] = {"variant": {}, "reference": {}, "delta": {}}
    same_direction: dict[str, bool | None] = {}
    for index, stat in enumerate(COMPARED_STATS):
        values = {}
        for side in ("variant", "reference"):
            summary = variants[getattr(comparison, side)]["summary"].get(comparison.iou_type, {})
            mean = summary.get(stat, {}).get("mean")
            values[side] = mean if mean is not None and mean >= 0 else None
            ours[side][stat] = values[side]
        delta = None if None in values.values() else values["reference"] - values["variant"]
        ours["delta"][stat] = delta
        paper_delta = comparison.paper[0].reference[index] - comparison.paper[0].variant[index]
        # Within half a point is a tie (None): at the table's precision, no direction.
        same_direction[stat] = None if delta is None or abs(delta) < TIE else (delta > 0) == (paper_delta > 0)
    return {
        "name": comparison.name,
        "title": comparison.title,
        "iou_type": comparison.iou_type,
        "variant": comparison.variant,
        "reference": comparison.reference,
        "ours": ours,
        "paper": [dataclasses.asdict(p) | {"delta": [round(r - v, 1) for v, r in zip(p.variant, p.reference)]}
                  for p in comparison.paper],
        "same_direction": same_direction,
    }  # fmt: skip


# ------------------------------------------------------------------ markdown
def _fmt(cell: Mapping[str, Any] | None, *, spread: bool) -> str:
    if not cell or cell["mean"] < 0:
        return "–"
    text = f"{cell['mean']:.1f}"
    if spread and cell.get("std") is not None:
        text += f" ± {cell['std']:.1f}"
    return text


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def _direction(comparison: Mapping[str, Any], stat: str) -> str:
    verdict = comparison["same_direction"][stat]
    if verdict is None:
        return "–" if comparison["ours"]["delta"][stat] is None else "tie"
    return "yes" if verdict else "no"


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: the comparisons beside the paper's numbers, then all 12 segm and bbox numbers."""
    spread = len(report["settings"].get("seeds", [0])) > 1
    lines = ["# Mask R-CNN ablations", "", _settings_line(report["settings"], spread=spread)]
    lines += _comparison_lines(report, spread=spread)
    for iou_type in IOU_TYPES:
        lines += _numbers_lines(report, iou_type, spread=spread)
    lines += _variant_lines(report)
    lines += ["", f"Paper: {report['paper']}.", ""]
    return "\n".join(lines)


def _settings_line(settings: Mapping[str, Any], *, spread: bool) -> str:
    """What was run: data, model, workers, budget and seeds."""
    seeds = settings.get("seeds", [0])
    budget = f"{settings.get('steps_per_variant')} steps per variant"
    if settings.get("budget_from"):
        budget += f" ({settings['budget_from']})"
    return (
        f"Data: {settings.get('data_description', settings.get('data'))}. Model: `{settings.get('preset')}`"
        + (f" with {settings['overrides']}" if settings.get("overrides") else "")
        + f", {settings.get('workers')} worker(s) x {settings.get('batch_size')} images per step, {budget}, "
        f"seed(s) {', '.join(str(s) for s in seeds)}"
        + (" (mean ± sample standard deviation over seeds)" if spread else "")
        + ". Same data, seed(s), schedule and steps for every variant."
    )


def _comparison_lines(report: Mapping[str, Any], *, spread: bool) -> list[str]:
    """The comparisons table: ours beside the paper's deltas, and whether the signs agree."""
    lines = ["", "## Comparisons (Δ = Mask R-CNN's choice minus the ablated variant)", ""]
    lines.append(f"'same sign': our Δ has the paper's sign; 'tie': |Δ| < {TIE} AP points.")
    lines.append("")
    lines.append("| comparison | AP | variant AP / AP50 / AP75 | Mask R-CNN AP / AP50 / AP75 | Δ AP / AP50 / AP75 "
                 "| paper Δ (table, setting) | same sign as the paper (AP, AP50, AP75) |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|")
    variants = report["variants"]

    def triple(name: str, iou_type: str) -> str:
        summary = variants[name]["summary"].get(iou_type)
        if variants[name]["status"] == "failed" or not summary:
            return "failed" if variants[name]["status"] == "failed" else "–"
        return " / ".join(_fmt(summary[s], spread=spread) for s in COMPARED_STATS)

    for c in report["comparisons"]:
        delta = " / ".join(_signed(c["ours"]["delta"][s]) for s in COMPARED_STATS)
        paper = "; ".join(f"{' / '.join(f'{d:+.1f}' for d in p['delta'])} ({p['table']}, {p['setting']})" for p in c["paper"])
        same = ", ".join(_direction(c, s) for s in COMPARED_STATS)
        lines.append(f"| {c['title']} (`{c['variant']}` vs `{c['reference']}`) | {c['iou_type']} | "
                     f"{triple(c['variant'], c['iou_type'])} | {triple(c['reference'], c['iou_type'])} | {delta} | "
                     f"{paper} | {same} |")  # fmt: skip
    return lines


def _numbers_lines(report: Mapping[str, Any], iou_type: str, *, spread: bool) -> list[str]:
    """All 12 COCO numbers of ``iou_type`` per variant; a failed variant shows its errors."""
    names = stat_names()
    lines = ["", f"## All {iou_type} numbers", ""]
    lines.append("| variant | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for name, entry in report["variants"].items():
        summary = entry["summary"].get(iou_type)
        if entry["status"] == "failed":
            errors = {r["error"] for r in entry["runs"] if r.get("error")}
            cells = [f"failed: {'; '.join(sorted(errors))[:200]}"] + [""] * (len(names) - 1)
        elif not summary:
            cells = ["–"] * len(names)  # e.g. segm of a model without a mask branch
        else:
            cells = [_fmt(summary[s], spread=spread) for s in names]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def _variant_lines(report: Mapping[str, Any]) -> list[str]:
    """The variants table: what changes, status, steps and MLflow runs."""
    lines = ["", "## Variants", ""]
    lines.append("| variant | what changes | config overrides | status | steps | MLflow run(s) |")
    lines.append("|---|---|---|---|---|---|")
    for name, entry in report["variants"].items():
        runs = entry["runs"]
        steps = sorted({r["iterations"] for r in runs if r["status"] == "finished"})
        overrides = ", ".join(f"`{k}={v}`" for k, v in entry["overrides"].items()) or "–"
        ids = ", ".join(r["mlflow_run_id"] or "–" for r in runs)
        lines.append(f"| `{name}` | {entry['description']} | {overrides} | {entry['status']} | "
                     f"{', '.join(map(str, steps)) or '–'} | {ids} |")  # fmt: skip
    return lines


# ------------------------------------------------------------------ files
def write_plot(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A bar plot per comparison: AP, AP50, AP75 of the ablated variant and of Mask R-CNN's choice, with the
    standard deviation over seeds as error bars (Agg backend, no pyplot); written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    comparisons = report["comparisons"]
    count = max(len(comparisons), 1)
    figure = Figure(figsize=(4.2 * count, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, count, squeeze=False)[0]
    width = 0.38
    for ax, c in zip(axes, comparisons):
        for offset, side, colour in ((-width / 2, "variant", "#bbbbbb"), (width / 2, "reference", "#3b6fb6")):
            name = c[side]
            summary = report["variants"][name]["summary"].get(c["iou_type"], {})
            means = [max(summary.get(s, {}).get("mean", 0.0) or 0.0, 0.0) for s in COMPARED_STATS]
            errors = [summary.get(s, {}).get("std") or 0.0 for s in COMPARED_STATS]
            xs = [i + offset for i in range(len(COMPARED_STATS))]
            bars = ax.bar(xs, means, width, yerr=errors if any(errors) else None, capsize=3, color=colour, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(range(len(COMPARED_STATS)), [f"{c['iou_type']} {s}" for s in COMPARED_STATS], fontsize=8)
        paper = c["paper"][0]
        ax.set_title(f"{c['title']}\npaper Δ {' / '.join(f'{d:+.1f}' for d in paper['delta'])} (Table {paper['table']})",
                     fontsize=9)  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(True, axis="y", alpha=0.3)
    if not comparisons:
        axes[0].text(0.5, 0.5, "no comparison: the baseline or every ablated variant is missing", ha="center")
    return write_png(figure, path)


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``ablation.md``, ``ablation.json`` and ``ablation.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = {"markdown": out / TABLE_MD, "json": out / TABLE_JSON, "plot": out / PLOT_PNG}
    for key, text in (("markdown", format_markdown(report)), ("json", json.dumps(report, indent=1) + "\n")):
        write_atomic(paths[key], text)
    write_plot(report, paths["plot"])
    return paths
