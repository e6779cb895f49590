"""The model's resize switch for training batches whose sizes the augmentation chose."""

from __future__ import annotations

import torch

from mrcnn.config import get_preset
from mrcnn.modeling import build_model


def test_skip_resize_in_training_keeps_the_sizes_and_eval_still_resizes():
    cfg = get_preset("r18_fpn_small").replace(**{"model.input.min_size": [96], "model.input.max_size": 160})
    model = build_model(cfg)
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 30)]
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0]]), "labels": torch.tensor([1])} for _ in images]
    model.train()
    assert not model.skip_resize_in_training
    resized, _ = model.transform(images, targets)
    assert resized.image_sizes == [(96, 144), (160, 96)]
    model.skip_resize_in_training = True
    kept, kept_targets = model.transform(images, targets)
    assert kept.image_sizes == [(40, 60), (50, 30)]
    torch.testing.assert_close(kept_targets[0]["boxes"], targets[0]["boxes"], rtol=0, atol=0)
    model.eval()  # inference is unchanged
    evaluated, _ = model.transform(images)
    assert evaluated.image_sizes == resized.image_sizes
