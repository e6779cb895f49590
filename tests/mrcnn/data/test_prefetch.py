"""mrcnn.data.prefetch.Prefetcher: order, equality with the inline path, errors, concurrency, clean stop."""

from __future__ import annotations

import random
import threading
import time

import pytest

from mrcnn.data.prefetch import Prefetcher


def _jittery_square(x: int) -> int:
    time.sleep(random.random() * 0.01)  # finish out of order
    return x * x


@pytest.mark.parametrize("num_threads", [0, 1, 3])
def test_results_come_in_source_order_and_equal_the_inline_path(num_threads):
    items = list(range(40))
    assert list(Prefetcher(items, _jittery_square, num_threads=num_threads, depth=5)) == [x * x for x in items]


def test_threads_run_fn_concurrently_up_to_num_threads():
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def work(x: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(timeout=5)
        with lock:
            running -= 1
        return x

    prefetcher = Prefetcher(range(12), work, num_threads=3, depth=6)
    iterator = iter(prefetcher)
    threading.Timer(0.3, release.set).start()
    assert next(iterator) == 0
    assert list(iterator) == list(range(1, 12))
    assert most == 3


def test_an_error_reaches_the_caller_after_every_earlier_item():
    def fn(x: int) -> int:
        if x == 5:
            raise ValueError("image 5: broken")
        return x

    got = []
    with pytest.raises(ValueError, match="image 5: broken"):
        for value in Prefetcher(range(10), fn, num_threads=2):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_an_error_in_the_source_reaches_the_caller_in_order():
    def source():
        yield 1
        yield 2
        raise OSError("shard 3 unreadable")

    got = []
    with pytest.raises(OSError, match="shard 3 unreadable"):
        for value in Prefetcher(source(), lambda x: x, num_threads=2):
            got.append(value)
    assert got == [1, 2]


def test_abandoning_the_iteration_stops_its_threads():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = {t.name for t in threading.enumerate()}
    iterator = iter(Prefetcher(endless(), lambda x: x, num_threads=2, depth=3))
    assert [next(iterator) for _ in range(5)] == [0, 1, 2, 3, 4]
    iterator.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = {t.name for t in threading.enumerate() if t.name.startswith("mrcnn-prefetch")} - before
        if not left:
            break
        time.sleep(0.05)
    assert not left


def test_wait_times_show_whether_the_loop_waited():
    slow = Prefetcher(range(3), lambda x: time.sleep(0.05) or x, num_threads=1, depth=1)
    list(slow)
    assert slow.total_wait_s > 0.05 and slow.last_wait_s > 0.0

    ready = Prefetcher(range(4), lambda x: x, num_threads=2, depth=4)
    iterator = iter(ready)
    next(iterator)
    time.sleep(0.1)  # the loop's "step": the rest is prepared meanwhile
    next(iterator)
    assert ready.last_wait_s < 0.05


def test_bad_thread_count_is_refused():
    with pytest.raises(ValueError, match="num_threads: expected >= 0, got -1"):
        Prefetcher([], lambda x: x, num_threads=-1)
