"""Per-step metrics sent to MLflow in batches: one ``log_batch`` per K steps or N seconds, not one per step.

Training logs about ten ``train/*`` numbers every step. Sent one step at a time, that is a synchronous round
trip to the tracking store (a SQLite write, or an HTTP request to a server) in the loop's thread at every
step: at 5+ steps/s on a GPU, a noticeable part of the step. :class:`MetricBuffer` keeps each value with its
own step and the time it was logged, and sends them together; the run's metric history in MLflow is the same
as with per-step logging.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.tracking.run import Tracker

__all__ = ["MetricBuffer"]


class MetricBuffer:
    """Gathers ``log(metrics, step)`` calls and sends them to the tracker's run in batches.

    Args:
        tracker: the run they go to (:meth:`Tracker.log_metric_entries` sends them).
        max_steps: send when this many ``log`` calls are waiting (>= 1; 1: every call, as unbuffered).
        max_seconds: send at the first ``log`` at least this many seconds after the last send, so a slow run's
            curves still move in the UI.
        clock: seconds, monotonic (a test's fake clock).

    Every value keeps its step and its own timestamp (milliseconds, when ``log`` was called), so the
    metric history is exactly what :meth:`Tracker.log_metrics` per call gives. Values are checked at
    ``log`` (a non-number raises there, naming the key and step), not later at the send.

    Whoever owns the buffer calls :meth:`flush` where the history must be complete: at evaluations,
    checkpoints, the end of training and on failure (:class:`pipelines.train.hooks.MlflowTracking`). Metrics
    still waiting when the process is killed are lost; the steps after the last checkpoint, which a
    resumed run trains again, are the most that can be.
    """

    def __init__(self, tracker: Tracker, *, max_steps: int = 50, max_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        if max_steps < 1 or max_seconds < 0:
            raise ValueError(f"MetricBuffer: max_steps must be >= 1 and max_seconds >= 0, got {max_steps} and {max_seconds}")
        self.tracker = tracker
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.clock = clock
        self._entries: list[Any] = []  # mlflow.entities.Metric
        self._calls = 0
        self._sent_at = clock()

    def __len__(self) -> int:
        """Metric values waiting to be sent."""
        return len(self._entries)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Queue scalar metrics at ``step`` (as :meth:`Tracker.log_metrics`: keys sanitized, None skipped);
        sends everything waiting when ``max_steps`` calls are queued or ``max_seconds`` have passed.

        Raises:
            ValueError: a value is not a number (names the key and the step).
        """
        self._entries.extend(self.tracker.metric_entries(metrics, step))
        self._calls += 1
        if self._calls >= self.max_steps or self.clock() - self._sent_at >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        """Send every queued value now (nothing to send: no call to the store)."""
        entries, self._entries, self._calls = self._entries, [], 0
        self._sent_at = self.clock()
        if entries:
            self.tracker.log_metric_entries(entries)
