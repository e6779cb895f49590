"""Inference speed: `mrcnn.Predictor` against torchvision's own Mask R-CNN, same weights and images.

    python benchmarks/bench_inference.py                      # the defaults: 800 px, 6 photos, 5 repeats
    python benchmarks/bench_inference.py --variants torchvision predictor predictor_plain --repeats 3

torchvision's `maskrcnn_resnet50_fpn(weights=None)` (random init, seed 0) is built; our R50-FPN
preset loads its state dict. The score threshold is 0, so 100 detections per image go through the mask
head, as with trained weights. Every repetition runs every variant on every image, one after the other
(interleaved, so load changes hit all variants alike), after a warm-up pass; the table shows per-image
medians over the repetitions, summed over the images, with the min-max of those sums.

Each group of variants runs in a process of its own (driven in turn by this one), because one
setting is process-wide: `mrcnn predict`, segment and serve make glibc's malloc keep freed memory
(`mrcnn.runtime.keep_freed_memory`, applied by the application, not by the Predictor), which would
otherwise also speed up torchvision in the same process. The `ours` group applies it as they do. So `torchvision` is torchvision as it runs out of the box, and `torchvision_kept_memory` is
torchvision with the same malloc setting as the predictor (the comparison of the two implementations
alone).

Variants (process in brackets):
- torchvision [tv]: `model([tensor])` under `torch.inference_mode()`: boxes, labels, scores and
  [D, 1, H, W] mask probabilities pasted into the image (its output stops there).
- torchvision_no_grad [tv]: the same under `torch.no_grad()`.
- torchvision_kept_memory [tv_kept]: torchvision with `keep_freed_memory()` applied to its process.
- predictor [ours]: `Predictor.predict([image])` as `mrcnn predict` runs it (freed memory kept,
  `optimize={"winograd": True}`: BatchNorm folded, channels-last, Winograd 3x3s): detection records with
  RLE-encoded binary masks (more work than torchvision's output: thresholding, RLE).
- predictor_raw [ours]: `Predictor.predict_raw` (tensors, bool masks; no RLE).
- predictor_no_winograd [ours]: the same with oneDNN's direct 3x3 convolutions instead of
  Winograd F(4x4, 3x3) (the Predictor's default `optimize=True`).
- predictor_default_malloc [ours_malloc]: `Predictor` with its defaults (`optimize=True`: BatchNorm folded,
  channels-last, direct convolutions) and glibc's default malloc (the library alone).
- predictor_plain [ours_malloc]: `Predictor(optimize=False)`: the model as loaded (no BatchNorm folding,
  NCHW, direct convolutions); only the exact fast paths (mask pasting, class NMS, label-only mask logits, threaded RoI
  pooling); glibc's default malloc.
- predictor_fold [ours_malloc]: as predictor_plain plus BatchNorm folded into the convolutions (NCHW).

`--stages` also prints where the time goes (backbone+FPN, RPN, box branch, mask branch, the rest:
post-processing, pasting, RLE) for torchvision and the `predictor` variant, from module hooks.

The table also counts the minor page faults per call (memory the kernel maps in and zeroes).

It also checks that the outputs agree: same labels in the same order, largest box and score differences,
and the smallest per-instance mask IoU against torchvision's masks thresholded at 0.5.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn import runtime
from mrcnn.config import get_preset
from mrcnn.data.categories import CategoryMap
from mrcnn.data.dataset import image_to_tensor
from mrcnn.data.images import load_image
from mrcnn.modeling import build_model
from mrcnn.predictor import Predictor

PHOTOS = sorted((ROOT / "tests" / "data" / "coco_mini" / "images").glob("*.jpg"))
# variant -> the process group it runs in (variants of one group share a process and its settings).
VARIANTS = {
    "torchvision": "tv",
    "predictor": "ours",
    "predictor_raw": "ours",
    "predictor_no_winograd": "ours",
    "torchvision_kept_memory": "tv_kept",
    "predictor_default_malloc": "ours_malloc",
    "predictor_plain": "ours_malloc",
    "predictor_fold": "ours_malloc",
    "torchvision_no_grad": "tv",
}


def build_torchvision(size: int):
    """torchvision's Mask R-CNN (random init, seed 0: the same weights in every process)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=size, max_size=int(size * 1333 / 800)
    ).eval()


def build_predictor(tv, size: int, *, optimize: bool | dict = True) -> Predictor:
    """Our R50-FPN predictor over torchvision's weights. ``optimize``: as ``Predictor``'s: True for the default
    optimized copy, False for the model as loaded, or ``optimize_for_inference`` keyword arguments."""
    cfg = get_preset("r50_fpn").replace(
        **{"model.input.min_size": [size], "model.input.max_size": int(size * 1333 / 800), "model.box_head.score_thresh": 0.0}
    )
    categories = CategoryMap.from_names([f"c{i}" for i in range(1, cfg.model.num_classes + 1)])
    model = build_model(cfg)
    model.load_state_dict(copy.deepcopy(tv.state_dict()))
    return Predictor(model, config=cfg, categories=categories, score_threshold=0.0, optimize=optimize)


def build_group(group: str, size: int) -> tuple[dict, dict]:
    """The runs of one process group: variant -> fn(image), and the modules/raw-output fns for stages/agreement."""
    tv = build_torchvision(size)

    def run_tv(img):
        with torch.inference_mode():
            return tv([image_to_tensor(img)])[0]

    def run_tv_no_grad(img):
        with torch.no_grad():
            return tv([image_to_tensor(img)])[0]

    if group in ("tv_kept", "ours"):  # this process's choice, as `mrcnn predict` makes it
        assert runtime.keep_freed_memory(), "keep_freed_memory() does not apply here (not glibc, or disabled)"
    if group in ("tv", "tv_kept"):
        runs = {"torchvision": run_tv, "torchvision_no_grad": run_tv_no_grad, "torchvision_kept_memory": run_tv}
        return runs, {"raw": run_tv, "model": tv}
    if group == "ours":
        predictor = build_predictor(tv, size, optimize={"winograd": True})
        direct = build_predictor(tv, size)
        runs = {
            "predictor": lambda img: predictor.predict([img]),
            "predictor_raw": lambda img: predictor.predict_raw([img])[0],
            "predictor_no_winograd": lambda img: direct.predict([img]),
        }
        return runs, {"raw": runs["predictor_raw"], "model": predictor.inference_model, "run": runs["predictor"]}
    optimized = build_predictor(tv, size)
    plain = build_predictor(tv, size, optimize=False)
    fold = build_predictor(tv, size, optimize={"channels_last": False})
    runs = {
        "predictor_default_malloc": lambda img: optimized.predict([img]),
        "predictor_plain": lambda img: plain.predict([img]),
        "predictor_fold": lambda img: fold.predict([img]),
    }
    return runs, {"raw": lambda img: plain.predict_raw([img])[0]}


def worker(conn, group: str, size: int, threads: int | None, images: int) -> None:
    """One process group: builds its models, then answers the driver's commands until told to stop."""
    if threads:
        torch.set_num_threads(threads)
    photos = [load_image(p) for p in PHOTOS[:images]]
    runs, extra = build_group(group, size)
    conn.send(("ready", torch.get_num_threads(), runtime.freed_memory_kept()))
    while True:
        command, *args = conn.recv()
        if command == "stop":
            return
        if command == "time":
            name, index = args
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            runs[name](photos[index])
            conn.send((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
        elif command == "raw":
            conn.send(extra["raw"](photos[args[0]]))
        elif command == "stages":
            index, repeats = args
            run = extra.get("run", extra["raw"])
            conn.send(stage_times(extra["model"], run, photos[index], repeats))


STAGES = {  # stage -> module paths whose forward time it sums
    "backbone+FPN": ["backbone"],
    "RPN": ["rpn"],
    "box branch (pool, head)": ["roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"],
    "mask branch (pool, head, predictor)": ["roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor.conv5_mask"],
}


def stage_times(model, run, image, repeats: int) -> dict[str, float]:
    """Median seconds per stage of ``run(image)`` (the rest: whatever no hooked module covers)."""
    spent: dict[str, float] = {}
    handles = []
    for stage, paths in STAGES.items():
        for path in paths:
            module = model.get_submodule(path)
            start: list[float] = []
            handles.append(module.register_forward_pre_hook(lambda *_, start=start: start.append(time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda *_, start=start, stage=stage: spent.__setitem__(stage, spent.get(stage, 0.0) + time.perf_counter() - start.pop())
            ))
    rows = []
    try:
        for _ in range(repeats):
            spent.clear()
            t0 = time.perf_counter()
            run(image)
            total = time.perf_counter() - t0
            rows.append({**spent, "rest (post-processing, pasting, RLE)": total - sum(spent.values()), "total": total})
    finally:
        for handle in handles:
            handle.remove()
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def agreement(reference: dict, ours: dict) -> dict:
    """How far our raw detections are from torchvision's for one image."""
    same_labels = torch.equal(reference["labels"], ours["labels"])
    out = {"num": (len(reference["labels"]), len(ours["labels"])), "same_labels": same_labels}
    if not same_labels and len(reference["labels"]) == len(ours["labels"]):
        # Rank swaps between detections whose scores differ by less than the rounding: show how close.
        differ = reference["labels"] != ours["labels"]
        out["ranks_differing"] = int(differ.sum())
        out["largest_score_gap_at_those_ranks"] = (reference["scores"][differ] - ours["scores"][differ]).abs().max().item()
        out["same_label_multiset"] = torch.equal(reference["labels"].sort().values, ours["labels"].sort().values)
    if same_labels and len(ours["labels"]):
        out["box_diff"] = (reference["boxes"] - ours["boxes"]).abs().max().item()
        out["score_diff"] = (reference["scores"] - ours["scores"]).abs().max().item()
        ref_masks = reference["masks"][:, 0] >= 0.5
        inter = (ref_masks & ours["masks"]).flatten(1).sum(1).double()
        union = (ref_masks | ours["masks"]).flatten(1).sum(1).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        out["min_mask_iou"] = iou.min().item()
        out["masks_identical"] = torch.equal(ref_masks, ours["masks"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=800, help="shorter image side after resizing")
    parser.add_argument("--images", type=int, default=len(PHOTOS), help=f"how many of the {len(PHOTOS)} photos")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["torchvision", "predictor", "torchvision_kept_memory", "predictor_default_malloc"])
    parser.add_argument("--stages", action="store_true", help="also time the stages (first photo)")
    args = parser.parse_args()
    groups = list(dict.fromkeys(VARIANTS[name] for name in args.variants))
    if not {"tv", "tv_kept"} & set(groups):
        groups.append("tv")  # the reference for the agreement check
    if args.stages:
        groups += [g for g in ("tv", "ours") if g not in groups]
    context = multiprocessing.get_context("spawn")
    conns, processes = {}, []
    try:
        for group in groups:  # built one after the other, so the builds do not compete
            parent, child = context.Pipe()
            process = context.Process(target=worker, args=(child, group, args.size, args.threads, args.images), daemon=True)
            process.start()
            child.close()  # so a worker that dies ends recv() with EOFError instead of a hang
            processes.append(process)
            _, threads, kept = parent.recv()
            conns[group] = parent
            print(f"process {group}: {threads} threads, freed memory kept: {kept}", flush=True)
        run(args, conns)
    finally:
        for conn in conns.values():
            conn.send(("stop",))
        for process in processes:
            process.join(timeout=30)


def run(args, conns) -> None:
    """Agreement, then the interleaved timing, then (optionally) the stages."""

    def ask(group, *command):
        conns[group].send(command)
        return conns[group].recv()

    print(f"torch {torch.__version__}, {args.images} photos at {args.size} px, {args.repeats} repeats", flush=True)
    reference_group = next(g for g in ("tv", "tv_kept") if g in conns)
    print("\nagreement with torchvision (per photo):")
    for index in range(args.images):
        reference = ask(reference_group, "raw", index)
        for group, label in (("ours", "optimized"), ("ours_malloc", "plain    ")):
            if group in conns:
                print(f"  photo {index}: {label} {agreement(reference, ask(group, 'raw', index))}", flush=True)

    for name in args.variants:  # warm-up pass
        for index in range(args.images):
            ask(VARIANTS[name], "time", name, index)
    times = {name: [[] for _ in range(args.images)] for name in args.variants}  # [variant][image] -> seconds
    faults = {name: [] for name in args.variants}  # minor page faults per call
    for _ in range(args.repeats):
        for index in range(args.images):
            for name in args.variants:
                seconds, count = ask(VARIANTS[name], "time", name, index)
                times[name][index].append(seconds)
                faults[name].append(count)

    def total(name, pick):
        return sum(pick(per_image) for per_image in times[name])

    bases = [args.variants[0]] + [n for n in ("torchvision_kept_memory",) if n in args.variants and n != args.variants[0]]
    n = args.images
    header = " | ".join(f"speed-up vs {b}" for b in bases)
    print(f"\n| variant | seconds per photo (median) | min-max | page faults per photo (median) | {header} |")
    print("|---|---:|---:|---:|" + "---:|" * len(bases))
    for name in args.variants:
        med = total(name, statistics.median)
        lo, hi = total(name, min), total(name, max)
        ratios = " | ".join(f"{total(b, statistics.median) / med:.2f}x" for b in bases)
        print(f"| {name} | {med / n:.3f} | {lo / n:.3f}-{hi / n:.3f} | {statistics.median(faults[name]):.0f} | {ratios} |")

    if args.stages:
        theirs = ask("tv", "stages", 0, args.repeats)
        ours = ask("ours", "stages", 0, args.repeats)
        print("\n| stage (photo 0) | torchvision s | predictor s | speed-up |")
        print("|---|---:|---:|---:|")
        for key in theirs:
            print(f"| {key} | {theirs[key]:.3f} | {ours[key]:.3f} | {theirs[key] / ours[key]:.2f}x |")


if __name__ == "__main__":
    main()
