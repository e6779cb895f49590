"""End to end: shards of COCO-size JPEGs with masks -> ``mrcnn train`` with one worker for N steps.

    python benchmarks/bench_train_e2e.py                       # one GPU: r50_fpn, bf16, batch 8, 60 steps
    python benchmarks/bench_train_e2e.py --device cpu --preset r18_fpn_small --size 64 --images 8 --batch 2 \\
        --steps 3 --warmup 1                                   # smoke run on a CPU
    python benchmarks/gpu_check.py --only e2e                  # the same, as rows of the GPU check's table

The data are the 6 COCO val2017 photos of ``tests/data/coco_mini`` (about 640x480, 2 to 23 instances with their
polygon masks), repeated to ``--images`` (512: 60 steps of 8 stay in the first pass, no epoch restart in the
window), written as Parquet shards by ``mrcnn preprocess``'s ``preprocess_dataset``. The run is
``pipelines.train.train`` (what ``mrcnn train`` calls): Ray Train with one worker, the shards read by Ray Data,
decoded and collated by ``loader_threads`` background threads, MLflow logging from the worker (into a SQLite store
in a temporary folder), random init (nothing downloaded), no evaluation. A hook on the worker stamps every step
(:class:`StepClock`).

Which path runs (said in the row):
- ``ray``: the above; without MLflow installed, the same without tracking.
- ``plain``: no Ray (not installed, or ``--path plain``): the worker's loop in this process:
  :class:`mrcnn.engine.Trainer` with the same model set-up, collate and ``ShardEpochs``/``Prefetcher`` data path of
  ``pipelines.train.data``, over the same shards written with pyarrow and read in shuffled batches.
Without pyarrow or the training data path, which even the plain path needs, :func:`e2e_rows` says why and gives no row.

Reported, over the steps after ``--warmup``:
- images/s through the pipeline: images trained / wall time between the end of the first measured step and the
  end of the last (data wait, host-to-device copies, the step, every hook and MLflow call included);
- the data-wait fraction: sum of ``train/data_wait_s`` / sum of ``train/step_s``, the two per-step metrics of
  :class:`mrcnn.engine.Trainer` (the wait for ``next(batches)``; the ``train_step`` call alone);
- GPU utilisation: pynvml's (or ``nvidia-smi``'s) ``utilization.gpu`` sampled every 200 ms, averaged over the
  same window;
- the bare step inside the run: the median ``train/step_s`` (compare with gpu_check's "train step" rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mrcnn.engine import HookBase

COCO_MINI = ROOT / "tests" / "data" / "coco_mini"


class StepClock(HookBase):
    """Stamps the end of every step (wall clock, seconds since the epoch) with its ``step_s``, ``data_wait_s``
    and image count, and writes them as JSON to ``path`` at the end (or when the loop fails)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.steps: list[dict] = []

    def after_step(self) -> None:
        record = self.trainer.record
        self.steps.append({"t": time.time(), "step_s": record["step_s"], "data_wait_s": record["data_wait_s"],
                           "images": len(self.trainer.batch[0])})  # fmt: skip

    def after_train(self) -> None:
        self.path.write_text(json.dumps(self.steps))

    def on_failure(self, exc: BaseException) -> None:
        self.after_train()


class GpuSampler:
    """``utilization.gpu`` (percent) of one GPU about every ``interval_ms``, in a background thread: pynvml when
    installed, else one ``nvidia-smi --query-gpu=utilization.gpu`` call per sample (a process that exits, so no
    output sits in a pipe's buffer); ``samples`` holds ``(unix time, percent)``, ``source`` says which (None:
    neither works)."""

    QUERY = ("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")

    def __init__(self, index: int = 0, interval_ms: int = 200):
        self.index, self.interval_ms = index, interval_ms
        self.samples: list[tuple[float, float]] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source, read = "pynvml", lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # noqa: BLE001 (ImportError, or pynvml's NVMLError without a driver): nvidia-smi
            command = ["nvidia-smi", "-i", str(self.index), *self.QUERY]
            try:
                float(subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip())
            except (OSError, subprocess.SubprocessError, ValueError):
                return self
            self.source = "nvidia-smi"

            def read() -> float:
                return float(subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip())

        self._thread = threading.Thread(target=self._poll, args=(read,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def mean_between(self, start: float, end: float) -> float | None:
        """The mean of the samples taken from ``start`` to ``end`` (unix seconds); None without one."""
        values = [value for t, value in self.samples if start <= t <= end]
        return statistics.fmean(values) if values else None

    def _poll(self, read) -> None:
        while not self._stop.wait(self.interval_ms / 1000):
            try:
                self.samples.append((time.time(), read()))
            except (subprocess.SubprocessError, ValueError, OSError):
                continue


def write_coco_root(root: Path, num_images: int) -> Path:
    """A COCO dataset root (``root/train/annotations.json`` + ``root/train/images/``) of coco_mini's photos and
    annotations repeated to ``num_images`` images (new image and annotation ids; the files are symlinks)."""
    data = json.loads((COCO_MINI / "annotations.json").read_text())
    images_dir = root / "train" / "images"
    images_dir.mkdir(parents=True)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    for i in range(num_images):
        copy, source = divmod(i, len(data["images"]))
        image = data["images"][source]
        image_id, file_name = copy * 10**7 + image["id"], f"c{copy:04d}_{image['file_name']}"
        (images_dir / file_name).symlink_to(COCO_MINI / "images" / image["file_name"])
        images.append({**image, "id": image_id, "file_name": file_name})
        annotations += [{**ann, "id": len(annotations) + 1, "image_id": image_id} for ann in by_image.get(image["id"], [])]
    (root / "train" / "annotations.json").write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    return root


def write_shards_plain(root: Path, out: Path) -> None:
    """The shards ``preprocess_dataset`` writes (one file, the same columns and values), with pyarrow alone."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrcnn.data.coco import load_coco
    from pipelines.shards import CATEGORIES_FILE, shard_file_name, shard_schema

    split = root / "train"
    result = load_coco(split / "annotations.json", image_dir=split / "images")
    rows = []
    for record in result.records:
        anns = record.annotations
        rows.append({"image_id": record.image_id, "file_name": record.file_name, "height": record.height,
                     "width": record.width, "image": (split / "images" / record.file_name).read_bytes(),
                     "boxes": [np.asarray(a.box, dtype=np.float32).tolist() for a in anns],
                     "labels": [a.label for a in anns], "category_ids": [a.category_id for a in anns],
                     "masks_rle": [a.rle["counts"] for a in anns], "iscrowd": [a.iscrowd for a in anns],
                     "area": [a.area for a in anns], "keypoints": [[] for _ in anns]})  # fmt: skip
    (out / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema()), out / "train" / shard_file_name(0, 1))
    result.categories.save_json(out / CATEGORIES_FILE)


class ParquetShard:
    """What ``ShardEpochs`` reads without Ray: ``iter_batches`` of numpy column batches over the shard files, the
    row order shuffled per pass with ``local_shuffle_seed`` (a full shuffle rather than Ray's local buffer)."""

    def __init__(self, files: list[str]):
        import pyarrow.parquet as pq

        self.table = pq.read_table(files)

    def iter_batches(self, *, batch_size: int, batch_format: str, drop_last: bool, local_shuffle_buffer_size: int,
                     local_shuffle_seed: int):  # fmt: skip
        import numpy as np

        assert batch_format == "numpy"
        order = np.random.default_rng(local_shuffle_seed).permutation(self.table.num_rows)
        for start in range(0, len(order), batch_size):
            if drop_last and start + batch_size > len(order):
                return
            chunk = self.table.take(order[start : start + batch_size])
            yield {name: chunk.column(name).to_numpy(zero_copy_only=False) for name in chunk.column_names}


def _run_config(args, data: Path, workdir: Path, *, tracking_uri: str):
    from pipelines.train import TrainRunConfig

    cuda = args.device.startswith("cuda")
    overrides = {"model.input.min_size": [args.size], "model.input.max_size": int(args.size * 1333 / 800)}
    return TrainRunConfig(
        data=str(data), preset=args.preset, overrides=overrides, workers=1, use_gpu=cuda, amp=args.amp if cuda else "none",
        batch_size=args.batch, max_iters=args.steps, eval_every=-1, checkpoint_every=10**9, max_failures=0,
        storage_path=str(workdir / "ray_results"), name="e2e", tracking_uri=tracking_uri, experiment="e2e", model_name="",
        num_val_overlays=0, loader_threads=args.loader_threads, augmentation={"kind": args.augmentation},
    ).validate()  # fmt: skip


def run_ray(args, workdir: Path, clock_path: Path) -> str:
    """Preprocess + ``pipelines.train.train`` in a local Ray of this process's own; the path's description."""
    import ray
    import ray.data

    from pipelines.preprocess import preprocess_dataset
    from pipelines.train import train

    try:
        import mlflow  # noqa: F401

        from pipelines.tracking import default_tracking_uri

        tracking_uri, tracked = default_tracking_uri(workdir), "MLflow"
    except ImportError:
        tracking_uri, tracked = "", "no MLflow (not installed)"
    # The worker imports StepClock from this folder (and the project): Ray's workers inherit this environment.
    paths = [str(ROOT), str(ROOT / "benchmarks"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    ray.init(address="local", include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the worker's lines stay readable
    try:
        preprocess_dataset(write_coco_root(workdir / "coco", args.images), workdir / "shards", splits=["train"],
                           progress=False)  # fmt: skip
        run = _run_config(args, workdir / "shards", workdir, tracking_uri=tracking_uri)
        train(run, extra_hooks=[{"factory": "bench_train_e2e:StepClock", "kwargs": {"path": str(clock_path)}}])
    finally:
        ray.shutdown()
    return f"Ray Train + {tracked}, loader_threads {run.num_loader_threads()}"


def run_plain(args, workdir: Path, clock_path: Path, why: str) -> str:
    """The worker's loop without Ray, in this process (see the module docstring); the path's description."""
    import torch

    from mrcnn.engine import LRSchedule, MetricLogger, Trainer
    from mrcnn.solver import build_optimizer
    from pipelines.shards import list_shards, read_categories
    from pipelines.train.data import ShardEpochs, TrainCollate
    from pipelines.train.driver import model_config_for
    from pipelines.train.model import build_worker_model

    write_shards_plain(write_coco_root(workdir / "coco", args.images), workdir / "shards")
    run = _run_config(args, workdir / "shards", workdir, tracking_uri="")
    cfg = model_config_for(run, read_categories(run.data))
    torch.manual_seed(run.seed)
    device = torch.device(args.device)
    model, _ = build_worker_model(run, cfg, world_size=1, resuming=False)
    model = model.to(device)
    if run.augmentation_config().kind in ("multiscale", "lsj"):
        model.skip_resize_in_training = True
    optimizer = build_optimizer(model, cfg.solver, total_batch_size=run.batch_size)
    data = ShardEpochs(ParquetShard(list_shards(f"{run.data}/train")), run.batch_size, seed=run.seed,
                       collate=TrainCollate(run.augmentation, seed=run.seed, pad_fill=cfg.model.input.pixel_mean),
                       loader_threads=run.num_loader_threads())  # fmt: skip
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.amp]
    trainer = Trainer(model, data, optimizer, max_iters=run.max_iters, device=device, autocast_dtype=dtype,
                      scaler=torch.amp.GradScaler("cuda") if run.amp == "fp16" else None,
                      clip_grad_norm=cfg.solver.clip_grad_norm)  # fmt: skip
    trainer.register_hooks([LRSchedule(cfg.solver), MetricLogger(None, period=25), StepClock(str(clock_path))])
    try:
        trainer.train()
    finally:
        data.close()
    return f"plain loop, no Ray ({why}), loader_threads {run.num_loader_threads()}"


def _choose_path(requested: str) -> tuple[str | None, str]:
    """``(path, why)``: ``ray``, ``plain`` or None (nothing can run), and the reason for falling back."""
    try:
        import pyarrow.parquet  # noqa: F401

        import pipelines.train.data  # noqa: F401
    except ImportError as exc:
        return None, f"pyarrow or the training data path does not import ({exc})"
    if requested == "plain":
        return "plain", "--path plain"
    try:
        import ray.data
        import ray.train.torch  # noqa: F401
    except ImportError as exc:
        if requested == "ray":
            return None, f"--path ray, but Ray does not import ({exc})"
        return "plain", f"Ray does not import: {exc}"
    return "ray", ""


def summarize(steps: list[dict], warmup: int, sampler: GpuSampler | None) -> dict:
    """The figures of the steps after ``warmup`` (see the module docstring).

    Raises:
        ValueError: no warm-up step (the first measured interval starts at the end of the last warm-up step) or
            no step after the warm-up.
    """
    measured = steps[warmup:]
    if warmup < 1 or len(measured) < 1:
        raise ValueError(f"e2e: {len(steps)} steps with warm-up {warmup}: need warm-up >= 1 and at least one step after it")
    start, end = steps[warmup - 1]["t"], steps[-1]["t"]
    loop_s = [b["t"] - a["t"] for a, b in zip(steps[warmup - 1 :], measured)]
    step_s = [s["step_s"] for s in measured]
    util = sampler.mean_between(start, end) if sampler is not None else None
    return {"images_per_s": sum(s["images"] for s in measured) / (end - start),
            "loop_s": (statistics.median(loop_s), min(loop_s), max(loop_s)),
            "step_s": (statistics.median(step_s), min(step_s), max(step_s)),
            "wait_fraction": sum(s["data_wait_s"] for s in measured) / sum(step_s),
            "gpu_util": util, "steps": len(measured)}  # fmt: skip


def e2e_rows(args) -> list[dict]:
    """Run the end-to-end case; its rows for gpu_check's table (``bench``, ``dtype``, ``batch``, ``ours_s``: median,
    min, max seconds per step, ``images_per_s``; the pipeline's row also ``wait_fraction`` and ``gpu_util``: percent
    and its source, ``-`` on a CPU), or [] with one line on stdout saying why it could not run."""
    path, why = _choose_path(args.path)
    if path is None:
        print(f"e2e: skipped: {why}", flush=True)
        return []
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="mrcnn-e2e-") as tmp:
        workdir, clock_path = Path(tmp), Path(tmp) / "steps.json"
        sampler = GpuSampler(index=int(args.device.partition(":")[2] or 0)) if cuda else None
        with sampler if sampler is not None else contextlib.nullcontext():
            described = run_ray(args, workdir, clock_path) if path == "ray" else run_plain(args, workdir, clock_path, why)
        result = summarize(json.loads(clock_path.read_text()), args.warmup, sampler)
    if not cuda:
        util = "-"
    elif result["gpu_util"] is None:
        util = "n/a: no samples (pynvml, nvidia-smi)" if sampler.source is None else f"n/a: no {sampler.source} sample"
    else:
        util = f"{result['gpu_util']:.0f} ({sampler.source})"
    label = (f"e2e mrcnn train {args.preset} {args.size}px, {args.images} COCO JPEGs+masks from shards, augmentation "
             f"{args.augmentation}, {result['steps']} steps after {args.warmup} ({described})")  # fmt: skip
    common = {"dtype": args.amp if cuda else "fp32", "batch": args.batch}
    return [
        {"bench": f"{label}: the bare step inside the run (train/step_s)", "ours_s": result["step_s"],
         "images_per_s": args.batch / result["step_s"][0], **common},
        {"bench": f"{label}: through the pipeline (goal >= 40 images/s on an H100/H200 with bf16)",
         "ours_s": result["loop_s"], "images_per_s": result["images_per_s"], "wait_fraction": result["wait_fraction"],
         "gpu_util": util, **common},
    ]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The case's flags (``--steps``...; ``prefix`` ``e2e-`` gives gpu_check's ``--e2e-steps``...)."""
    p = f"--{prefix}"
    parser.add_argument(f"{p}preset", default="r50_fpn", help="model preset (random init)")
    parser.add_argument(f"{p}images", type=int, default=512,
                        help="coco_mini's 6 photos repeated to this many images (512: 60 steps of 8 stay in one pass)")
    parser.add_argument(f"{p}batch", type=int, default=8, help="images per step (one worker)")
    parser.add_argument(f"{p}steps", type=int, default=60, help="training steps in all")
    parser.add_argument(f"{p}warmup", type=int, default=10, help="steps left out of the figures")
    parser.add_argument(f"{p}amp", choices=["none", "bf16", "fp16"], default="bf16", help="autocast on CUDA (CPU: fp32)")
    parser.add_argument(f"{p}loader-threads", type=int, default=-1, help="the run's loader_threads (-1: auto)")
    parser.add_argument(f"{p}augmentation", choices=["none", "flip", "multiscale", "lsj"], default="none")
    parser.add_argument(f"{p}path", choices=["auto", "ray", "plain"], default="auto",
                        help="auto: Ray Train when Ray imports, else the plain loop")


def e2e_args(args: argparse.Namespace, prefix: str = "e2e_") -> argparse.Namespace:
    """gpu_check's ``e2e_*`` flags (and its ``--device``, ``--size``) as this script's."""
    names = ("preset", "images", "batch", "steps", "warmup", "amp", "loader_threads", "augmentation", "path")
    return argparse.Namespace(device=args.device, size=args.size, **{n: getattr(args, prefix + n) for n in names})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=800, help="the model's shorter side (longer at most x1333/800)")
    add_arguments(parser)
    args = parser.parse_args()
    for row in e2e_rows(args):
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}))


if __name__ == "__main__":
    main()
