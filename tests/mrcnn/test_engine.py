"""The training step's mixed-precision paths (bf16 autocast, fp16 + GradScaler), run on the CPU; the
training loop (Trainer), its state and its hooks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mrcnn.config import get_preset
from mrcnn.data.dataset import CocoInstanceDataset, collate_detection
from mrcnn.engine import (
    BestModel,
    Checkpointer,
    EarlyStopping,
    Evaluation,
    HookBase,
    LRSchedule,
    MetricLogger,
    NonFiniteLossError,
    PeriodicEvaluation,
    Trainer,
    TrainState,
    run_evaluation,
    train_step,
)
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


# ------------------------------------------------------------------ the loop and its hooks
class _Quadratic(torch.nn.Module):
    """Returns ModelOutput like MaskRCNN: loss = w^2 (+ NaN from step ``nan_at`` on)."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0))
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, images, targets):
        from mrcnn.modeling import ModelOutput

        self.calls += 1
        loss = self.weight**2 * (float("nan") if self.nan_at is not None and self.calls > self.nan_at else 1.0)
        return ModelOutput(losses={"loss_classifier": loss}, detections=[])


def _loader(num_batches: int, batch_size: int = 2):
    """``num_batches`` batches of blank images; image ids 10 * batch + index."""
    return [([torch.zeros(3, 4, 4)] * batch_size, [{"image_id": 10 * b + i} for i in range(batch_size)])
            for b in range(num_batches)]  # fmt: skip


class _Recorder(HookBase):
    def __init__(self, calls: list):
        self.calls = calls

    def before_train(self):
        self.calls.append(("before_train", self.trainer.state.iteration))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.state.iteration))

    def after_step(self):
        self.calls.append(("after_step", self.trainer.state.iteration))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.state.iteration))

    def on_failure(self, exc):
        self.calls.append(("on_failure", type(exc).__name__))


def test_trainer_runs_hooks_around_each_step_and_counts_epochs():
    model = _Quadratic()
    trainer = Trainer(model, _loader(2), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=5, world_size=3)
    calls: list = []
    seen_ids = []
    trainer.register_hooks([_Recorder(calls), None])

    class Ids(HookBase):
        def after_step(self):
            seen_ids.append((self.trainer.state.epoch, [t["image_id"] for t in self.trainer.batch[1]]))

    trainer.register_hooks([Ids()])
    state = trainer.train()
    assert calls[0] == ("before_train", 0) and calls[-1] == ("after_train", 5)
    assert calls[1:-1] == [(name, i) for i in range(5) for name, i in (("before_step", i), ("after_step", i + 1))]
    assert state.iteration == 5 and state.images_seen == 5 * 2 * 3  # every replica's batch counts
    assert seen_ids == [(0, [0, 1]), (0, [10, 11]), (1, [0, 1]), (1, [10, 11]), (2, [0, 1])]
    assert [r["iteration"] for r in state.history] == [1, 2, 3, 4, 5]
    for record in state.history:
        assert record["step_s"] > 0 and record["data_wait_s"] >= 0
        assert record["images_per_s"] == pytest.approx(6 / record["step_s"])
    assert state.elapsed_s > 0


def test_a_non_finite_loss_stops_the_loop_naming_the_step_and_calls_on_failure():
    model = _Quadratic(nan_at=2)
    trainer = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=10)
    calls: list = []
    trainer.register_hooks([_Recorder(calls)])
    with pytest.raises(NonFiniteLossError, match=r"at step 2: loss_classifier=nan"):
        trainer.train()
    assert calls[-1] == ("on_failure", "NonFiniteLossError")
    assert ("after_train", 2) not in calls and trainer.state.iteration == 2


def test_empty_data_raises():
    model = _Quadratic()
    with pytest.raises(ValueError, match="training data is empty"):
        Trainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), max_iters=2).train()


def test_time_budget_uses_the_synced_elapsed_time():
    model = _Quadratic()
    synced = []

    def sync(seconds):  # as if another rank were 100 s ahead
        synced.append(seconds)
        return seconds + 100.0

    trainer = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=10, max_seconds=150,
                      sync_elapsed=sync)  # fmt: skip
    assert trainer.train().iteration == 10 and 100 <= trainer.state.elapsed_s < 150  # the step budget came first
    assert len(synced) == 11  # before the loop and after every step
    trainer = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=10, max_seconds=50,
                      sync_elapsed=sync)  # fmt: skip
    assert trainer.train().iteration == 0  # 100 s > the budget before the first step


def test_train_state_round_trips_and_loads_the_old_key_names():
    state = TrainState(iteration=7, epoch=1, images_seen=28, elapsed_s=3.5, lr=0.01, best_metric=31.5,
                       best_metric_name="keypoints_AP", history=[{"iteration": 7, "loss": 1.0}])  # fmt: skip
    copy = TrainState()
    copy.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert copy == state
    # A loop state written before the rename (pipelines.train's 8-key dict): best_segm_ap is best_metric.
    old = {"iteration": 4, "elapsed_s": 2.0, "images_seen": 16, "history": [], "best_segm_ap": 12.5, "epoch": 1}
    resumed = TrainState()
    resumed.load_state_dict(old)
    assert (resumed.iteration, resumed.best_metric, resumed.epoch, resumed.images_seen) == (4, 12.5, 1, 16)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['mlflow_run_id'\]"):
        TrainState().load_state_dict({"iteration": 1, "mlflow_run_id": "abc"})


def test_a_resumed_trainer_continues_from_its_state():
    model = _Quadratic()
    first = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=3).train()
    state = TrainState()
    state.load_state_dict(first.state_dict())
    again = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=5, state=state).train()
    assert again.iteration == 5 and len(again.history) == 5 and again.images_seen == 10


def test_evaluation_best_and_checkpoint_hooks():
    """Evaluate every 2 steps and at the end; best follows a strictly higher AP; checkpoints see the updated best."""
    model = _Quadratic()
    aps = iter([10.0, 30.0, 20.0, 25.0])
    evaluated, saved = [], []

    def evaluate():
        ap = next(aps)
        evaluated.append(trainer.state.iteration)
        return {"bbox": {"AP": 99.0}, "segm": {"AP": ap, "per_category": {}}}

    best = BestModel("segm_AP")

    def save(t):
        saved.append((t.state.iteration, t.state.best_metric, best.improved))

    trainer = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=7)
    trainer.register_hooks([PeriodicEvaluation(evaluate, period=2), best, Checkpointer(save, period=2)])
    state = trainer.train()
    assert evaluated == [2, 4, 6, 7]  # not twice at the end
    assert saved == [(2, 10.0, True), (4, 30.0, True), (6, 30.0, False), (7, 30.0, False)]
    assert (state.best_metric, state.best_metric_name) == (30.0, "segm_AP")
    with pytest.raises(ValueError, match="expected <iou_type>_<statistic>"):
        BestModel("AP")


def test_lr_schedule_and_metric_logger_write_step_and_data_wait_times():
    from mrcnn.config import SolverConfig

    model = _Quadratic()
    solver = SolverConfig(base_lr=0.1, reference_batch_size=1, batch_size=1, warmup_iters=0, steps=(0.5,), gamma=0.1, max_iters=4)
    optimizer = build_optimizer(model, solver)
    written, lines = [], []
    trainer = Trainer(model, _loader(1, batch_size=1), optimizer, max_iters=4)
    trainer.register_hooks([LRSchedule(solver), MetricLogger(lambda m, step: written.append((step, dict(m))), period=2,
                                                             print_fn=lines.append)])  # fmt: skip
    trainer.train()
    assert [step for step, _ in written] == [1, 2, 3, 4]
    assert [m["train/lr"] for _, m in written] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    for _, metrics in written:
        assert {"train/loss", "train/loss_classifier", "train/step_s", "train/data_wait_s", "train/images_per_s"} <= set(metrics)
        assert "train/iteration" not in metrics
    assert [line.split()[2] for line in lines] == ["1", "2", "4"]
    assert all(line.startswith("[train] iteration") and " data " in line and " step " in line for line in lines)
    # period 3 of 5 steps, resumed after step 1: the launch's first step, every 3rd, and the last.
    lines.clear()
    resumed = Trainer(model, _loader(1, batch_size=1), optimizer, max_iters=5, state=TrainState(iteration=1))
    resumed.register_hooks([MetricLogger(None, period=3, print_fn=lines.append)])
    resumed.train()
    assert [line.split()[2] for line in lines] == ["2", "3", "5"]


def test_early_stopping_after_patience_evaluations_without_a_better_metric():
    """patience 2: evaluations at 1..4 give 10, 30, 20, 25: 30 stays best for two evaluations, so the loop
    stops at 4 of 10 steps; the final hooks still run, without a second evaluation at step 4."""
    model = _Quadratic()
    aps = iter([10.0, 30.0, 20.0, 25.0, 40.0])
    evaluated, saved, lines = [], [], []

    def evaluate():
        evaluated.append(trainer.state.iteration)
        return Evaluation(metrics={"segm": {"AP": next(aps)}}, losses={"loss": 1.0, "loss_mask": 1.0})

    best = BestModel("segm_AP")
    trainer = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=10)
    trainer.register_hooks([PeriodicEvaluation(evaluate, period=1), best, EarlyStopping(best, 2, print_fn=lines.append),
                            Checkpointer(lambda t: saved.append((t.state.iteration, best.improved)), period=0)])  # fmt: skip
    state = trainer.train()
    assert evaluated == [1, 2, 3, 4] and state.iteration == 4
    assert (state.best_metric, state.evals_since_best) == (30.0, 2)
    assert saved == [(4, False)]  # after_train ran once, and the stop's evaluation set no new best
    assert lines == ["[train] early stopping at iteration 4: 2 evaluations without a better segm_AP than 30.00"]
    assert trainer.stop_reason.startswith("early stopping at iteration 4")
    with pytest.raises(ValueError, match="patience must be >= 1"):
        EarlyStopping(best, 0)


def test_a_stop_asked_by_another_replica_stops_every_replica_at_the_same_step():
    model = _Quadratic()
    asked = []

    def sync_stop(stop):  # as if another rank asked to stop after step 3
        asked.append(stop)
        return len(asked) > 3

    trainer = Trainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=10, sync_stop=sync_stop)
    assert trainer.train().iteration == 3
    assert asked == [False] * 4 and trainer.stop_reason == "another replica asked to stop"


def test_validation_losses_come_with_every_evaluation(synth_dataset):
    """run_evaluation: the model's eval-mode losses with the ground truth, a mean per image, beside the COCO
    metrics from the same forward passes; the MetricLogger writes them as val/* at every evaluation."""
    from mrcnn.data.categories import CategoryMap
    from mrcnn.engine.evaluation import predict_coco_results

    dataset = CocoInstanceDataset.from_files(synth_dataset / "val" / "annotations.json", synth_dataset / "val" / "images")
    categories = CategoryMap.from_coco(json.loads((synth_dataset / "val" / "annotations.json").read_text()))
    images, targets = collate_detection([dataset[i] for i in range(3)])
    torch.manual_seed(0)
    cfg = get_preset("r18_fpn_small").replace(**{"model.num_classes": categories.num_classes})
    model = build_model(cfg)
    batches = [(images[:2], targets[:2]), (images[2:], targets[2:])]
    gt = str(synth_dataset / "val" / "annotations.json")
    evaluation = run_evaluation(model, batches, gt, categories)
    assert set(evaluation.metrics) == {"bbox", "segm"} and not model.training
    assert set(evaluation.losses) == {"loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(math.isfinite(v) and v > 0 for v in evaluation.losses.values())
    assert evaluation.losses["loss"] == pytest.approx(sum(v for k, v in evaluation.losses.items() if k != "loss"))
    # The detections are those of a forward without targets: the losses change nothing of them.
    assert evaluation.results and evaluation.results == predict_coco_results(model, batches, categories)
    assert {r["image_id"] for r in evaluation.results} <= {int(t["image_id"]) for t in targets}

    written, lines = [], []
    trainer = Trainer(_Quadratic(), _loader(1), torch.optim.SGD(model.parameters(), lr=0.1), max_iters=3)
    trainer.register_hooks([PeriodicEvaluation(lambda: evaluation, period=2),
                            MetricLogger(lambda m, step: written.append((step, dict(m))), period=0, print_fn=lines.append)])  # fmt: skip
    trainer.train()
    val = [(step, m) for step, m in written if any(k.startswith("val/") for k in m)]
    assert [step for step, _ in val] == [2, 3]  # the periodic evaluation and the final one
    assert val[0][1] == {f"val/{k}": v for k, v in evaluation.losses.items()}
    assert len(lines) == 2 and lines[0].startswith("[train] evaluation at iteration 2: bbox AP ") and "val loss" in lines[0]
