"""A stage's log lines and progress bars.

Log lines go to stderr as ``[stage] message``, once each, flushed. Progress bars are tqdm's, on stderr,
and stay quiet when stderr is not a terminal unless asked (CI logs and tests stay readable).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class StageLog:
    """``StageLog("segment")("3 images")`` prints ``[segment] 3 images`` to stderr."""

    def __init__(self, stage: str, *, prefix: str | None = None) -> None:
        self.stage = stage
        self.prefix = f"[{stage}] " if prefix is None else prefix

    def __call__(self, message: str) -> None:
        print(f"{self.prefix}{message}", file=sys.stderr, flush=True)


def progress(items: Iterable[T], *, desc: str, total: int | None = None, disable: bool | None = None) -> Iterator[T]:
    """``items`` wrapped in a tqdm bar on stderr.

    Args:
        desc: the bar's label (the stage and what it counts, e.g. ``"predict images"``).
        total: the number of items, when ``items`` has no ``len``.
        disable: None: show the bar only when stderr is a terminal.
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = not sys.stderr.isatty()
    return iter(tqdm(items, desc=desc, total=total, disable=disable, file=sys.stderr, dynamic_ncols=True))
