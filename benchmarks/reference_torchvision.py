"""The issue's reference point: a plain single-process torchvision Mask R-CNN loop, on our data.

    python benchmarks/reference_torchvision.py --data DIR --seconds 300 [--ours] [--override JSON]
    python benchmarks/reference_torchvision.py --data DIR --iters 262 --device cuda [--ours]

``--iters`` trains a fixed number of steps instead of a time budget (the lr still drops at 80%), so
learning per step can be compared on a fast machine.

``DIR`` holds ``train/`` and ``val/`` (``annotations.json`` + ``images/``), e.g. the ``data``
folder of a ``mrcnn demo`` workdir or the output of ``mrcnn synth``. The torchvision side is
``torchvision.models.detection.MaskRCNN`` on a ResNet-18-FPN (random init, trainable BatchNorm,
all layers trainable), 128 px, batch 8, AdamW lr 1e-3 with 100 warm-up iterations, lr x0.1 at 80%
of the budget, channels_last. ``--ours`` trains our ``r18_fpn_small`` preset with the same loop,
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


def torchvision_r18_fpn(num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    return MaskRCNN(backbone, num_classes=num_classes, min_size=size, max_size=size)


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
        overrides = {"solver.batch_size": args.batch, **json.loads(args.override)}
        cfg = get_preset("r18_fpn_small").replace(**overrides)
        model, solver = build_model(cfg), cfg.solver
    else:
        model = TorchvisionAdapter(torchvision_r18_fpn(len(train.categories) + 1, args.size))
        solver = SolverConfig(
            optimizer="adamw", base_lr=1e-3, reference_batch_size=8, batch_size=args.batch, weight_decay=1e-4,
            warmup_iters=100, warmup_factor=0.001, steps=(0.8,), gamma=0.1, clip_grad_norm=None,
        )
    model = model.to(args.device, memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.batch, shuffle=True, collate_fn=collate_detection, drop_last=True
    )
    state = fit(
        model, loader, build_optimizer(model, solver), solver, device=args.device,
        max_iters=args.iters or 10**6, max_seconds=None if args.iters else args.seconds,
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=8, collate_fn=collate_detection)
    metrics = evaluate_model(
        model, val_loader, args.data / "val" / "annotations.json", val.categories, device=args.device
    )
    print(json.dumps({
        "model": "ours r18_fpn_small" if args.ours else "torchvision MaskRCNN r18-fpn",
        "override": json.loads(args.override) if args.ours else None,
        "seconds": round(state.elapsed_s, 1), "iterations": state.iteration, "device": args.device,
        "batch": args.batch, "images_per_s": round(state.images_seen / state.elapsed_s, 2),
        "segm_AP": round(metrics["segm"]["AP"], 1), "segm_AP50": round(metrics["segm"]["AP50"], 1),
        "bbox_AP": round(metrics["bbox"]["AP"], 1),
    }), flush=True)


if __name__ == "__main__":
    main()
