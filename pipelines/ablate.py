"""``mrcnn ablate``: the Mask R-CNN paper's ablations (Table 2 and the multi-task comparison of Table 3),
reproduced with this project's training pipeline.

Every variant is the baseline (RoIAlign, per-class sigmoid masks, FCN mask head, mask branch on) with one
switch flipped, trained by ``pipelines.train.train`` (Ray Train, the code users train with) on the same
data, with the same seed(s), schedule and number of steps, then evaluated (COCO AP, bbox and segm) on the
val split. Each training run is an MLflow child run under one parent run, which holds the settings, the
comparison table (markdown and json) and a bar plot as artifacts.

The budget is equal in steps, as in the paper: ``steps_per_variant`` gives it directly (default 150); with
``minutes_per_variant`` the first variant trained (the baseline) trains for that long and its step count
becomes every other variant's budget (its learning rate decays at 80% of its minutes, the others' at 80%
of those steps: the same iteration when the speed is steady).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.progress import StageLog
from pipelines.common.storage import write_atomic

BASELINE = "baseline"
# The default budget: about 6 min per variant for r18_fpn_small with 2 CPU workers x 4 images (25 steps/min),
# so that the five variants train in about 35 min on a 2-core machine.
DEFAULT_STEPS_PER_VARIANT = 150
IOU_TYPES = ("segm", "bbox")
TABLE_MD = "ablation.md"
TABLE_JSON = "ablation.json"
PLOT_PNG = "ablation.png"
TIE = 0.5  # AP points: a smaller difference has no direction in the table
PAPER = 'He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870v3)'


@dataclass(frozen=True)
class Variant:
    """One ablation variant: the baseline's config with ``overrides`` (dotted keys of ``mrcnn.config.Config``)."""

    name: str
    overrides: Mapping[str, Any]
    description: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(BASELINE, {}, "Mask R-CNN: RoIAlign, per-class sigmoid masks, FCN mask head, mask branch on"),
        Variant("roi_pool", {"model.box_head.pooler": "roi_pool"},
                "RoIPool: RoI and bin edges rounded to the feature grid, max per bin (box and mask poolers)"),
        Variant("softmax", {"model.mask_head.loss": "softmax"},
                "per-pixel softmax across classes (multinomial masks: mask and class coupled)"),
        Variant("mlp", {"model.mask_head.head": "mlp"}, "MLP mask head: fc-1024, fc-1024, fc-(K+1)x28x28"),
        Variant("mask_off", {"model.mask_head.enabled": False}, "Faster R-CNN with RoIAlign: the mask branch off"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class PaperResult:
    """The paper's numbers for one comparison: (AP, AP50, AP75) of the ablated variant and of Mask R-CNN's choice."""

    table: str
    setting: str
    variant: tuple[float, float, float]
    reference: tuple[float, float, float]


@dataclass(frozen=True)
class Comparison:
    """One row of the paper's ablations: ``variant`` against ``reference`` (Mask R-CNN's choice) on ``iou_type``."""

    name: str
    title: str
    variant: str
    reference: str
    iou_type: str
    paper: tuple[PaperResult, ...]


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("alignment", "RoIPool vs RoIAlign", "roi_pool", BASELINE, "segm", (
        PaperResult("2c", "ResNet-50-C4 (stride 16)", (26.9, 48.8, 26.4), (30.3, 51.2, 31.5)),
        PaperResult("2d", "ResNet-50-C5 (stride 32)", (23.6, 46.5, 21.6), (30.9, 51.8, 32.1)),
    )),
    Comparison("mask_output", "softmax vs per-class sigmoid", "softmax", BASELINE, "segm", (
        PaperResult("2b", "ResNet-50-C4", (24.8, 44.1, 25.1), (30.3, 51.2, 31.5)),
    )),
    Comparison("mask_head", "MLP vs FCN mask head", "mlp", BASELINE, "segm", (
        PaperResult("2e", "ResNet-50-FPN", (31.5, 53.7, 32.8), (33.6, 55.2, 35.3)),
    )),
    Comparison("multi_task", "Faster R-CNN vs Mask R-CNN (box AP)", "mask_off", BASELINE, "bbox", (
        PaperResult("3", "ResNet-101-FPN, test-dev", (37.3, 59.6, 40.3), (38.2, 60.3, 41.7)),
    )),
)  # fmt: skip


_log = StageLog("ablate")


def parse_variants(names: str | Sequence[str] | None) -> list[Variant]:
    """Variants by name (comma-separated string or list), in the canonical order; None or "all": every one.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or an empty selection.
    """
    if names is None or names == "all" or names == ["all"]:
        return list(VARIANTS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; known: {list(VARIANTS)}")
    if not names:
        raise ValueError(f"variants: none selected; known: {list(VARIANTS)}")
    return [v for v in VARIANTS.values() if v.name in set(names)]


# ------------------------------------------------------------------ results and the table
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


def _fmt(cell: Mapping[str, Any] | None, *, spread: bool) -> str:
    if not cell or cell["mean"] < 0:
        return "–"
    text = f"{cell['mean']:.1f}"
    if spread and cell.get("std") is not None:
        text += f" ± {cell['std']:.1f}"
    return text


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


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
    variants: dict[str, Any] = {}
    for name, runs in results.items():
        variant = VARIANTS.get(name)
        statuses = {r.status for r in runs}
        status = "finished" if statuses == {"finished"} else ("failed" if statuses == {"failed"} else "partial")
        variants[name] = {
            "description": variant.description if variant else "",
            "overrides": dict(variant.overrides) if variant else {},
            "status": status,
            "runs": [dataclasses.asdict(r) for r in runs],
            "summary": aggregate(runs),
        }
    comparisons = []
    for comparison in COMPARISONS:
        if comparison.variant not in variants or comparison.reference not in variants:
            continue
        ours: dict[str, dict[str, Any]] = {"variant": {}, "reference": {}, "delta": {}}
        same_direction: dict[str, bool | None] = {}
        for index, stat in enumerate(("AP", "AP50", "AP75")):
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
        comparisons.append({
            "name": comparison.name,
            "title": comparison.title,
            "iou_type": comparison.iou_type,
            "variant": comparison.variant,
            "reference": comparison.reference,
            "ours": ours,
            "paper": [dataclasses.asdict(p) | {"delta": [round(r - v, 1) for v, r in zip(p.variant, p.reference)]}
                      for p in comparison.paper],
            "same_direction": same_direction,
        })  # fmt: skip
    return {"paper": PAPER, "settings": dict(settings), "variants": variants, "comparisons": comparisons}


def _direction(comparison: Mapping[str, Any], stat: str) -> str:
    verdict = comparison["same_direction"][stat]
    if verdict is None:
        return "–" if comparison["ours"]["delta"][stat] is None else "tie"
    return "yes" if verdict else "no"


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: the comparisons beside the paper's numbers, then all 12 segm and bbox numbers."""
    settings = report["settings"]
    seeds = settings.get("seeds", [0])
    spread = len(seeds) > 1
    lines = ["# Mask R-CNN ablations", ""]
    budget = f"{settings.get('steps_per_variant')} steps per variant"
    if settings.get("budget_from"):
        budget += f" ({settings['budget_from']})"
    lines.append(
        f"Data: {settings.get('data_description', settings.get('data'))}. Model: `{settings.get('preset')}`"
        + (f" with {settings['overrides']}" if settings.get("overrides") else "")
        + f", {settings.get('workers')} worker(s) x {settings.get('batch_size')} images per step, {budget}, "
        f"seed(s) {', '.join(str(s) for s in seeds)}"
        + (" (mean ± sample standard deviation over seeds)" if spread else "")
        + ". Same data, seed(s), schedule and steps for every variant."
    )
    lines += ["", "## Comparisons (Δ = Mask R-CNN's choice minus the ablated variant)", ""]
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
        return " / ".join(_fmt(summary[s], spread=spread) for s in ("AP", "AP50", "AP75"))

    for c in report["comparisons"]:
        delta = " / ".join(_signed(c["ours"]["delta"][s]) for s in ("AP", "AP50", "AP75"))
        paper = "; ".join(f"{' / '.join(f'{d:+.1f}' for d in p['delta'])} ({p['table']}, {p['setting']})" for p in c["paper"])
        same = ", ".join(_direction(c, s) for s in ("AP", "AP50", "AP75"))
        lines.append(f"| {c['title']} (`{c['variant']}` vs `{c['reference']}`) | {c['iou_type']} | "
                     f"{triple(c['variant'], c['iou_type'])} | {triple(c['reference'], c['iou_type'])} | {delta} | "
                     f"{paper} | {same} |")  # fmt: skip
    names = stat_names()
    for iou_type in IOU_TYPES:
        lines += ["", f"## All {iou_type} numbers", ""]
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
    lines += ["", "## Variants", ""]
    lines.append("| variant | what changes | config overrides | status | steps | MLflow run(s) |")
    lines.append("|---|---|---|---|---|---|")
    for name, entry in report["variants"].items():
        runs = entry["runs"]
        steps = sorted({r["iterations"] for r in runs if r["status"] == "finished"})
        overrides = ", ".join(f"`{k}={v}`" for k, v in entry["overrides"].items()) or "–"
        ids = ", ".join(r["mlflow_run_id"] or "–" for r in runs)
        lines.append(f"| `{name}` | {entry['description']} | {overrides} | {entry['status']} | "
                     f"{', '.join(map(str, steps)) or '–'} | {ids} |")  # fmt: skip
    lines += ["", f"Paper: {report['paper']}.", ""]
    return "\n".join(lines)


def write_plot(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A bar plot per comparison: AP, AP50, AP75 of the ablated variant and of Mask R-CNN's choice, with the
    standard deviation over seeds as error bars (Agg backend, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    comparisons = report["comparisons"]
    count = max(len(comparisons), 1)
    figure = Figure(figsize=(4.2 * count, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, count, squeeze=False)[0]
    stats = ("AP", "AP50", "AP75")
    width = 0.38
    for ax, c in zip(axes, comparisons):
        for offset, side, colour in ((-width / 2, "variant", "#bbbbbb"), (width / 2, "reference", "#3b6fb6")):
            name = c[side]
            summary = report["variants"][name]["summary"].get(c["iou_type"], {})
            means = [max(summary.get(s, {}).get("mean", 0.0) or 0.0, 0.0) for s in stats]
            errors = [summary.get(s, {}).get("std") or 0.0 for s in stats]
            xs = [i + offset for i in range(len(stats))]
            bars = ax.bar(xs, means, width, yerr=errors if any(errors) else None, capsize=3, color=colour, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(range(len(stats)), [f"{c['iou_type']} {s}" for s in stats], fontsize=8)
        paper = c["paper"][0]
        ax.set_title(f"{c['title']}\npaper Δ {' / '.join(f'{d:+.1f}' for d in paper['delta'])} (Table {paper['table']})",
                     fontsize=9)  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(True, axis="y", alpha=0.3)
    if not comparisons:
        axes[0].text(0.5, 0.5, "no comparison: the baseline or every ablated variant is missing", ha="center")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``ablation.md``, ``ablation.json`` and ``ablation.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / TABLE_MD, "json": out / TABLE_JSON, "plot": out / PLOT_PNG}
    for key, text in (("markdown", format_markdown(report)), ("json", json.dumps(report, indent=1) + "\n")):
        write_atomic(paths[key], text)
    write_plot(report, paths["plot"])
    return paths


# ------------------------------------------------------------------ data
def prepare_data(
    data: str, out_dir: Path, *, num_train: int, num_val: int, size: int, difficulty: str, data_seed: int
) -> tuple[str, str]:
    """The shards to train and evaluate on, and a description of them.

    ``data``: ``synthetic`` (written to ``OUT/data`` and preprocessed to ``OUT/shards``), a shard folder
    from ``mrcnn preprocess`` (with ``train/`` and ``val/``), or a COCO dataset root (preprocessed to
    ``OUT/shards``).
    """
    from pipelines.preprocess import preprocess_dataset
    from pipelines.shards import join_path, list_shards, read_categories

    if data == "synthetic":
        from mrcnn.data.synthetic import make_synthetic_coco

        info = make_synthetic_coco(out_dir / "data", num_train=num_train, num_val=num_val, size=size,
                                   seed=data_seed, difficulty=difficulty)  # fmt: skip
        _log(f"synthetic data ({difficulty}): {num_train} train, {num_val} val images of {size} px -> {out_dir / 'data'}")
        preprocess_dataset(out_dir / "data", out_dir / "shards", progress=False)
        described = (f"synthetic shapes, difficulty `{difficulty}`, {num_train} train / {num_val} val images of "
                     f"{size} px ({info['train']['num_annotations']} / {info['val']['num_annotations']} instances), "
                     f"data seed {data_seed}")  # fmt: skip
        return str(out_dir / "shards"), described
    try:
        read_categories(data)
        list_shards(join_path(data, "train"))
        is_shards = True
    except FileNotFoundError:
        is_shards = False
    if is_shards:
        try:
            list_shards(join_path(data, "val"))
        except FileNotFoundError:
            raise ValueError(f"--data {data}: no val/ shards; the ablation evaluates every variant on the val split") from None
        return data, f"shards `{data}`"
    _log(f"preprocessing {data} -> {out_dir / 'shards'}")
    summaries = preprocess_dataset(data, out_dir / "shards", progress=False)
    if "val" not in summaries or "train" not in summaries:
        raise ValueError(f"--data {data}: found splits {sorted(summaries)}; the ablation needs train and val")
    return str(out_dir / "shards"), f"COCO dataset `{data}`"


# ------------------------------------------------------------------ running
@dataclass(frozen=True)
class AblationConfig:
    """What ``mrcnn ablate`` runs.

    variants: names from :data:`VARIANTS` (table order is always the canonical one).
    steps_per_variant / minutes_per_variant: the budget; steps win when both are given, so set
        ``steps_per_variant=0`` to budget in minutes.
    seeds: training seeds; every variant is trained once per seed.
    data: ``synthetic`` or a folder (shards or a COCO dataset); num_train/num_val/size/difficulty/data_seed
        describe the synthetic set.
    overrides: config overrides applied to every variant (before the variant's own).
    storage_path: checkpoints of every variant (default ``OUT/ray_results``; shared storage on a cluster).
    backbone_weights: ImageNet ResNet weights every variant starts from (see ``TrainRunConfig``).
    """

    out: str = "mrcnn-ablate"
    data: str = "synthetic"
    variants: tuple[str, ...] = tuple(VARIANTS)
    steps_per_variant: int = DEFAULT_STEPS_PER_VARIANT
    minutes_per_variant: float = 0.0
    seeds: tuple[int, ...] = (0,)
    preset: str = "r18_fpn_small"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 2
    use_gpu: bool = False
    batch_size: int = 4
    num_train: int = 400
    num_val: int = 100
    size: int = 128
    difficulty: str = "hard"
    data_seed: int = 0
    storage_path: str = ""
    backbone_weights: str = ""
    tracking_uri: str = ""
    experiment: str = "mrcnn-ablate"
    num_val_overlays: int = 2
    max_failures: int = 1
    ray_address: str | None = None

    def validate(self) -> AblationConfig:
        parse_variants(list(self.variants))
        if self.steps_per_variant < 0 or self.minutes_per_variant < 0:
            raise ValueError("ablate: steps_per_variant and minutes_per_variant must be >= 0")
        if not self.steps_per_variant and not self.minutes_per_variant:
            raise ValueError("ablate: give a budget: steps_per_variant or minutes_per_variant")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ablate: seeds must be distinct, got {list(self.seeds)}")
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError("ablate: workers and batch_size must be >= 1")
        return self


@dataclass
class AblationResult:
    report: dict[str, Any]
    paths: dict[str, Path]
    parent_run_id: str
    tracking_uri: str

    @property
    def failed(self) -> list[str]:
        return [name for name, v in self.report["variants"].items() if v["status"] != "finished"]


def failure_reason(exc: BaseException) -> str:
    """One line saying why training failed: for Ray Train's errors, the first failing worker's (or the
    controller's) exception, i.e. the last ``SomeError: message`` line of its traceback."""
    failures = getattr(exc, "worker_failures", None)
    prefix, inner = "", exc
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        prefix, inner = f"rank {rank}: ", failures[rank]
    elif isinstance(getattr(exc, "controller_failure", None), BaseException):
        prefix, inner = "controller: ", exc.controller_failure
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b:?", line)]
    text = raised[-1] if raised else f"{type(inner).__name__}: {lines[0] if lines else ''}"
    return (prefix + text)[:300]


def _train_one(config: AblationConfig, variant: Variant, seed: int, *, shards: str, stamp: str, parent_run_id: str,
               tracking_uri: str, max_iters: int, minutes: float) -> SeedResult:  # fmt: skip
    """Train and evaluate one (variant, seed) through ``pipelines.train.train``; failures are caught and recorded."""
    from pipelines.tracking import Tracker, child_runs
    from pipelines.train import TrainRunConfig, train

    name = f"ablate-{stamp}-{variant.name}-s{seed}"
    run = TrainRunConfig(
        data=shards,
        preset=config.preset,
        overrides={**config.overrides, **variant.overrides},
        workers=config.workers,
        use_gpu=config.use_gpu,
        batch_size=config.batch_size,
        max_iters=max_iters,
        minutes=minutes,
        eval_every=10**9,  # once, at the end
        checkpoint_every=10**9,
        storage_path=config.storage_path or str(Path(config.out).resolve() / "ray_results"),
        backbone_weights=config.backbone_weights,
        name=name,
        max_failures=config.max_failures,
        tracking_uri=tracking_uri,
        experiment=config.experiment,
        model_name="",  # nothing registered: the variants are comparisons, not models to serve
        parent_run_id=parent_run_id,
        seed=seed,
        num_val_overlays=config.num_val_overlays,
    )
    started = time.perf_counter()
    try:
        result = train(run, ray_address=config.ray_address)
    except Exception as exc:  # noqa: BLE001 (one variant failing must not lose the others)
        reason = failure_reason(exc)
        _log(f"{variant.name} seed {seed} FAILED after {time.perf_counter() - started:.0f} s: {reason}")
        if os.environ.get("MRCNN_DEBUG"):
            traceback.print_exc()
        run_id = None
        for child in child_runs(tracking_uri, parent_run_id, run_name=name):  # the child run rank 0 had started
            run_id = child["run_id"]
            tracker = Tracker.attach(tracking_uri, run_id)
            tracker.set_tags({"mrcnn.ablation.error": reason})
            if child["status"] == "RUNNING":
                tracker.end("FAILED")
        return SeedResult(seed=seed, status="failed", mlflow_run_id=run_id, error=reason)
    metrics = {
        iou_type: {stat: float(result.metrics[f"{iou_type}_{stat}"]) for stat in stat_names()}
        for iou_type in IOU_TYPES
        if f"{iou_type}_AP" in result.metrics
    }
    if result.mlflow_run_id:
        Tracker.attach(tracking_uri, result.mlflow_run_id).set_tags(
            {"mrcnn.ablation.variant": variant.name, "mrcnn.ablation.seed": seed}
        )
    return SeedResult(
        seed=seed,
        status="finished",
        iterations=result.iteration,
        train_seconds=float(result.metrics.get("train_seconds", 0.0)),
        metrics=metrics,
        mlflow_run_id=result.mlflow_run_id,
        checkpoint=result.checkpoint_path,
    )


def run_ablation(config: AblationConfig) -> AblationResult:
    """Train every (variant, seed), write the table, json and plot to ``config.out``, log them to the parent run.

    Returns:
        the report (see :func:`build_report`), the written files, the parent run id and the tracking URI.

    Raises:
        ValueError: a bad setting, or the data cannot be found. A variant that fails to train does not raise:
            it is reported as failed in the table.
    """
    from pipelines.common import ray_session
    from pipelines.tracking import Tracker, default_tracking_uri

    config = config.validate()
    variants = parse_variants(list(config.variants))
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = config.tracking_uri or default_tracking_uri(out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with ray_session(config.ray_address):
        shards, data_description = prepare_data(
            config.data, out, num_train=config.num_train, num_val=config.num_val, size=config.size,
            difficulty=config.difficulty, data_seed=config.data_seed,
        )  # fmt: skip
        settings: dict[str, Any] = {
            "data": config.data, "data_description": data_description, "shards": shards, "preset": config.preset,
            "overrides": dict(config.overrides), "workers": config.workers, "use_gpu": config.use_gpu,
            "batch_size": config.batch_size, "seeds": list(config.seeds), "variants": [v.name for v in variants],
            "steps_per_variant": config.steps_per_variant or None, "minutes_per_variant": config.minutes_per_variant or None,
            "budget_from": None, "started": stamp,
        }  # fmt: skip
        parent = Tracker.start(tracking_uri, config.experiment, f"ablate-{stamp}", run_key=f"ablate:{out}:{stamp}",
                               tags={"mrcnn.ablation": "parent"})  # fmt: skip
        _log(f"MLflow parent run {parent.run_id} in {tracking_uri} (experiment {config.experiment})")
        with parent:
            parent.log_params({f"ablate.{k}": v for k, v in settings.items() if k not in ("budget_from",)})
            parent.set_git_commit()
            results: dict[str, list[SeedResult]] = {v.name: [] for v in variants}
            steps = config.steps_per_variant
            paths: dict[str, Path] = {}
            jobs = [(v, s) for s in config.seeds for v in variants]
            for index, (variant, seed) in enumerate(jobs, start=1):
                timed = not steps
                budget = f"{config.minutes_per_variant:g} min (sets the steps of the others)" if timed else f"{steps} steps"
                _log(f"{index}/{len(jobs)} {variant.name} seed {seed}: {budget}")
                result = _train_one(
                    config, variant, seed, shards=shards, stamp=stamp, parent_run_id=parent.run_id,
                    tracking_uri=tracking_uri, max_iters=10**9 if timed else steps,
                    minutes=config.minutes_per_variant if timed else 0.0,
                )  # fmt: skip
                if timed and result.status == "finished":
                    steps = result.iterations
                    settings["steps_per_variant"] = steps
                    settings["budget_from"] = (f"the steps `{variant.name}` (seed {seed}) took in "
                                               f"{config.minutes_per_variant:g} min on this machine")  # fmt: skip
                    parent.log_params({"ablate.steps_from_minutes": steps})
                results[variant.name].append(result)
                if result.status == "finished":
                    shown = {t: round(result.metrics[t]["AP"], 1) for t in result.metrics}
                    _log(f"{variant.name} seed {seed}: {result.iterations} steps in {result.train_seconds:.0f} s, AP {shown}")
                report = build_report(settings, results)
                paths = write_report(report, out)  # after every run: an interrupted ablation keeps what it has
            for name, entry in report["variants"].items():
                for iou_type, summary in entry["summary"].items():
                    parent.log_metrics({f"{name}/{iou_type}_{s}": summary[s]["mean"] for s in ("AP", "AP50", "AP75")}, step=0)
            for path in paths.values():
                parent.log_artifact(path)
            failed = [name for name, v in report["variants"].items() if v["status"] != "finished"]
            if failed:
                parent.set_tags({"mrcnn.ablation.failed_variants": ",".join(failed)})
    return AblationResult(report=report, paths=paths, parent_run_id=parent.run_id, tracking_uri=tracking_uri)


def seeds_from(count: int, first: int = 0) -> tuple[int, ...]:
    """``count`` consecutive seeds starting at ``first``."""
    if count < 1:
        raise ValueError(f"--seeds: expected >= 1, got {count}")
    return tuple(range(first, first + count))


__all__ = [
    "BASELINE",
    "COMPARISONS",
    "VARIANTS",
    "AblationConfig",
    "AblationResult",
    "Comparison",
    "SeedResult",
    "Variant",
    "aggregate",
    "build_report",
    "format_markdown",
    "parse_variants",
    "run_ablation",
    "seeds_from",
    "write_plot",
    "write_report",
]
