"""The one Ray-session policy of every stage.

- A driver already connected to Ray (a notebook, ``ray job submit``, a test's cluster) keeps its
  connection, and nothing here shuts it down.
- Otherwise connect to ``address`` (``--address``), else ``RAY_ADDRESS``; with neither, start a local
  Ray of this process's own (``address="local"``: never another process's local Ray, which this
  process would otherwise take down or depend on).
- At the end, disconnect only what this call connected; a local Ray started here stops with it.
- While a session started here lasts, Ray's own log lines (its driver loggers and the lines its workers
  print) go to this process's log file, not the console (:func:`pipelines.common.logs.ray_logs_to_file`):
  the console keeps our ``[stage]`` lines, including the training workers', and errors. The file's path
  is printed once. A session this call reuses keeps its logging as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def ray_session(address: str | None = None, **init_kwargs: Any) -> Iterator[bool]:
    """Use the connected Ray, or connect/start one for the duration of the block.

    Args:
        address: a Ray address (``auto``, ``ray://host:10001``, ``host:6379``); None: ``RAY_ADDRESS``,
            else a new local Ray.
        init_kwargs: passed to ``ray.init`` when this call connects (``log_to_driver`` defaults to True).

    Yields:
        True when this call started or connected the session (and will end it), False when it reused one.
    """
    import ray

    from pipelines.common.logs import announce, ray_logs_to_file

    if ray.is_initialized():
        yield False
        return
    init_kwargs.setdefault("log_to_driver", True)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    with ray_logs_to_file() as connected:
        doing = "starting a local Ray" if address == "local" else f"connecting to Ray at {address}"
        announce("ray", f"{doing}; Ray's own messages go to {{path}}")
        ray.init(address=address, **init_kwargs)
        connected()
        try:
            yield True
        finally:
            ray.shutdown()


def session_is_local(address: str | None = None) -> bool:
    """Whether ``ray_session(address)`` would start a local Ray that ends with this process."""
    import ray

    return not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))
