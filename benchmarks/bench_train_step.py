"""Training-step speed: our Mask R-CNN against torchvision's, same weights, optimizer, batch and images.

    python benchmarks/bench_train_step.py                             # R50-FPN, 512 px, batch 2, CPU
    python benchmarks/bench_train_step.py --device cuda --size 800 --batch 8 --dtype bf16

torchvision's `maskrcnn_resnet50_fpn(weights=None)` (random init, seed 0) and our `r50_fpn` preset
with the same state dict and the same hyper-parameters (torchvision's: 512 sampled RoIs per image, 2000
proposals, frozen BatchNorm, ResNet stages 2-4 trained: the fine-tuning set-up of both), each with its own AdamW (lr 1e-4, weight decay 1e-4) over the same
parameters, on the same random images with two box/mask targets each. Both run our `train_step`
(forward, loss sum, backward, step), so the loop is the same and only the models differ. Steps
alternate between the two models (interleaved, so load changes hit both), after warm-up steps; the table
shows the median step time with min-max and images/s.

Variants: torchvision (NCHW), ours (NCHW, the model as built), ours_channels_last (NHWC convolutions, as
`mrcnn train` runs it on CPUs).

`--keep-freed-memory` applies `mrcnn.runtime.keep_freed_memory()` to the process, so to every variant
(`mrcnn train` applies it in its CPU workers): glibc's malloc then reuses freed memory instead of
page-faulting it in again at every step. Run with and without it to see what it is worth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn import runtime
from mrcnn.config import get_preset
from mrcnn.engine import train_step
from mrcnn.modeling import build_model

VARIANTS = ("torchvision", "ours", "ours_channels_last")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _TorchvisionAdapter(torch.nn.Module):
    """torchvision's model behind our forward contract (``.losses``), so `train_step` drives both."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, targets):
        return type("Output", (), {"losses": self.model(images, targets)})()


def make_batch(batch: int, size: int, device: torch.device, seed: int = 0):
    """Random images (size x 4/3 size) with two rectangle instances each (labels 1 and 2)."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        H, W = size, size * 4 // 3
        images.append(torch.rand(3, H, W, generator=generator).to(device))
        boxes = torch.tensor([[0.1 * W, 0.1 * H, 0.5 * W, 0.6 * H], [0.4 * W, 0.3 * H, 0.9 * W, 0.9 * H]])
        masks = torch.zeros((2, H, W), dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            mask[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2], device=device), "masks": masks.to(device)})
    return images, targets


def build(size: int, device: torch.device):
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    max_size = int(size * 1333 / 800)
    # What maskrcnn_resnet50_fpn builds for fine-tuning from ImageNet weights (frozen BatchNorm, stem and
    # layer1 frozen), as our r50_fpn preset does; with weights=None it would switch to trainable BatchNorm
    # and train all five stages, a different (and slower) model.
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    tv = MaskRCNN(backbone, num_classes=91, min_size=size, max_size=max_size)
    cfg = get_preset("r50_fpn").replace(**{"model.input.min_size": [size], "model.input.max_size": max_size})
    models = {"torchvision": _TorchvisionAdapter(tv)}
    for name in ("ours", "ours_channels_last"):
        model = build_model(cfg)
        model.load_state_dict(tv.state_dict())
        if name == "ours_channels_last":
            model.to(memory_format=torch.channels_last)
            model.channels_last = True
        models[name] = model
    for model in models.values():
        model.to(device).train()
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512, help="shorter image side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype (GPU)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="apply mrcnn.runtime.keep_freed_memory() to this process (all variants), as `mrcnn train` "
                             "does on CPUs")
    args = parser.parse_args()
    if args.keep_freed_memory and not runtime.keep_freed_memory():
        parser.error("keep_freed_memory() does not apply here (not glibc, or MRCNN_KEEP_FREED_MEMORY=0)")
    device = torch.device(args.device)
    models = {name: model for name, model in build(args.size, device).items() if name in args.variants}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4) for name, model in models.items()}
    scaler = torch.amp.GradScaler(device.type) if args.dtype == "fp16" else None
    images, targets = make_batch(args.batch, args.size, device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, R50-FPN, {args.size} px, batch {args.batch}, "
          f"{args.dtype}, {args.iters} timed steps after {args.warmup} warm-up, freed memory kept: {runtime.freed_memory_kept()}",
          flush=True)

    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.warmup + args.iters):
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            train_step(model, images, targets, optimizer=optimizers[name], step=step, scaler=scaler,
                       autocast_dtype=DTYPES[args.dtype])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times[args.variants[0]])
    print(f"\n| variant | seconds per step (median) | min-max | images/s | speed-up vs {args.variants[0]} |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {min(values):.3f}-{max(values):.3f} | {args.batch / med:.2f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
