"""The ``mrcnn`` command line. Verbs and flags here are the public interface.

Heavy imports (torch, Ray, MLflow) happen inside each verb, so ``mrcnn --help`` is instant and the
light verbs never import Ray or MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _expand_images(inputs: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to the images they contain (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CLIError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _write_json(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# ---------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from mrcnn.data.synthetic import make_synthetic_coco

    if args.task == "keypoints":
        from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco

        if args.difficulty != "default":
            raise CLIError("synth --task keypoints draws houses; --difficulty applies to the shapes set only")
        info = make_synthetic_keypoints_coco(args.out_dir, num_train=args.train, num_val=args.val, size=args.size,
                                             seed=args.seed)  # fmt: skip
        for split in ("train", "val"):
            s = info[split]
            print(f"{split}: {s['num_images']} images, {s['num_annotations']} houses with 5 keypoints -> {s['annotations']}")
        return 0
    info = make_synthetic_coco(args.out_dir, num_train=args.train, num_val=args.val, size=args.size, seed=args.seed,
                               difficulty=args.difficulty)  # fmt: skip
    for split in ("train", "val"):
        s = info[split]
        print(f"{split}: {s['num_images']} images, {s['num_annotations']} instances -> {s['annotations']}")
    return 0


# ---------------------------------------------------------------- predict
def _load_predictor(weights: str, arch: str | None, device: str, score_threshold: float | None):
    from mrcnn.predictor import Predictor

    predictor = Predictor.from_checkpoint(weights, arch=arch, device=device)
    if score_threshold is not None:
        predictor.score_threshold = score_threshold
    return predictor


def _image_names(inputs: Sequence[str]) -> list[tuple[Path, str]]:
    """(path, name) of every image: files as given, folders expanded (sorted). The name is the path relative
    to the images root: to the folder for a folder's images, as typed for a relative file path
    (``cam1/0001.png``), the base name for an absolute one."""
    named: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            named.extend((p, p.relative_to(path).as_posix()) for p in _expand_images([item]))
        else:
            named.append((path, path.name if path.is_absolute() else path.as_posix()))
    return named


def _match_annotations(annotations: str | None, named: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], dict[str, Any]]:
    """With a ground truth: each image's name becomes its ``file_name`` there, matched by path (the name, or
    the whole path where that is longer: ``cam1/0001.png`` is not ``cam2/0001.png``), and the ids
    ``{file_name: image id}``; an image it does not list keeps its name and gets no id. Without: as given, {}.

    Raises:
        CLIError: an ambiguous name (several images share its base name and nothing more of its path).
    """
    if not annotations:
        return named, {}
    from mrcnn.evaluation import load_coco_gt
    from pipelines.evaluate import match_file_names

    images = load_coco_gt(annotations).dataset["images"]
    keys = [name if len(Path(name).parts) >= len(path.parts) else path.as_posix() for path, name in named]
    try:
        matched = match_file_names(images, keys, source=str(annotations))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    file_names = {image["id"]: str(image["file_name"]) for image in images}
    renamed = [(path, file_names[matched[key]] if key in matched else name) for (path, name), key in zip(named, keys)]
    return renamed, {file_names[image_id]: image_id for image_id in matched.values()}


def _predict_images(predictor, named: list[tuple[Path, str]], *, batch_size: int, image_ids: dict[str, int],
                    overlay_dir: str | None):  # fmt: skip
    """Predict every readable image of ``(path, name)``; ``image_ids`` maps a name to its ground-truth id (and
    the records then carry the ground truth's file_name). Returns (COCO results, skipped [(path, reason)])."""
    from PIL import Image

    from mrcnn.data.images import ImageDecodeError, load_image
    from mrcnn.records import coco_result
    from mrcnn.visualize import draw_detections

    results: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    for start in range(0, len(named), batch_size):
        batch, batch_images = [], []
        for path, name in named[start : start + batch_size]:
            try:
                batch_images.append(load_image(path))
                batch.append((path, name))
            except ImageDecodeError as exc:
                skipped.append((path, str(exc)))
        if not batch_images:
            continue
        for (path, name), image, detections in zip(batch, batch_images, predictor.predict(batch_images)):
            for det in detections:
                results.append(coco_result(det, image_id=image_ids.get(name), file_name=name))
            if overlay_dir:
                # Overlays keep the relative path (cam1/0001.png and cam2/0001.png do not overwrite each other).
                inside = [p for p in Path(name).with_suffix(".png").parts if p not in ("..", "/")]
                target = Path(overlay_dir).joinpath(*inside) if inside else Path(overlay_dir) / f"{path.stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                drawn = draw_detections(image, detections, skeletons=predictor.categories.skeletons)
                Image.fromarray(drawn).save(target)
            print(f"{path}: {len(detections)} instances", file=sys.stderr)
    return results, skipped


def cmd_predict(args: argparse.Namespace) -> int:
    named, image_ids = _match_annotations(args.annotations, _image_names(args.images))
    predictor = _load_predictor(args.weights, args.arch, args.device, args.score_threshold)
    results, skipped = _predict_images(
        predictor,
        named,
        batch_size=args.batch_size,
        image_ids=image_ids,
        overlay_dir=args.overlay_dir,
    )
    paths = [path for path, _ in named]
    _write_json(args.out, results)
    print(f"{len(results)} detections on {len(paths) - len(skipped)} images -> {args.out}")
    for path, reason in skipped:
        print(f"mrcnn: error: skipped {reason}", file=sys.stderr)
    return 1 if skipped else 0


# ---------------------------------------------------------------- eval
def _attach_image_ids(results: list[dict[str, Any]], gt, source: str) -> list[dict[str, Any]]:
    """Fill ``image_id`` from ``file_name`` for records that only name their file (matched by path, as
    ``mrcnn evaluate`` does: ``cam1/0001.png`` is not ``cam2/0001.png``; an ambiguous base name is refused)."""
    from pipelines.evaluate import match_file_names

    names = [str(record.get("file_name", "")) for record in results if "image_id" not in record]
    try:
        by_name = match_file_names(gt.dataset["images"], names, source=source)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    for index, record in enumerate(results):
        if "image_id" not in record:
            name = str(record.get("file_name", ""))
            if name not in by_name:
                raise CLIError(f"{source}: record {index} has no image_id and file_name {name!r} is not in the ground truth")
            record["image_id"] = by_name[name]
    return results


def _print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    from mrcnn.evaluation import format_metrics_table, stat_names

    if as_json:
        print(json.dumps({t: {k: m[k] for k in stat_names(t)} | {"per_category": m["per_category"]} for t, m in metrics.items()}))
    else:
        print(format_metrics_table(metrics))


def _result_iou_types(results: list[dict[str, Any]]) -> tuple[str, ...]:
    """bbox; segm unless no record has a mask (a model without a mask head); keypoints when records have them."""
    has_segm = not results or any("segmentation" in r for r in results)
    has_keypoints = any("keypoints" in r for r in results)
    return ("bbox",) + (("segm",) if has_segm else ()) + (("keypoints",) if has_keypoints else ())


def cmd_eval(args: argparse.Namespace) -> int:
    from mrcnn.evaluation import evaluate_coco, load_coco_gt

    if args.predictions:
        if not args.gt:
            raise CLIError("eval --predictions needs --gt ANN.json")
        gt = load_coco_gt(args.gt)
        path = Path(args.predictions)
        if not path.is_file():
            raise CLIError(f"{path}: no such file")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CLIError(f"{path}: not valid json ({exc})") from None
        if not isinstance(results, list):
            raise CLIError(f"{path}: expected a COCO results list, got {type(results).__name__}")
        metrics = evaluate_coco(gt, _attach_image_ids(results, gt, str(path)), iou_types=_result_iou_types(results))
    else:
        if not (args.weights and (args.annotations or args.gt) and args.images):
            raise CLIError("eval needs either --gt and --predictions, or --weights, --annotations and --images")
        annotations = args.annotations or args.gt
        gt = load_coco_gt(annotations)
        predictor = _load_predictor(args.weights, args.arch, args.device, args.score_threshold)
        if args.score_threshold is None:
            predictor.score_threshold = predictor.config.model.box_head.score_thresh
        image_dir = Path(args.images)
        if not image_dir.is_dir():
            raise CLIError(f"{image_dir}: no such folder")
        # Each image is its ground-truth entry: the id comes with it, never from a name match.
        named = [(image_dir / img["file_name"], str(img["file_name"])) for img in gt.dataset["images"]]
        image_ids = {str(img["file_name"]): img["id"] for img in gt.dataset["images"]}
        results, skipped = _predict_images(
            predictor, named, batch_size=args.batch_size, image_ids=image_ids, overlay_dir=None
        )
        for path, reason in skipped:
            print(f"mrcnn: warning: skipped {reason}", file=sys.stderr)
        metrics = evaluate_coco(gt, results, iou_types=predictor.config.model.iou_types)
    _print_metrics(metrics, args.json)
    return 0


# ---------------------------------------------------------------- train
def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as YAML (numbers as people write them, ``1e-4`` included,
    booleans, lists) by :func:`mrcnn.config.load_yaml`."""
    from mrcnn.config import ConfigError, load_yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set {pair!r}: expected KEY=VALUE, e.g. model.box_head.pooler=roi_pool")
        try:
            overrides[key.strip()] = load_yaml(f"--set {key.strip()}", text=value)
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    return overrides


def _validated_run(run: Any, source: str) -> Any:
    """The run config with every field checked against its type (numbers as people write them, e.g. a run
    YAML's ``minutes: 1e1``, become numbers), its own checks and its model config (preset + overrides)
    built and validated: a bad value is refused here, before Ray starts.

    Raises:
        CLIError: naming the field and the value.
    """
    from mrcnn.config import ConfigError, from_dict

    try:
        run = from_dict(type(run), {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}, where=source)
        run.validate()
        run.model_config()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return run


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.tracking import default_tracking_uri
    from pipelines.train import TrainRunConfig, train

    flags = {
        "data": args.data, "preset": args.preset, "workers": args.workers, "use_gpu": args.gpu or None,
        "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.gpus_per_worker, "amp": args.amp,
        "batch_size": args.batch_size, "max_iters": args.max_iters, "minutes": args.minutes,
        "eval_every": args.eval_every, "checkpoint_every": args.checkpoint_every, "storage_path": args.storage_path,
        "name": args.name, "max_failures": args.max_failures, "tracking_uri": args.tracking_uri,
        "experiment": args.experiment, "model_name": args.model_name, "epochs": args.epochs,
        "backbone_weights": args.backbone_weights,
    }
    # A budget flag replaces the config's budget: --max-iters clears its epochs, --epochs its max_iters.
    if args.max_iters is not None and args.epochs is None:
        flags["epochs"] = 0.0
    if args.epochs is not None and args.max_iters is None:
        flags["max_iters"] = 0
    run = TrainRunConfig.from_yaml(args.config, **flags) if args.config else TrainRunConfig(**{k: v for k, v in flags.items() if v is not None})
    if args.set:
        run = dataclasses.replace(run, overrides={**run.overrides, **_parse_overrides(args.set)})
    run = _validated_run(run, f"run config {args.config}" if args.config else "run config")
    if not run.tracking_uri:
        run = dataclasses.replace(run, tracking_uri=default_tracking_uri("."))
    result = train(run, ray_address=args.address)
    print(json.dumps({"iteration": result.iteration, "checkpoint": result.checkpoint_path,
                      "mlflow_run_id": result.mlflow_run_id, "tracking_uri": run.tracking_uri,
                      **{k: v for k, v in result.metrics.items() if k.startswith(("segm_", "bbox_", "keypoints_", "loss"))}}))
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    summary = run_demo(
        workdir=args.workdir, minutes=args.minutes, seed=args.seed, num_train=args.train, num_val=args.val,
        workers=args.workers, ray_address=args.address,
    )
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------- ablate
def cmd_ablate(args: argparse.Namespace) -> int:
    from pipelines.ablate import DEFAULT_STEPS_PER_VARIANT, AblationConfig, parse_variants, run_ablation, seeds_from

    if args.steps_per_variant is not None and args.minutes_per_variant is not None:
        raise CLIError("ablate: give --steps-per-variant or --minutes-per-variant, not both")
    if (args.steps_per_variant is not None and args.steps_per_variant < 1) or (
        args.minutes_per_variant is not None and args.minutes_per_variant <= 0
    ):
        raise CLIError("ablate: --steps-per-variant and --minutes-per-variant must be positive")
    steps = args.steps_per_variant or (0 if args.minutes_per_variant else DEFAULT_STEPS_PER_VARIANT)
    config = AblationConfig(
        out=args.out, data=args.data, variants=tuple(v.name for v in parse_variants(args.variants)),
        steps_per_variant=steps, minutes_per_variant=0.0 if steps else args.minutes_per_variant,
        seeds=seeds_from(args.seeds, args.seed), preset=args.preset, overrides=_parse_overrides(args.set or []),
        workers=args.workers, use_gpu=args.gpu, batch_size=args.batch_size, num_train=args.train, num_val=args.val,
        size=args.size, difficulty=args.difficulty, tracking_uri=args.tracking_uri or "", experiment=args.experiment,
        max_failures=args.max_failures, storage_path=args.storage_path or "", backbone_weights=args.backbone_weights or "",
        ray_address=args.address,
    )  # fmt: skip
    result = run_ablation(config)
    print(result.paths["markdown"].read_text())
    print(json.dumps({"table": str(result.paths["markdown"]), "json": str(result.paths["json"]),
                      "plot": str(result.paths["plot"]), "parent_run_id": result.parent_run_id,
                      "tracking_uri": result.tracking_uri, "failed": result.failed}))  # fmt: skip
    if result.failed:
        print(f"mrcnn: error: variant(s) failed: {', '.join(result.failed)} (see the table)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- preprocess
def cmd_preprocess(args: argparse.Namespace) -> int:
    from pipelines.preprocess import preprocess_coco, preprocess_dataset

    shard_options = dict(num_shards=args.num_shards, rows_per_shard=args.rows_per_shard, ray_address=args.address)
    if args.annotations or args.images:
        if not (args.annotations and args.images):
            raise CLIError("preprocess: --annotations and --images go together")
        if args.src is not None:
            raise CLIError(f"preprocess: give SRC or --annotations/--images, not both (got SRC {args.src})")
        if not args.split or len(args.split) != 1:
            raise CLIError("preprocess --annotations needs exactly one --split NAME (the output subfolder)")
        summaries = {
            args.split[0]: preprocess_coco(
                annotations=args.annotations, images=args.images, out=args.out, split=args.split[0], **shard_options
            )
        }
    else:
        if args.src is None:
            raise CLIError("preprocess needs SRC OUT, or OUT with --annotations ANN --images DIR --split NAME")
        summaries = preprocess_dataset(args.src, args.out, splits=args.split, **shard_options)
    for summary in summaries.values():
        print(summary.format())
    print(f"categories: {next(iter(summaries.values())).categories_path}")
    return 0


# ---------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:
    from pipelines.segment import segment

    summary = segment(
        model=args.model, input=args.input, out=args.out, workers=args.workers, gpu=args.gpu,
        overlays=args.overlays, batch_size=args.batch_size, part_size=args.part_size,
        score_threshold=args.score_threshold, output_format=args.format, overwrite=args.overwrite,
        retry_rejects=args.retry_rejects, cpus_per_worker=args.cpus_per_worker, tracking_uri=args.tracking_uri,
        ray_address=args.address, fail_after_parts=args.fail_after_parts,
    )
    print(summary.format())
    return 0


# ---------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from mrcnn.evaluation import format_metrics_table, stat_names
    from pipelines.evaluate import evaluate

    summary = evaluate(
        model=args.model, out=args.out, data=args.data, annotations=args.annotations, images=args.images,
        workers=args.workers, gpu=args.gpu, batch_size=args.batch_size, score_threshold=args.score_threshold,
        cpus_per_worker=args.cpus_per_worker, tracking_uri=args.tracking_uri, ray_address=args.address,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(format_metrics_table(summary.metrics))
    print(f"{summary.num_images} images ({summary.num_rejected} unreadable), {summary.num_detections} detections, "
          f"{summary.seconds:.0f} s -> {summary.out_dir}/metrics.json")  # fmt: skip
    brief = summary.to_dict() | {"metrics": {t: {k: m[k] for k in stat_names(t)} for t, m in summary.metrics.items()}}
    print(json.dumps(brief))
    return 0


# ---------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import TOKEN_ENV, ServeConfig, run_server

    options = {
        "model": args.model, "tracking_uri": args.tracking_uri, "gpu": args.gpu, "replicas": args.replicas,
        "autoscale": args.autoscale, "cpus_per_replica": args.cpus_per_replica, "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": None if args.batch_wait_ms is None else args.batch_wait_ms / 1000.0,
        "max_ongoing_requests": args.max_ongoing_requests, "max_queued_requests": args.max_queued_requests,
        "token": args.token or os.environ.get(TOKEN_ENV) or None, "max_body_bytes": args.max_body_bytes,
        "max_pixels": args.max_pixels, "score_threshold": args.score_threshold,
    }
    if args.max_batch_size is not None and args.max_ongoing_requests is None:
        options["max_ongoing_requests"] = max(16, 2 * args.max_batch_size)
    config = ServeConfig.from_dict({k: v for k, v in options.items() if v is not None})
    run_server(config, host=args.host, port=args.port, app_name=args.name, ray_address=args.address,
               detach=args.detach, wait_s=args.wait_s)  # fmt: skip
    return 0


# ---------------------------------------------------------------- submit, jobs
def _add_submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="URL", help="the cluster's dashboard / Jobs API, http://HEAD:8265 "
                   "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    p.add_argument("--env", action="append", default=None, metavar="KEY[=VALUE]",
                   help="environment variable for the job (KEY alone: this machine's value); repeatable")
    p.add_argument("--working-dir", metavar="DIR", help="the code to upload (default: this project)")


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.submit import PROJECT_DIR, print_outcome, submit

    # Submit's own options may also come after JOB; what follows a `--` goes to the job untouched.
    job_args = list(args.job_args)
    verbatim: list[str] = []
    if "--" in job_args:
        cut = job_args.index("--")
        job_args, verbatim = job_args[:cut], job_args[cut + 1 :]
    late = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_submit_options(late)
    options, job_args = late.parse_known_args(job_args)
    outcome = submit(
        args.job, [*job_args, *verbatim], address=options.address or args.address,
        env=[*(args.env or []), *(options.env or [])], follow=args.follow or options.follow,
        working_dir=options.working_dir or args.working_dir or PROJECT_DIR,
    )  # fmt: skip
    print_outcome(outcome)
    if outcome.status in ("FAILED", "STOPPED"):
        print(f"mrcnn: error: job {outcome.job_id} {outcome.status}: {outcome.message}".rstrip(": "), file=sys.stderr)
        return 1
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from pipelines import submit as jobs

    if args.action == "list":
        rows = jobs.list_jobs(args.address)
        print(json.dumps(rows) if args.json else jobs.format_jobs_table(rows))
        return 0
    if args.action == "status":
        info = jobs.job_info(args.address, args.job_id)
        print(json.dumps(info) if args.json else f"{info['job_id']} {info['status']} {info['message']}".rstrip())
        return 0
    if args.action == "logs":
        outcome = jobs.job_logs(args.address, args.job_id, follow=args.follow)
        if args.follow:
            jobs.print_outcome(outcome, sys.stderr)
        return 1 if args.follow and outcome.status in ("FAILED", "STOPPED") else 0
    outcome = jobs.stop_job(args.address, args.job_id, wait=args.wait)
    jobs.print_outcome(outcome)
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrcnn", description="Mask R-CNN: train, evaluate and segment.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the synthetic COCO-format shapes dataset")
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=200, help="training images (default 200)")
    p.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", choices=["default", "hard", "easy"], default="default",
                   help="hard: smaller shapes (5-30%% of the side), 2-6 per image, thin rings and stars; easy: the demo's "
                        "set, 1-3 large (25-60%%), mostly visible shapes on noise-free backgrounds (default: default)")
    p.add_argument("--task", choices=["instances", "keypoints"], default="instances",
                   help="keypoints: houses whose 5 corners are keypoints, COCO person-keypoint format (default: instances)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("predict", help="segment images; write COCO results json (and overlays)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--weights", required=True, help="mrcnn checkpoint or torchvision state-dict file")
    p.add_argument("--arch", help="preset of a bare torchvision state dict (r50_fpn, r50_fpn_v2, r101_fpn, ...)")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--out", required=True, help="COCO results json to write")
    p.add_argument("--overlay-dir", help="write PNGs with the masks drawn here")
    p.add_argument("--annotations", help="COCO json giving each file's image_id")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="COCO bbox + segm (+ keypoints) evaluation of predictions or of a model")
    p.add_argument("--gt", help="ground-truth COCO instances json")
    p.add_argument("--predictions", help="COCO results json")
    p.add_argument("--weights", help="evaluate this model instead (needs --annotations and --images)")
    p.add_argument("--annotations", help="ground-truth json for --weights")
    p.add_argument("--images", help="image folder for --weights")
    p.add_argument("--arch")
    p.add_argument("--score-threshold", type=float, default=None, help="default: the model's (0.05)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="distributed training with Ray Train (DDP), tracked in MLflow")
    p.add_argument("--data", help="preprocessed shards folder (from `mrcnn preprocess`)")
    p.add_argument("--config", help="YAML run config (keys of TrainRunConfig); flags override it")
    p.add_argument("--preset", help="model preset (default r18_fpn_small)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. model.box_head.pooler=roi_pool")
    p.add_argument("--workers", type=int)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, SyncBN")
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, help="images per worker per step")
    p.add_argument("--max-iters", type=int)
    p.add_argument("--epochs", type=float, help="budget in passes over the training shards (instead of --max-iters)")
    p.add_argument("--backbone-weights", metavar="FILE", help="ImageNet ResNet state dict for backbone.body (path or s3://)")
    p.add_argument("--minutes", type=float, help="time budget (the schedule decays at fractions of it)")
    p.add_argument("--eval-every", type=int, help="evaluate on the val shards every N iterations (and at the end)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--storage-path", help="shared storage for checkpoints (local path, s3://, gs://)")
    p.add_argument("--name", help="run name; relaunching with the same name and storage path resumes")
    p.add_argument("--max-failures", type=int, help="worker failures to recover from")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment")
    p.add_argument("--model-name", help="registered model name (alias 'best' follows segm AP, or keypoint AP for a keypoint model)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="end to end on the embedded default: data, train, evaluate, segment")
    p.add_argument("--workdir", default="mrcnn-demo", help="everything goes under this folder")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget in minutes")
    p.add_argument("--train", type=int, default=400, help="synthetic training images")
    p.add_argument("--val", type=int, default=100, help="synthetic validation images")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "ablate", help="the paper's ablations: train each variant (Ray Train, MLflow child runs) and compare",
        description="Train the baseline (RoIAlign, per-class sigmoid masks, FCN mask head, masks on) and one variant "
        "per ablation (roi_pool, softmax, mlp, mask_off) with the same data, seed(s), schedule and number of steps; "
        "evaluate each on the val split; write OUT/ablation.md, .json and .png, log them to the MLflow parent run of "
        "the variants' child runs, and print the table. Exit code 1 if a variant failed (it is in the table as failed).",
    )  # fmt: skip
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (default: written to OUT/data, see --difficulty), a shard folder from "
                   "`mrcnn preprocess`, or a COCO dataset root (preprocessed to OUT/shards)")
    p.add_argument("--out", default="mrcnn-ablate", help="table, json, plot, data, checkpoints and (by default) "
                   "the MLflow store go here (default mrcnn-ablate/)")
    p.add_argument("--steps-per-variant", type=int, metavar="N",
                   help="training steps of every variant (default 150: about 6 min per variant on 2 CPU cores)")
    p.add_argument("--minutes-per-variant", type=float, metavar="M",
                   help="instead of --steps-per-variant: the first variant (the baseline) trains M minutes and its "
                   "step count becomes every other variant's budget")
    p.add_argument("--variants", default="all", help="comma-separated subset of baseline,roi_pool,softmax,mlp,mask_off (default all)")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="train every variant with K seeds; the table shows mean ± std")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--batch-size", type=int, default=4, help="images per worker per step (default 4)")
    p.add_argument("--preset", default="r18_fpn_small", help="model preset of every variant (default r18_fpn_small)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every variant")
    p.add_argument("--train", type=int, default=400, help="synthetic training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="synthetic validation images (default 100)")
    p.add_argument("--size", type=int, default=128, help="synthetic image side (default 128)")
    p.add_argument("--difficulty", choices=["default", "hard"], default="hard", help="synthetic set (default hard: small, thin shapes)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or OUT/mlflow.db)")
    p.add_argument("--experiment", default="mrcnn-ablate", help="MLflow experiment (default mrcnn-ablate)")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures a variant's training recovers from (default 1)")
    p.add_argument("--storage-path", help="checkpoints (default OUT/ray_results; s3://... or NFS on a multi-node cluster)")
    p.add_argument("--backbone-weights", metavar="FILE", help="ImageNet ResNet state dict every variant starts from (path or s3://)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("preprocess", help="COCO json + images -> validated Parquet shards (Ray Data)")
    p.add_argument("src", nargs="?", metavar="SRC", help="dataset root: SRC/<split>/annotations.json or COCO layout")
    p.add_argument("out", metavar="OUT", help="output folder (path or s3://...): OUT/<split>/*.parquet")
    p.add_argument("--split", action="append", metavar="NAME", help="split to do (repeatable; default: every train/val found)")
    p.add_argument("--annotations", metavar="ANN", help="one COCO json instead of SRC (needs --images and --split)")
    p.add_argument("--images", metavar="DIR", help="image folder of --annotations")
    p.add_argument("--num-shards", type=int, metavar="N", help="exact number of Parquet files per split")
    p.add_argument("--rows-per-shard", type=int, metavar="N", help="at most this many images per file (default 1000)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("segment", help="segment a folder of images or a shard set with Ray Data (resumable)")
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@best, models:/NAME/3, runs:/ID/path or a checkpoint file")
    p.add_argument("--input", required=True, metavar="DIR", help="folder of images (recursive), or a shard folder OUT/<split>")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; running again over it resumes")
    p.add_argument("--workers", type=int, metavar="N", help="actors, one model each (default: one per GPU, or per CPU)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--overlays", action="store_true", help="write OUT/overlays/*.png with the masks drawn")
    p.add_argument("--batch-size", type=int, default=2, metavar="B", help="images per forward pass (default 2)")
    p.add_argument("--part-size", type=int, default=32, metavar="N", help="images per actor call and part file (default 32)")
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="T")
    p.add_argument("--format", choices=["coco", "parquet", "both"], default="both",
                   help="results.json (COCO results), detections.parquet, or both (default)")
    p.add_argument("--overwrite", action="store_true", help="discard what OUT holds instead of resuming")
    p.add_argument("--retry-rejects", action="store_true", help="try every image rejected by an earlier run again")
    p.add_argument("--cpus-per-worker", type=float, metavar="C", help="CPUs (torch threads) per actor (default 1)")
    p.add_argument("--tracking-uri", help="MLflow store for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--fail-after-parts", type=int, help=argparse.SUPPRESS)  # test hook: stop as a crash would
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="COCO AP of a model URI on a shard split or a COCO json + images (Ray Data)")
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@best, models:/NAME/3, runs:/ID/path or a checkpoint file")
    p.add_argument("--data", metavar="SHARDS", help="a shard split OUT/<split> from `mrcnn preprocess` (path or s3://)")
    p.add_argument("--annotations", metavar="ANN", help="or a COCO instances json (with --images)")
    p.add_argument("--images", metavar="DIR", help="the image folder of --annotations")
    p.add_argument("--out", required=True, metavar="DIR", help="detections/ (resumable) and metrics.json go here")
    p.add_argument("--workers", type=int, metavar="N", help="actors, one model each (default: one per GPU, or per CPU)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--batch-size", type=int, default=2, metavar="B", help="images per forward pass (default 2)")
    p.add_argument("--score-threshold", type=float, metavar="T", help="default: the model's (0.05 for the paper's presets)")
    p.add_argument("--cpus-per-worker", type=float, metavar="C", help="CPUs (torch threads) per actor (default 1)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier detections in OUT instead of resuming")
    p.add_argument("--tracking-uri", help="MLflow store for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="online segmentation: a Ray Serve HTTP endpoint and a web page")
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@best, models:/NAME/3, runs:/ID/path or a checkpoint file")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    scaling = p.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=int, metavar="N", help="fixed number of replicas (default 1)")
    scaling.add_argument("--autoscale", metavar="MIN:MAX", help="scale replicas between MIN and MAX on load")
    p.add_argument("--gpu", action="store_true", help="one GPU per replica")
    p.add_argument("--cpus-per-replica", type=float, metavar="C", help="CPUs (torch threads) per replica (default 1)")
    p.add_argument("--token", help="bearer token required on every route but /healthz (default: $MRCNN_SERVE_TOKEN)")
    p.add_argument("--max-body-bytes", type=int, metavar="N", help="larger request bodies get 413 (default 20 MiB)")
    p.add_argument("--max-pixels", type=int, metavar="N", help="larger decoded images get 422 (default 25M)")
    p.add_argument("--max-batch-size", type=int, metavar="B", help="images per forward pass; 1 turns batching off (default 8)")
    p.add_argument("--batch-wait-ms", type=float, metavar="MS", help="how long a batch waits to fill (default 50)")
    p.add_argument("--max-ongoing-requests", type=int, metavar="N", help="requests one replica holds at once (default 16)")
    p.add_argument("--max-queued-requests", type=int, metavar="N", help="waiting requests before 503 + Retry-After (default 64)")
    p.add_argument("--score-threshold", type=float, metavar="T", help="default when a request gives none (default 0.5)")
    p.add_argument("--tracking-uri", help="MLflow store for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", default="mrcnn", help="Serve application name (default mrcnn)")
    p.add_argument("--detach", action="store_true", help="deploy to the cluster and return (needs --address)")
    p.add_argument("--wait-s", type=float, help=argparse.SUPPRESS)  # test hook: serve this long, then stop
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "submit", help="run a job (python -m jobs.JOB ARGS) on a Ray cluster through the Jobs API",
        description="Submit `python -m jobs.JOB ARGS` with this project as the job's working_dir. Submit's options "
        "may come before or after JOB; arguments after `--` go to the job untouched (e.g. the job's own --address). "
        "The last line printed is JSON: the job id and its status (final with --follow).",
    )  # fmt: skip
    p.add_argument("job", metavar="JOB", help="preprocess, train, evaluate, segment, serve or demo (the modules of jobs/)")
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the job's arguments, as on its command line")
    _add_submit_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list, inspect, follow or stop the jobs of a Ray cluster")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("list", "every job, newest first"), ("status", "one job's status"),
                            ("logs", "one job's logs"), ("stop", "stop a job")):  # fmt: skip
        a = actions.add_parser(name, help=help_text)
        if name != "list":
            a.add_argument("job_id", metavar="JOB_ID")
        a.add_argument("--address", metavar="URL", help="http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
        if name in ("list", "status"):
            a.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "logs":
            a.add_argument("--follow", action="store_true", help="stream until the job ends")
        if name == "stop":
            a.add_argument("--wait", action="store_true", help="return once the job has ended")
        a.set_defaults(func=cmd_jobs)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "train", "size"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise CLIError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    threshold = getattr(args, "score_threshold", None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CLIError(f"--score-threshold: expected a value in [0, 1], got {threshold}")


def config_args(path: str | os.PathLike) -> list[str]:
    """A job's YAML run config as command-line arguments.

    The YAML maps flag names (``num_shards`` or ``num-shards``) to values: ``true`` gives the bare flag,
    ``false``/``null`` leave it out, a list repeats it; ``args`` lists the positional arguments.
    ``{"args": ["SRC", "OUT"], "num_shards": 8, "split": ["train", "val"]}`` ->
    ``["SRC", "OUT", "--num-shards", "8", "--split", "train", "--split", "val"]``.
    """
    from mrcnn.config import load_yaml

    source = Path(path)
    if not source.is_file():
        raise CLIError(f"--config {source}: no such file")
    data = load_yaml(source) or {}
    if not isinstance(data, dict):
        raise CLIError(f"{source}: expected a mapping of flag names to values, got {type(data).__name__}")
    positional = data.pop("args", []) or []
    if not isinstance(positional, list):
        raise CLIError(f"{source}: 'args' must be a list of positional arguments")
    argv = [str(a) for a in positional]
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                argv.append(flag)
            elif item is not None and item is not False:
                argv += [flag, str(item)]
    return argv


def job_main(verb: str, argv: Sequence[str]) -> int:
    """What ``python -m jobs.<verb> ARGS`` runs: ``mrcnn <verb> ARGS``, where ``--config FILE`` (for every verb
    but ``train``, whose ``--config`` is its own run config) is replaced by the file's flags; flags given
    after it win."""
    argv = list(argv)
    if verb != "train" and "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            print(f"mrcnn {verb}: error: --config needs a YAML file", file=sys.stderr)
            return 2
        try:
            expanded = config_args(argv[at + 1])
        except CLIError as exc:
            print(f"mrcnn: error: {exc}", file=sys.stderr)
            return 2
        argv = [*expanded, *argv[:at], *argv[at + 2 :]]
    return main([verb, *argv])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mrcnn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; MRCNN_DEBUG=1 shows the traceback
        if os.environ.get("MRCNN_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        known = (CLIError, ValueError, FileNotFoundError, OSError)
        prefix = "" if isinstance(exc, known) else f"{type(exc).__name__}: "
        print(f"mrcnn: error: {prefix}{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
