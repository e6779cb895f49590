"""LR schedule, optimizer parameter groups, and the training step's non-finite loss error."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mrcnn.config import SolverConfig, get_preset
from mrcnn.engine import HookBase, NonFiniteLossError, fit, train_step
from mrcnn.modeling import ModelOutput, build_model
from mrcnn.solver import build_optimizer, lr_factor, set_lr

SOLVER = SolverConfig(warmup_iters=100, warmup_factor=0.01, steps=(0.5, 0.75), gamma=0.1, max_iters=1000)


def test_warmup_is_linear_from_warmup_factor_to_one():
    factors = [lr_factor(SOLVER, iteration=i, progress=i / SOLVER.max_iters) for i in range(101)]
    assert factors[0] == pytest.approx(0.01)
    assert factors[50] == pytest.approx(0.01 + 0.99 * 0.5)
    assert factors[100] == 1.0
    steps = [b - a for a, b in zip(factors, factors[1:])]
    assert all(s == pytest.approx(0.99 / 100) for s in steps)  # constant slope: linear
    assert lr_factor(SOLVER, iteration=400, progress=0.4) == 1.0


def test_step_decay_by_gamma_at_each_fraction():
    assert lr_factor(SOLVER, iteration=499, progress=0.499) == 1.0
    assert lr_factor(SOLVER, iteration=500, progress=0.5) == pytest.approx(0.1)
    assert lr_factor(SOLVER, iteration=749, progress=0.749) == pytest.approx(0.1)
    assert lr_factor(SOLVER, iteration=750, progress=0.75) == pytest.approx(0.01)
    assert lr_factor(SOLVER, iteration=999, progress=0.999) == pytest.approx(0.01)
    # Progress, not the iteration, places the steps (a time-budgeted run), and warm-up still applies.
    assert lr_factor(SOLVER, iteration=10, progress=0.6) == pytest.approx((0.01 + 0.99 * 0.1) * 0.1)
    paper = SolverConfig()  # 60k and 80k of 90k
    assert lr_factor(paper, iteration=59_999, progress=59_999 / 90_000) == 1.0
    assert lr_factor(paper, iteration=60_000, progress=60_000 / 90_000) == pytest.approx(0.1)
    assert lr_factor(paper, iteration=80_000, progress=80_000 / 90_000) == pytest.approx(0.01)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv_no_bias = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_build_optimizer_groups(optimizer):
    net = _Net()
    cfg = SolverConfig(optimizer=optimizer, base_lr=0.02, reference_batch_size=16, weight_decay=1e-4, momentum=0.9)
    opt = build_optimizer(net, cfg, total_batch_size=8)
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}
    assert ids(decay["params"]) == ids([net.conv.weight, net.conv_no_bias.weight, net.fc.weight])
    assert ids(no_decay["params"]) == ids(
        [net.conv.bias, net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias, net.ln.weight, net.ln.bias, net.fc.bias]
    )
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(0.01) and group["initial_lr"] == pytest.approx(0.01)
    if optimizer == "sgd":
        assert decay["momentum"] == 0.9
    assert set_lr(opt, 0.5) == pytest.approx(0.005)
    assert all(g["lr"] == pytest.approx(0.005) for g in opt.param_groups)


def test_build_optimizer_on_a_real_model_excludes_exactly_norms_and_biases():
    model = build_model(get_preset("r18_fpn_small"))
    opt = build_optimizer(model, get_preset("r18_fpn_small").solver)
    decay, no_decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert decay | no_decay == {id(p) for p in trainable} and not decay & no_decay
    # In this model every 1-D parameter is a norm weight/bias or a bias, every other one a conv/fc weight.
    assert no_decay == {id(p) for p in trainable if p.ndim == 1}


class _FakeModel(nn.Module):
    """Returns ModelOutput like MaskRCNN; ``loss_mask`` is NaN when ``nan`` is set."""

    def __init__(self, nan: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.nan = nan

    def forward(self, images, targets):
        loss_mask = self.weight * (float("nan") if self.nan else 0.5)
        return ModelOutput(losses={"loss_classifier": self.weight**2, "loss_mask": loss_mask}, detections=[])


def test_non_finite_loss_names_step_and_losses_and_updates_nothing():
    model = _FakeModel(nan=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError) as info:
        train_step(model, [torch.zeros(3, 4, 4)], [{}], optimizer=opt, step=17)
    message = str(info.value)
    assert "step 17" in message
    assert "loss_classifier=4" in message and "loss_mask=nan" in message and "loss=nan" in message
    assert isinstance(info.value, FloatingPointError)
    assert model.weight.item() == 2.0 and model.weight.grad is None


def test_infinite_loss_also_raises():
    class Inf(_FakeModel):
        def forward(self, images, targets):
            return ModelOutput(losses={"loss_box_reg": self.weight * float("inf")}, detections=[])

    with pytest.raises(NonFiniteLossError, match="step 3: loss_box_reg=inf"):
        train_step(Inf(nan=False), [torch.zeros(3, 4, 4)], [{}], optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1), step=3)


def test_finite_step_returns_losses_and_updates():
    model = _FakeModel(nan=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    values = train_step(model, [torch.zeros(3, 4, 4)], [{}], optimizer=opt, step=0)
    assert values == {"loss_classifier": 4.0, "loss_mask": 1.0, "loss": 5.0}
    # d/dw (w^2 + 0.5 w) = 2w + 0.5 = 4.5
    assert model.weight.item() == pytest.approx(2.0 - 0.1 * 4.5)


def test_clip_grad_norm_is_applied():
    model = _FakeModel(nan=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, [torch.zeros(3, 4, 4)], [{}], optimizer=opt, step=0, clip_grad_norm=1.0)
    assert model.weight.item() == pytest.approx(2.0 - 0.1 * 1.0, rel=1e-5)


def test_fit_follows_the_schedule_and_calls_hooks():
    model = _FakeModel(nan=False)
    solver = SolverConfig(base_lr=0.1, reference_batch_size=1, batch_size=1, warmup_iters=2, warmup_factor=0.5, steps=(0.5,), gamma=0.1, max_iters=4)
    opt = build_optimizer(model, solver)
    seen = []

    class Hook(HookBase):
        def after_step(self):
            seen.append((self.trainer.state.iteration, self.trainer.losses["loss"]))

    loader = [([torch.zeros(3, 4, 4)], [{}])]
    state = fit(model, loader, opt, solver, hooks=[Hook()])
    assert state.iteration == 4 and state.images_seen == 4
    expected_lrs = [0.1 * lr_factor(solver, iteration=i, progress=i / 4) for i in range(4)]
    assert [h["lr"] for h in state.history] == pytest.approx(expected_lrs)
    assert expected_lrs == pytest.approx([0.05, 0.075, 0.01, 0.01])
    assert [i for i, _ in seen] == [1, 2, 3, 4]
    assert all(math.isfinite(loss) for _, loss in seen)


def test_fit_with_empty_data_raises():
    model = _FakeModel(nan=False)
    with pytest.raises(ValueError, match="training data is empty"):
        fit(model, [], build_optimizer(model, SolverConfig()), SolverConfig(max_iters=2))


def test_non_finite_mask_loss_of_a_real_model(monkeypatch):
    import mrcnn.modeling.roi_heads as roi_heads_module

    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(**{"model.input.min_size": [64], "model.input.max_size": 96})
    model = build_model(cfg).train()
    real_loss = roi_heads_module.mask_rcnn_loss
    monkeypatch.setattr(roi_heads_module, "mask_rcnn_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[0, 10:40, 10:50] = 1
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2]), "masks": masks}]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, cfg.solver)
    with pytest.raises(NonFiniteLossError, match=r"step 5: .*loss_mask=nan"):
        train_step(model, [torch.rand(3, 64, 80)], targets, optimizer=opt, step=5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
