"""The training step's mixed-precision paths (bf16 autocast, fp16 + GradScaler), run on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from mrcnn.config import get_preset
from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
from mrcnn.engine import train_step
from mrcnn.modeling import build_model
from mrcnn.solver import build_optimizer


@pytest.fixture(scope="module")
def batch(synth_dataset):
    dataset = CocoInstanceDataset.from_files(synth_dataset / "train" / "annotations.json", synth_dataset / "train" / "images")
    return collate_detection([dataset[i] for i in range(2)])


@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16-scaler"])
def test_train_step_updates_parameters(batch, mode):
    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small")
    model = build_model(cfg).train()
    optimizer = build_optimizer(model, cfg.solver)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16-scaler": torch.float16}[mode]
    scaler = torch.amp.GradScaler("cpu") if mode == "fp16-scaler" else None
    before = model.roi_heads.mask_predictor.mask_fcn_logits.weight.detach().clone()
    images, targets = batch
    # A GradScaler skips the steps whose scaled gradients overflow fp16 and lowers its scale; allow a few.
    for step in range(1 if scaler is None else 20):
        losses = train_step(
            model, images, targets, optimizer=optimizer, step=step, scaler=scaler, autocast_dtype=autocast_dtype, clip_grad_norm=10.0
        )
        if not torch.equal(before, model.roi_heads.mask_predictor.mask_fcn_logits.weight):
            break
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss"}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["loss"] == pytest.approx(sum(v for k, v in losses.items() if k != "loss"), rel=1e-4)
    after = model.roi_heads.mask_predictor.mask_fcn_logits.weight.detach()
    assert not torch.equal(before, after), "the step must update the mask predictor"
