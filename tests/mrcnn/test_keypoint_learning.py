"""A keypoint model learns: brief training on a few synthetic house images lifts OKS keypoint AP on them far
above an untrained model's (as tests/mrcnn/test_learning.py does for masks; held-out images need far longer
training: after these 40 steps their keypoint AP is still ~0; the demo's recipe, r18_fpn_small_keypoints, needs
180 steps of 8 images (408 CPU seconds of one core) for 52.9 on a 100-image holdout: benchmarks/RESULTS.md,
"Keypoint demo")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mrcnn.config import get_preset
from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
from mrcnn.data.synthetic_keypoints import make_synthetic_keypoints_coco
from mrcnn.engine import evaluate_model, fit
from mrcnn.modeling import build_model
from mrcnn.solver import build_optimizer

NUM_IMAGES = 6
ITERATIONS = 40  # measured: OKS AP 0.0 -> 60.1 (AP50 77.1); 84.1 after 60


@pytest.mark.slow
def test_brief_training_beats_an_untrained_model_on_oks_ap(tmp_path):
    info = make_synthetic_keypoints_coco(tmp_path, num_train=NUM_IMAGES, num_val=1, size=128, seed=1)
    train = info["train"]
    dataset = CocoInstanceDataset.from_files(train["annotations"], train["image_dir"])
    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(**{"model.task": "keypoints", "model.num_classes": 1})
    solver = dataclasses.replace(cfg.solver, batch_size=NUM_IMAGES, warmup_iters=20, steps=(0.85,))
    model = build_model(cfg).to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(dataset, batch_size=NUM_IMAGES, shuffle=True, collate_fn=collate_detection)
    eval_loader = torch.utils.data.DataLoader(dataset, batch_size=NUM_IMAGES, collate_fn=collate_detection)

    def evaluate():
        return evaluate_model(model, eval_loader, train["annotations"], dataset.categories, iou_types=cfg.model.iou_types)

    before = evaluate()
    state = fit(model, loader, build_optimizer(model, solver), solver, max_iters=ITERATIONS)
    after = evaluate()

    assert state.iteration == ITERATIONS
    first, last = state.history[0]["loss_keypoint"], state.history[-1]["loss_keypoint"]
    assert last < 0.6 * first, (first, last)  # from ~log(56^2) = 8.0
    assert before["keypoints"]["AP"] < 5.0, before["keypoints"]
    assert after["keypoints"]["AP"] > 30.0, after["keypoints"]
    assert after["keypoints"]["AP50"] > 50.0, after["keypoints"]
