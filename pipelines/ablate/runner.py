"""Running the ablation: the data, then every (variant, seed) trained by ``pipelines.train.train`` as an
MLflow child run of one parent run, the report rewritten after each, and the results logged to the parent.

The budget is equal in steps, as in the paper: ``steps_per_variant`` gives it directly; with
``minutes_per_variant`` the first variant trained (the baseline) trains for that long and its step count
becomes every other variant's budget.
"""

from __future__ import annotations

import os
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.ablate.report import COMPARED_STATS, IOU_TYPES, SeedResult, build_report, stat_names, write_report
from pipelines.ablate.variants import VARIANTS, Variant, parse_variants
from pipelines.common.progress import StageLog

if TYPE_CHECKING:
    from pipelines.tracking import Tracker

# The default budget: about 6 min per variant for r18_fpn_small with 2 CPU workers x 4 images (25 steps/min),
# so that the five variants train in about 35 min on a 2-core machine.
DEFAULT_STEPS_PER_VARIANT = 150

_log = StageLog("ablate")


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
    from pipelines.common.storage import join_path
    from pipelines.shards import list_shards, read_categories

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


# ------------------------------------------------------------------ settings and results
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


def seeds_from(count: int, first: int = 0) -> tuple[int, ...]:
    """``count`` consecutive seeds starting at ``first``."""
    if count < 1:
        raise ValueError(f"--seeds: expected >= 1, got {count}")
    return tuple(range(first, first + count))


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


# ------------------------------------------------------------------ one (variant, seed)
def _train_one(config: AblationConfig, variant: Variant, seed: int, *, shards: str, stamp: str, parent_run_id: str,
               tracking_uri: str, max_iters: int, minutes: float) -> SeedResult:  # fmt: skip
    """Train and evaluate one (variant, seed) through ``pipelines.train.train``; failures are caught and recorded."""
    from pipelines.tracking import Tracker
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
        run_id = _mark_failed_child(tracking_uri, parent_run_id, name, reason)
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


def _mark_failed_child(tracking_uri: str, parent_run_id: str, run_name: str, reason: str) -> str | None:
    """Tag the child run that rank 0 had started (if any) with the failure and end it FAILED; its run id."""
    from pipelines.tracking import Tracker, child_runs

    run_id = None
    for child in child_runs(tracking_uri, parent_run_id, run_name=run_name):
        run_id = child["run_id"]
        tracker = Tracker.attach(tracking_uri, run_id)
        tracker.set_tags({"mrcnn.ablation.error": reason})
        if child["status"] == "RUNNING":
            tracker.end("FAILED")
    return run_id


# ------------------------------------------------------------------ the whole ablation
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
            report, paths = _train_all(config, variants, parent, settings, shards=shards, stamp=stamp, out=out)
            _log_to_parent(parent, report, paths)
    return AblationResult(report=report, paths=paths, parent_run_id=parent.run_id, tracking_uri=tracking_uri)


def _train_all(config: AblationConfig, variants: Sequence[Variant], parent: Tracker, settings: dict[str, Any], *,
               shards: str, stamp: str, out: Path) -> tuple[dict[str, Any], dict[str, Path]]:  # fmt: skip
    """Every (variant, seed) in turn (seeds outer), the report rewritten after each; the last report and its files.

    With a budget in minutes, the first finished run's step count becomes ``settings["steps_per_variant"]``.
    """
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
            tracking_uri=parent.tracking_uri, max_iters=10**9 if timed else steps,
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
    return report, paths


def _log_to_parent(parent: Tracker, report: Mapping[str, Any], paths: Mapping[str, Path]) -> None:
    """The parent run gets every variant's mean AP/AP50/AP75, the report's files, and the failed variants' names."""
    for name, entry in report["variants"].items():
        for iou_type, summary in entry["summary"].items():
            parent.log_metrics({f"{name}/{iou_type}_{s}": summary[s]["mean"] for s in COMPARED_STATS}, step=0)
    for path in paths.values():
        parent.log_artifact(path)
    failed = [name for name, v in report["variants"].items() if v["status"] != "finished"]
    if failed:
        parent.set_tags({"mrcnn.ablation.failed_variants": ",".join(failed)})
