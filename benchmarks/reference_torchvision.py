"""The issue's reference point: a plain single-process torchvision Mask R-CNN loop, on our data.

    python benchmarks/reference_torchvision.py --data DIR --seconds 300 [--ours] [--override JSON]
    python benchmarks/reference_torchvision.py --data DIR --iters 262 --device cuda [--ours]

``--iters`` trains a fixed number of steps instead of a time budget (the lr still drops at 80%), so
learning per step can be compared on a fast machine.

``DIR`` holds ``train/`` and ``val/`` (``annotations.json`` + ``images/``), e.g. the ``data``
folder of a ``mrcnn demo`` workdir or the output of ``mrcnn synth``. The torchvision side is the
issue's lean recipe of ``torchvision.models.detection.MaskRCNN``: a ResNet-18-FPN with 128 FPN
channels (random init, trainable BatchNorm, all layers trainable), anchors 16..256 (one size per
level P2..P6, ratios 0.5/1/2), 128 sampled RoIs per image, a 256-wide box MLP, a 4 x conv-128 mask
head; 128 px, batch 8, AdamW lr 1e-3 with 100 warm-up iterations, lr x0.1 at 80% of the budget,
channels_last. (torchvision's full-size heads, 256 channels and 512 RoIs, train ~5x slower on a
CPU: 0.88 images/s against 4.15 here, so they are no fair reference for a CPU budget.) ``--ours`` trains our ``r18_fpn_small`` preset with the same loop,
data and budget instead. Both are evaluated with ``mrcnn.evaluation`` on the val split. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrcnn.modeling.mask_rcnn import ModelOutput


class TorchvisionAdapter(nn.Module):
    """Gives torchvision's MaskRCNN our ``ModelOutput`` interface, so one loop drives both."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, targets=None) -> ModelOutput:
        if self.training:
            return ModelOutput(self.model(images, targets), [])
        return ModelOutput({}, self.model(images))


LEAN_CHANNELS = 128  # FPN, RPN head and mask head width
LEAN_BOX_MLP = 256
LEAN_ROIS_PER_IMAGE = 128
LEAN_ANCHOR_SIZES = (16, 32, 64, 128, 256)


def torchvision_r18_fpn(num_classes: int, size: int) -> nn.Module:
    """The lean torchvision Mask R-CNN (see the module docstring) for ``num_classes`` incl. background."""
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512],
        out_channels=LEAN_CHANNELS,
    )
    anchors = AnchorGenerator(tuple((s,) for s in LEAN_ANCHOR_SIZES), ((0.5, 1.0, 2.0),) * len(LEAN_ANCHOR_SIZES))
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=size,
        max_size=size,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(LEAN_CHANNELS * 7 * 7, LEAN_BOX_MLP),
        box_predictor=FastRCNNPredictor(LEAN_BOX_MLP, num_classes),
        box_batch_size_per_image=LEAN_ROIS_PER_IMAGE,
        mask_head=MaskRCNNHeads(LEAN_CHANNELS, [LEAN_CHANNELS] * 4, 1),
        mask_predictor=MaskRCNNPredictor(LEAN_CHANNELS, LEAN_CHANNELS, num_classes),
    )


class LossPrinter:
    """A ``fit`` hook: one stderr line every ``every`` steps (step, seconds so far, total loss)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, state, losses: dict[str, float]) -> None:
        if state.iteration % self.every == 0:
            print(f"step {state.iteration} {state.elapsed_s:.0f}s loss {losses['loss']:.3f}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--iters", type=int, default=None, help="train this many steps instead of --seconds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--ours", action="store_true", help="train our r18_fpn_small preset instead")
    parser.add_argument("--override", default="{}", help="JSON overrides for our preset (with --ours)")
    parser.add_argument("--warmup-iters", type=int, default=100,
                        help="warm-up steps of either loop (default 100, the preset's); scale it with a short --iters")
    parser.add_argument("--log-every", type=int, default=0, help="print the loss to stderr every N steps (0: never)")
    args = parser.parse_args()

    from mrcnn.config import SolverConfig, get_preset
    from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
    from mrcnn.data.transforms import RandomHorizontalFlip
    from mrcnn.engine import evaluate_model, fit
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer

    torch.manual_seed(0)
    train = CocoInstanceDataset.from_files(
        args.data / "train" / "annotations.json", args.data / "train" / "images", transforms=RandomHorizontalFlip(0.5)
    )
    val = CocoInstanceDataset.from_files(args.data / "val" / "annotations.json", args.data / "val" / "images")
    if args.ours:
        overrides = {"solver.batch_size": args.batch, "solver.warmup_iters": args.warmup_iters, **json.loads(args.override)}
        cfg = get_preset("r18_fpn_small").replace(**overrides)
        model, solver = build_model(cfg), cfg.solver
    else:
        model = TorchvisionAdapter(torchvision_r18_fpn(len(train.categories) + 1, args.size))
        solver = SolverConfig(
            optimizer="adamw", base_lr=1e-3, reference_batch_size=8, batch_size=args.batch, weight_decay=1e-4,
            warmup_iters=args.warmup_iters, warmup_factor=0.001, steps=(0.8,), gamma=0.1, clip_grad_norm=None,
        )
    model = model.to(args.device, memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.batch, shuffle=True, collate_fn=collate_detection, drop_last=True
    )
    state = fit(
        model, loader, build_optimizer(model, solver), solver, device=args.device,
        max_iters=args.iters or 10**6, max_seconds=None if args.iters else args.seconds,
        hooks=[LossPrinter(args.log_every)] if args.log_every else (),
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=collate_detection)
    metrics = evaluate_model(
        model, val_loader, args.data / "val" / "annotations.json", val.categories, device=args.device
    )
    print(json.dumps({
        "model": "ours r18_fpn_small" if args.ours else "torchvision MaskRCNN r18-fpn",
        "override": json.loads(args.override) if args.ours else None,
        "seconds": round(state.elapsed_s, 1), "iterations": state.iteration, "device": args.device,
        "batch": args.batch, "warmup_iters": args.warmup_iters, "images_per_s": round(state.images_seen / state.elapsed_s, 2),
        "segm_AP": round(metrics["segm"]["AP"], 1), "segm_AP50": round(metrics["segm"]["AP50"], 1),
        "bbox_AP": round(metrics["bbox"]["AP"], 1),
    }), flush=True)


if __name__ == "__main__":
    main()
