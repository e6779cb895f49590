"""GPU check: AMP training steps and inference latency, ours against torchvision, on one device.

    python benchmarks/gpu_check.py                      # on a CUDA machine (the defaults)
    python benchmarks/gpu_check.py --device cpu --size 256 --repeats 1 --warmup 1   # smoke run on a CPU

Prints a markdown table; every row is measured in the same process, after warm-up, as the median of
``--repeats`` timed runs (min-max shown). Weights are random (nothing is downloaded); the score
threshold is 0 so that 100 detections per image go through the mask head, as with trained weights.
Rows: 1. inference, `Predictor.predict` (optimized model, RLE records) against torchvision's model call
(benchmarks/bench_inference.py); 2. R50-FPN training steps against torchvision's model with the same
set-up (benchmarks/bench_train_step.py; on CUDA ours runs NCHW, on CPUs channels-last as `mrcnn train`
does), in fp32 and under bf16/fp16 autocast, batch 1 and 8; and our `r18_fpn_small` training step.
3. (``--only postprocess``) post-processing alone, full-size masks against box crops
(benchmarks/bench_postprocess.py), and a whole `Predictor.predict` per photo at the default thresholds and
at score 0 against torchvision's model call, which includes its own paste (goal on an H100/H200: <= 25 ms).
4. (``--only e2e``, last) end to end (benchmarks/bench_train_e2e.py): shards of COCO-size JPEGs with masks ->
`mrcnn train` with one worker (``--e2e-preset`` r50_fpn, bf16, batch 8, ``--e2e-steps`` 60, at ``--size``): the
bare step inside the run and the images/s through the whole pipeline, with the data-wait fraction
(train/data_wait_s / train/step_s) and the GPU utilisation sampled during the measured steps (goal on an
H100/H200: >= 40 images/s). Ray Train when Ray imports, else the same loop without Ray (the row says which);
when neither can run, one line says why and the other rows stand. CPU smoke run:
``--device cpu --only e2e --e2e-preset r18_fpn_small --size 64 --e2e-images 8 --e2e-batch 2 --e2e-steps 3 --e2e-warmup 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mrcnn.config import get_preset
from mrcnn.data.dataset import image_to_tensor
from mrcnn.data.images import load_image
from mrcnn.engine import train_step
from mrcnn.modeling import build_model
from mrcnn.predictor import Predictor
from mrcnn.solver import build_optimizer

PHOTOS = sorted((ROOT / "tests" / "data" / "coco_mini" / "images").glob("*.jpg"))
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, *, device, warmup: int, repeats: int) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def _targets_from_gt(images, size: int, device):
    """Simple boxes/masks so the training step has real positives: two rectangles per image."""
    targets = []
    for img in images:
        _, H, W = img.shape
        boxes = torch.tensor([[0.1 * W, 0.1 * H, 0.5 * W, 0.6 * H], [0.4 * W, 0.3 * H, 0.9 * W, 0.9 * H]], device=device)
        masks = torch.zeros((2, H, W), dtype=torch.uint8, device=device)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2], device=device), "masks": masks})
    return targets


def bench_inference(args, device, rows):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=args.size, max_size=int(args.size * 1333 / 800)).eval().to(device)
    cfg = get_preset("r50_fpn").replace(
        **{"model.input.min_size": [args.size], "model.input.max_size": int(args.size * 1333 / 800), "model.box_head.score_thresh": 0.0}
    )
    ours = build_model(cfg)
    ours.load_state_dict(tv.state_dict())
    images_np = [load_image(p) for p in PHOTOS]
    for dtype_name in ("fp32", "bf16"):
        dtype = DTYPES[dtype_name]
        if dtype is not None and device.type == "cpu":
            continue
        predictor = Predictor(ours, config=cfg, categories=_categories(cfg), device=device, score_threshold=0.0, autocast_dtype=dtype)
        for batch in args.batches:
            batch_np = (images_np * batch)[:batch]
            batch_t = [image_to_tensor(img).to(device) for img in batch_np]
            ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

            def run_tv():
                with torch.inference_mode(), ctx:
                    tv(batch_t)

            def run_ours():
                predictor.predict(batch_np)

            t_tv = _time(run_tv, device=device, warmup=args.warmup, repeats=args.repeats)
            t_ours = _time(run_ours, device=device, warmup=args.warmup, repeats=args.repeats)
            rows.append({"bench": "inference r50_fpn", "dtype": dtype_name, "batch": batch, "torchvision_s": t_tv, "ours_s": t_ours,
                         "note": "ours includes RLE encoding of masks"})


def bench_postprocess(args, device, rows):
    """Post-processing alone (bench_postprocess.py: 100 detections, full-size path vs crops), then a whole
    ``Predictor.predict`` per photo against torchvision's model call (which pastes its own masks), at the
    default thresholds (score 0.5, mask 0.5) and at score 0 (100 detections, as with trained weights).
    The goal on an H100/H200: predict <= 25 ms per photo, and never slower than torchvision."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from bench_postprocess import time_paths

    size = (args.size, round(args.size * 4 / 3))
    times, identical = time_paths(device, size=size, detections=100, images=2, warmup=args.warmup, repeats=args.repeats)
    rows.append({"bench": f"post-processing 100 det {size[0]}x{size[1]} (left: full-size masks, right: crops; "
                          f"records identical: {identical})",
                 "dtype": "fp32", "batch": 1, "torchvision_s": times["full-size masks"], "ours_s": times["box crops"]})
    images_np = [load_image(p) for p in PHOTOS[: args.photos]]
    for score in (0.5, 0.0):
        torch.manual_seed(0)
        max_size = int(args.size * 1333 / 800)
        tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=score, min_size=args.size,
                                   max_size=max_size).eval().to(device)
        cfg = get_preset("r50_fpn").replace(**{"model.input.min_size": [args.size], "model.input.max_size": max_size,
                                               "model.box_head.score_thresh": score})
        ours = build_model(cfg)
        ours.load_state_dict(tv.state_dict())
        predictor = Predictor(ours, config=cfg, categories=_categories(cfg), device=device, score_threshold=score)
        tensors = [image_to_tensor(img).to(device) for img in images_np]

        def run_tv():
            with torch.inference_mode():
                for tensor in tensors:
                    tv([tensor])

        detections = []

        def run_ours():
            detections[:] = [len(predictor.predict([image])[0]) for image in images_np]

        t_tv = _time(run_tv, device=device, warmup=args.warmup, repeats=args.repeats)
        t_ours = _time(run_ours, device=device, warmup=args.warmup, repeats=args.repeats)
        per_photo = [tuple(t / len(images_np) for t in times) for times in (t_tv, t_ours)]
        rows.append({"bench": f"Predictor.predict per photo, score > {score} ({sum(detections) / len(images_np):.0f} det/photo; "
                              "goal <= 25 ms)",
                     "dtype": "fp32", "batch": 1, "torchvision_s": per_photo[0], "ours_s": per_photo[1]})
        del tv, ours, predictor
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _categories(cfg):
    from mrcnn.data.categories import CategoryMap

    return CategoryMap.from_names([f"c{i}" for i in range(1, cfg.model.num_classes + 1)])


def bench_train_vs_torchvision(args, device, rows):
    """R50-FPN training steps, ours against torchvision's (bench_train_step.py's set-up), interleaved."""
    from bench_train_step import build, make_batch

    for dtype_name in ("fp32", "bf16", "fp16"):
        dtype = DTYPES[dtype_name]
        if dtype is not None and device.type == "cpu":
            continue
        for batch in args.batches:
            models = build(args.size, device)
            models.pop("ours_channels_last" if device.type == "cuda" else "ours")
            optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-4) for name, m in models.items()}
            scaler = torch.amp.GradScaler(device.type) if dtype_name == "fp16" else None
            images, targets = make_batch(batch, args.size, device)
            times = {name: [] for name in models}
            for step in range(args.warmup + args.repeats):
                for name, model in models.items():
                    _sync(device)
                    t0 = time.perf_counter()
                    train_step(model, images, targets, optimizer=optimizers[name], step=step, scaler=scaler, autocast_dtype=dtype)
                    _sync(device)
                    if step >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
            theirs, ours = (times[name] for name in models)
            rows.append({"bench": f"train step r50_fpn {args.size}px vs torchvision", "dtype": dtype_name, "batch": batch,
                         "torchvision_s": (statistics.median(theirs), min(theirs), max(theirs)),
                         "ours_s": (statistics.median(ours), min(ours), max(ours))})
            del models, optimizers
            if device.type == "cuda":
                torch.cuda.empty_cache()


def bench_train(args, device, rows):
    """Our small preset's training step (the demo's model), ours only."""
    for preset, size in (("r18_fpn_small", 128),):
        for dtype_name in ("fp32", "bf16", "fp16"):
            dtype = DTYPES[dtype_name]
            if dtype is not None and device.type == "cpu":
                continue
            for batch in args.batches:
                torch.manual_seed(0)
                overrides = {"model.input.min_size": [size], "model.input.max_size": int(size * 1333 / 800)}
                cfg = get_preset(preset).replace(**overrides)
                model = build_model(cfg).to(device).train()
                if device.type == "cpu":
                    model = model.to(memory_format=torch.channels_last)
                    model.channels_last = True
                optimizer = build_optimizer(model, cfg.solver, total_batch_size=batch)
                scaler = torch.amp.GradScaler(device.type) if dtype_name == "fp16" else None
                images = [torch.rand(3, size, int(size * 4 / 3), device=device) for _ in range(batch)]
                targets = _targets_from_gt(images, size, device)
                step = [0]

                def run():
                    train_step(model, images, targets, optimizer=optimizer, step=step[0], scaler=scaler, autocast_dtype=dtype)
                    step[0] += 1

                med, lo, hi = _time(run, device=device, warmup=args.warmup, repeats=args.repeats)
                rows.append({"bench": f"train step {preset} {size}px", "dtype": dtype_name, "batch": batch, "ours_s": (med, lo, hi),
                             "images_per_s": batch / med})
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def bench_e2e(args, device, rows):
    """The end-to-end case (bench_train_e2e.py); a failure is one line (and its traceback on stderr), never the
    end of the other rows."""
    import traceback

    import bench_train_e2e

    try:
        rows.extend(bench_train_e2e.e2e_rows(bench_train_e2e.e2e_args(args)))
    except Exception as exc:  # noqa: BLE001 (whatever stops the case, the other rows are printed)
        traceback.print_exc()
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        # The first line says where (a worker group), the last one why (the worker's exception).
        message = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
        print(f"e2e: failed: {type(exc).__name__}: {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=800, help="shorter image side for the R50 benchmarks")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", choices=["inference", "postprocess", "train", "e2e"], default=None)
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help="photos per pass in the predict-per-photo rows")
    parser.add_argument("--json-out", help="also write the rows as json here")
    from bench_train_e2e import add_arguments as add_e2e_arguments

    add_e2e_arguments(parser.add_argument_group("end to end (--only e2e)"), prefix="e2e-")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device here; pass --device cpu for a smoke run")
        # No cudnn.benchmark: the RoI heads see a different number of RoIs every step, and autotuning
        # each new shape made single steps 10x slower than the median (measured on an H200).
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    rows: list[dict] = []
    if args.only in (None, "inference"):
        bench_inference(args, device, rows)
    if args.only in (None, "postprocess"):
        bench_postprocess(args, device, rows)
    if args.only in (None, "train"):
        bench_train_vs_torchvision(args, device, rows)
        bench_train(args, device, rows)
    if args.only in (None, "e2e"):
        bench_e2e(args, device, rows)

    def fmt(t):
        return f"{t[0] * 1000:.1f} ({t[1] * 1000:.1f}-{t[2] * 1000:.1f})"

    print("\n| benchmark | dtype | batch | torchvision ms | ours ms | ours/torchvision speed-up | images/s "
          "| data wait / step | GPU util % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tv = fmt(r["torchvision_s"]) if "torchvision_s" in r else "-"
        ratio = f"{r['torchvision_s'][0] / r['ours_s'][0]:.2f}x" if "torchvision_s" in r else "-"
        ips = r.get("images_per_s", r["batch"] / r["ours_s"][0])
        wait = f"{r['wait_fraction']:.1%}" if "wait_fraction" in r else "-"
        print(f"| {r['bench']} | {r['dtype']} | {r['batch']} | {tv} | {fmt(r['ours_s'])} | {ratio} | {ips:.1f} | {wait} "
              f"| {r.get('gpu_util', '-')} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
