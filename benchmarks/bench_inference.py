"""Inference speed: `mrcnn.Predictor` against torchvision's own Mask R-CNN, same weights and images.

    python benchmarks/bench_inference.py                      # the defaults: 800 px, 6 photos, 5 repeats
    python benchmarks/bench_inference.py --variants torchvision predictor predictor_plain --repeats 3

torchvision's `maskrcnn_resnet50_fpn(weights=None)` (random init, seed 0) is built once; our R50-FPN
preset loads its state dict. The score threshold is 0, so 100 detections per image go through the mask
head, as with trained weights. Every repetition runs every variant on every image, one after the other
(interleaved, so load changes hit all variants alike), after a warm-up pass; the table shows per-image
medians over the repetitions, summed over the images, with the min-max of those sums.

Variants:
- torchvision: `model([tensor])` under `torch.inference_mode()`: boxes, labels, scores and [D, 1, H, W]
  mask probabilities pasted into the image (its output stops there).
- predictor: `Predictor.predict([image])` (the default, optimized model): detection records with
  RLE-encoded binary masks (more work than torchvision's output: thresholding and RLE).
- predictor_raw: `Predictor.predict_raw` (tensors, bool masks; no RLE).
- predictor_plain: `Predictor(optimize=False).predict`: the model as loaded (no BatchNorm folding, NCHW);
  only the exact fast paths (mask pasting, class NMS, label-only mask logits, threaded RoI pooling).
- predictor_fold: as predictor_plain plus BatchNorm folded into the convolutions (NCHW).
- torchvision_no_grad: torchvision's model under `torch.no_grad()` instead of `torch.inference_mode()`.

`--stages` also prints where the time goes (backbone+FPN, RPN, box branch, mask branch, the rest:
post-processing, pasting, RLE) for torchvision and the default predictor, from module hooks.

It also checks that the outputs agree: same labels in the same order, largest box and score differences,
and the smallest per-instance mask IoU against torchvision's masks thresholded at 0.5.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn.config import get_preset
from mrcnn.data.categories import CategoryMap
from mrcnn.data.dataset import image_to_tensor
from mrcnn.data.images import load_image
from mrcnn.modeling import build_model
from mrcnn.modeling.inference import optimize_for_inference
from mrcnn.predictor import Predictor

PHOTOS = sorted((ROOT / "tests" / "data" / "coco_mini" / "images").glob("*.jpg"))
VARIANTS = ("torchvision", "predictor", "predictor_raw", "predictor_plain", "predictor_fold", "torchvision_no_grad")


def build_models(size: int):
    """torchvision's model (random init, seed 0) and predictors over the same weights."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    max_size = int(size * 1333 / 800)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=size, max_size=max_size).eval()
    cfg = get_preset("r50_fpn").replace(
        **{"model.input.min_size": [size], "model.input.max_size": max_size, "model.box_head.score_thresh": 0.0}
    )
    categories = CategoryMap.from_names([f"c{i}" for i in range(1, cfg.model.num_classes + 1)])
    predictors = {}
    for name, optimize in (("optimized", True), ("plain", False), ("fold", False)):
        model = build_model(cfg)
        model.load_state_dict(copy.deepcopy(tv.state_dict()))
        predictors[name] = Predictor(model, config=cfg, categories=categories, score_threshold=0.0, optimize=optimize)
    optimize_for_inference(predictors["fold"].inference_model, channels_last=False)
    return tv, predictors


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
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["torchvision", "predictor", "predictor_raw"])
    parser.add_argument("--stages", action="store_true", help="also time the stages (first photo)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [load_image(p) for p in PHOTOS[: args.images]]
    tv, predictors = build_models(args.size)

    def run_tv(img):
        with torch.inference_mode():
            return tv([image_to_tensor(img)])[0]

    def run_tv_no_grad(img):
        with torch.no_grad():
            return tv([image_to_tensor(img)])[0]

    runs = {
        "torchvision": run_tv,
        "predictor": lambda img: predictors["optimized"].predict([img]),
        "predictor_raw": lambda img: predictors["optimized"].predict_raw([img])[0],
        "predictor_plain": lambda img: predictors["plain"].predict([img]),
        "predictor_fold": lambda img: predictors["fold"].predict([img]),
        "torchvision_no_grad": run_tv_no_grad,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(images)} photos at {args.size} px, "
          f"{args.repeats} repeats", flush=True)

    print("\nagreement with torchvision (per photo):")
    for index, img in enumerate(images):
        reference = run_tv(img)
        print(f"  photo {index}: optimized {agreement(reference, predictors['optimized'].predict_raw([img])[0])}")
        print(f"  photo {index}: plain     {agreement(reference, predictors['plain'].predict_raw([img])[0])}", flush=True)

    times = {name: [[] for _ in images] for name in args.variants}  # [variant][image] -> seconds per repeat
    for _ in range(args.repeats):
        for index, img in enumerate(images):
            for name in args.variants:
                t0 = time.perf_counter()
                runs[name](img)
                times[name][index].append(time.perf_counter() - t0)

    def total(name, pick):
        return sum(pick(per_image) for per_image in times[name])

    base = total(args.variants[0], statistics.median)
    print(f"\n| variant | seconds per photo (median) | min-max | speed-up vs {args.variants[0]} |")
    print("|---|---:|---:|---:|")
    for name in args.variants:
        med = total(name, statistics.median)
        lo, hi = total(name, min), total(name, max)
        n = len(images)
        print(f"| {name} | {med / n:.3f} | {lo / n:.3f}-{hi / n:.3f} | {base / med:.2f}x |")

    if args.stages:
        theirs = stage_times(tv, run_tv, images[0], args.repeats)
        ours = stage_times(predictors["optimized"].inference_model, runs["predictor"], images[0], args.repeats)
        print("\n| stage (photo 0) | torchvision s | predictor s | speed-up |")
        print("|---|---:|---:|---:|")
        for key in theirs:
            print(f"| {key} | {theirs[key]:.3f} | {ours[key]:.3f} | {theirs[key] / ours[key]:.2f}x |")



if __name__ == "__main__":
    main()
