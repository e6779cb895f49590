"""MetricBuffer: per-step metrics sent in batches give the same MLflow history as per-step logging, and
training's MLflow hook sends what is waiting at evaluations, checkpoints, the end and on failure."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pipelines.tracking import MAX_METRICS_PER_BATCH, MetricBuffer, Tracker
from pipelines.train.hooks import MlflowTracking
from tests.pipelines.tracking.readback import fresh_client


class FakeClient:
    """Records every ``log_batch`` call's metrics as (key, value, step, timestamp) tuples."""

    def __init__(self):
        self.batches: list[list[tuple[str, float, int, int]]] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        assert run_id == "run-1" and not params and not tags
        self.batches.append([(m.key, m.value, m.step, m.timestamp) for m in metrics])


def _tracker(client) -> Tracker:
    return Tracker(client, tracking_uri="fake://", run_id="run-1", experiment_id="0", resumed=False)


def _steps(num_steps: int):
    """What MetricLogger writes: train/* of every step, a val/* record at step 4, None (skipped) once."""
    for step in range(1, num_steps + 1):
        record = {"train/loss": 3.0 / step, "train/lr": 1e-3 * step, "train/step_s": 0.1 + step * 1e-3,
                  "train/data_wait_s": 0.0 if step % 2 else 0.25, "train/loss_mask": float(step), "train/nan": math.nan}  # fmt: skip
        if step == 3:
            record["train/loss_keypoint"] = None
        yield record, step
        if step == 4:
            yield {"val/loss": 1.5, "val/loss mask (a)": 0.5}, step


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_buffered_history_is_exactly_the_per_step_history(monkeypatch):
    times = iter(range(1_700_000_000, 1_700_001_000))
    # The tracker's clock only (not the time module's): one second per call.
    monkeypatch.setattr("pipelines.tracking.run.time", SimpleNamespace(time=lambda: float(next(times))))
    direct, buffered = FakeClient(), FakeClient()
    for metrics, step in _steps(9):
        _tracker(direct).log_metrics(metrics, step)
    clock = FakeClock()
    times = iter(range(1_700_000_000, 1_700_001_000))
    buffer = MetricBuffer(_tracker(buffered), max_steps=4, max_seconds=60.0, clock=clock)
    for metrics, step in _steps(9):
        buffer.log(metrics, step)
    assert len(buffered.batches) == 2 and len(buffer) == 2 * 6  # 10 calls: sent after the 4th and the 8th
    buffer.flush()
    buffer.flush()  # nothing left: no empty call
    assert len(direct.batches) == 10 and len(buffered.batches) == 3

    def flat(batches):
        return [entry for batch in batches for entry in batch]

    # Same keys (sanitized), values (NaN as NaN), steps and per-call timestamps, in the same order.
    assert len(flat(direct.batches)) == len(flat(buffered.batches)) == 9 * 6 + 2
    for got, want in zip(flat(buffered.batches), flat(direct.batches), strict=True):
        assert got[0] == want[0] and got[2:] == want[2:]
        assert got[1] == want[1] or (math.isnan(got[1]) and math.isnan(want[1]))
    assert ("val/loss mask _a_", 0.5) in {entry[:2] for entry in flat(buffered.batches)}
    assert [entry[2] for entry in buffered.batches[0]] == [1] * 6 + [2] * 6 + [3] * 6 + [4] * 6


def test_buffer_sends_after_max_seconds_and_splits_large_batches():
    client, clock = FakeClient(), FakeClock()
    buffer = MetricBuffer(_tracker(client), max_steps=1000, max_seconds=10.0, clock=clock)
    buffer.log({"a": 1.0}, 1)
    clock.now = 9.9
    buffer.log({"a": 2.0}, 2)
    assert client.batches == []
    clock.now = 10.0
    buffer.log({"a": 3.0}, 3)
    assert [[e[1:3] for e in batch] for batch in client.batches] == [[(1.0, 1), (2.0, 2), (3.0, 3)]]
    # More values than one log_batch takes: several calls, nothing lost.
    buffer.log({f"m{i}": float(i) for i in range(MAX_METRICS_PER_BATCH + 5)}, 4)
    buffer.flush()
    assert [len(batch) for batch in client.batches[1:]] == [MAX_METRICS_PER_BATCH, 5]
    with pytest.raises(ValueError, match="metric 'x' at step 5: expected a number"):
        buffer.log({"x": "fast"}, 5)
    with pytest.raises(ValueError, match="max_steps"):
        MetricBuffer(_tracker(client), max_steps=0)


class FakeTracker:
    def __init__(self):
        self.calls: list[str] = []

    def end(self, status):
        self.calls.append(f"end {status}")

    def log_eval(self, results, step):
        self.calls.append(f"eval {step}")

    def log_figure_loss_curves(self, history, path):
        self.calls.append("curves")


class FakeBuffer:
    def __init__(self, calls):
        self.calls = calls

    def flush(self):
        self.calls.append("flush")


def _hook(flush_every: int):
    tracker = FakeTracker()
    hook = MlflowTracking(tracker, metrics=FakeBuffer(tracker.calls), flush_every=flush_every)
    hook.trainer = SimpleNamespace(state=SimpleNamespace(iteration=0, history=[]), eval_iteration=-1, eval_results=None,
                                   evaluation=None)  # fmt: skip
    return hook, tracker.calls


def test_training_hook_flushes_at_checkpoints_evaluations_end_and_failure():
    hook, calls = _hook(flush_every=3)
    for iteration in range(1, 8):
        hook.trainer.state.iteration = iteration
        if iteration == 5:  # an evaluation at step 5: its step metrics first, then its AP
            hook.trainer.eval_iteration, hook.trainer.eval_results = 5, {"segm": {"AP": 1.0}}
        hook.after_step()
    assert calls == ["flush", "flush", "eval 5", "flush"]  # steps 3, 5, 6
    hook.after_train()
    assert calls[4:] == ["flush", "curves", "end FINISHED"]

    hook, calls = _hook(flush_every=0)
    hook.trainer.state.iteration = 2
    hook.after_step()
    hook.on_failure(RuntimeError("boom"))
    assert calls == ["flush", "end FAILED"]


def test_buffered_history_reads_back_from_mlflow(server):
    tracking_uri = server.tracking_uri  # the package's server (the embedded store takes the same log_batch)
    with Tracker.start(tracking_uri, "tracking-test", "buffered-metrics") as tracker:
        buffer = MetricBuffer(tracker, max_steps=3)
        for step in range(1, 8):
            buffer.log({"train/loss": 10.0 - step, "train/step_s": 0.01 * step}, step)
        buffer.flush()
        run_id = tracker.run_id
    client = fresh_client(tracking_uri)
    history = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(step, 10.0 - step) for step in range(1, 8)]
    assert client.get_run(run_id).data.metrics["train/step_s"] == pytest.approx(0.07)
