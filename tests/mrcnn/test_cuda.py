"""CUDA paths: the predictor on a GPU agrees with the CPU, and AMP training steps run (GPU machines only)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import PHOTO

pytestmark = pytest.mark.needs_cuda


def test_predictor_on_cuda_matches_cpu(small_checkpoint, monkeypatch):
    """Same detections on both devices. A random model gives many near-tied scores, so detections are
    compared as sets (matched by label and IoU), not by rank; TF32 is off so the convolutions agree."""
    from torchvision.ops import box_iou

    from mrcnn.data.images import load_image
    from mrcnn.predictor import Predictor

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    image = load_image(PHOTO)
    cpu = Predictor.from_checkpoint(small_checkpoint, score_threshold=0.0).predict_raw([image])[0]
    gpu = Predictor.from_checkpoint(small_checkpoint, score_threshold=0.0, device="cuda").predict_raw([image])[0]
    assert len(cpu["scores"]) == len(gpu["scores"]) > 0
    torch.testing.assert_close(gpu["scores"].sort().values, cpu["scores"].sort().values, rtol=0, atol=1e-3)
    top = 10
    iou = box_iou(gpu["boxes"][:top], cpu["boxes"])  # [top, D]
    same_label = gpu["labels"][:top, None] == cpu["labels"][None, :]
    matched = ((iou > 0.95) & same_label).any(dim=1)
    assert matched.float().mean() >= 0.9, matched


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_train_step_on_cuda(synth_dataset, dtype):
    from mrcnn.config import get_preset
    from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
    from mrcnn.engine import train_step
    from mrcnn.modeling import build_model
    from mrcnn.solver import build_optimizer

    dataset = CocoInstanceDataset.from_files(synth_dataset / "train" / "annotations.json", synth_dataset / "train" / "images")
    images, targets = collate_detection([dataset[i] for i in range(4)])
    images = [img.cuda() for img in images]
    targets = [{k: v.cuda() if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    cfg = get_preset("r18_fpn_small")
    model = build_model(cfg).cuda().train()
    optimizer = build_optimizer(model, cfg.solver)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    for step in range(5):
        losses = train_step(model, images, targets, optimizer=optimizer, step=step, scaler=scaler, autocast_dtype=dtype)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
