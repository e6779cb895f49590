"""Prepare the next batches in background threads while the model computes the current one.

A training step on a GPU leaves the host's CPUs idle; decoding JPEGs and RLE masks (about 15 ms per
640x480 COCO image on one core), augmenting and resizing can run there, ahead of the loop. PIL's decoders,
pycocotools' RLE decoder and torch's resize release the GIL, so threads of one process run them in
parallel without copying the batch between processes.

``Prefetcher(source, fn)`` yields ``fn(item)`` for every item of ``source``, **in source order**, with
``fn`` running ``depth`` items ahead in ``num_threads`` threads that the prefetcher owns (and stops when
iteration ends, fails or is abandoned). Nothing random is shared between the threads: a function that needs
randomness takes it from its item (for example a per-batch seed), so the results do not depend on
``num_threads``: ``num_threads=0`` runs ``fn`` in the caller's thread and gives the same items.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")
U = TypeVar("U")

_END = object()


class Prefetcher(Generic[T, U]):
    """An iterable of ``fn(item)`` for the items of ``source``, prepared ahead in background threads.

    Args:
        source: the raw items (e.g. Ray Data numpy batches of encoded images and RLE masks). It is read
            in one background thread, so its own latency is off the caller's path too.
        fn: turns one raw item into what the loop consumes (e.g. decode + augment + collate).
        num_threads: threads running ``fn``; 0 runs ``fn`` in the caller's thread, nothing ahead.
        depth: items prepared (or being prepared) ahead of the caller; at least ``num_threads``.

    Attributes:
        last_wait_s (float): seconds the caller waited for the item it got last (0 when it was ready).
        total_wait_s (float): the sum of the waits so far.

    An exception raised by ``source`` or ``fn`` is raised to the caller at the item where it happened,
    after every earlier item.
    """

    def __init__(self, source: Iterable[T], fn: Callable[[T], U], *, num_threads: int = 2, depth: int = 4) -> None:
        if num_threads < 0:
            raise ValueError(f"num_threads: expected >= 0, got {num_threads}")
        self.source = source
        self.fn = fn
        self.num_threads = num_threads
        self.depth = max(depth, num_threads, 1)
        self.last_wait_s = 0.0
        self.total_wait_s = 0.0

    def __iter__(self) -> Iterator[U]:
        if self.num_threads == 0:
            yield from self._inline()
        else:
            yield from self._threaded()

    def _inline(self) -> Iterator[U]:
        iterator = iter(self.source)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            result = self.fn(item)
            self._waited(time.perf_counter() - start)
            yield result

    def _threaded(self) -> Iterator[U]:
        pending: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="mrcnn-prefetch")

        def feed() -> None:
            try:
                for item in self.source:
                    future = pool.submit(self.fn, item)
                    while not stop.is_set():
                        try:
                            pending.put(future, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        future.cancel()
                        return
                _put_until_stopped(pending, _END, stop)
            except BaseException as exc:  # delivered to the caller in order
                failed: Future = Future()
                failed.set_exception(exc)
                _put_until_stopped(pending, failed, stop)

        feeder = threading.Thread(target=feed, name="mrcnn-prefetch-feed", daemon=True)
        feeder.start()
        try:
            while True:
                start = time.perf_counter()
                future = pending.get()
                if future is _END:
                    return
                result = future.result()
                self._waited(time.perf_counter() - start)
                yield result
        finally:
            stop.set()
            while True:  # unblock the feeder and drop what was prepared ahead
                try:
                    leftover = pending.get_nowait()
                except queue.Empty:
                    break
                if isinstance(leftover, Future):
                    leftover.cancel()
            feeder.join(timeout=1.0)  # a feeder blocked in its source (a Ray iterator at an epoch barrier) is a daemon
            pool.shutdown(wait=False, cancel_futures=True)

    def _waited(self, seconds: float) -> None:
        self.last_wait_s = seconds
        self.total_wait_s += seconds


def _put_until_stopped(pending: queue.Queue, item: object, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            pending.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
