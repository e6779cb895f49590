"""Where messages that are not ours go: Ray's own log lines and other libraries' warnings, to one log file.

The console of a verb holds our own lines (``[stage] message``, tqdm bars, the final summary) and errors.
Everything else that Ray and third-party libraries print goes to this process's log file,
``$MRCNN_LOG_DIR/mrcnn-<YYYYmmdd-HHMMSS>-<pid>.log`` (default ``MRCNN_LOG_DIR``: ``<tempdir>/mrcnn-logs``),
created when the first message comes; its path is printed once (:func:`announce`).

- :func:`ray_logs_to_file` (used by :func:`pipelines.common.session.ray_session` for a session it starts):
  on the driver, Ray's Python loggers (``ray``, ``ray.data``, ``ray.train``, ``ray.serve``, ...) write to the
  file, and to the console only from ERROR up; the stdout/stderr lines of Ray's workers, which Ray forwards
  to the driver, go to the file, except our own ``[stage] ...`` lines (the training workers' progress), which
  go to the console once, as the worker wrote them (:class:`WorkerLogRouter`). A failing run still says why:
  the driver's exception carries the worker's error.
- :func:`library_warnings_to_file` (used by the ``mrcnn`` command line): Python warnings raised outside this
  project's code (pydantic deprecations under Ray Serve, MLflow's hints...) go to the file; ours stay on the
  console.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LOG_DIR_ENV", "announce", "library_warnings_to_file", "log_path", "ray_logs_to_file"]

LOG_DIR_ENV = "MRCNN_LOG_DIR"
WORKER_LOGGER = "ray_workers"  # the logger the workers' forwarded lines are written through
WARNINGS_LOGGER = "py.warnings"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Our own lines: "[train] iteration 25 ...", "[segment] 4 images". Ray's C++ lines start "[2026-..." (a digit).
STAGE_LINE = re.compile(r"^\[[a-z][a-z0-9_-]*\] ")
# Packages whose warnings are ours, for the user: they stay on the console.
_OWN_CODE = tuple(str(Path(__file__).resolve().parents[2] / name) + os.sep for name in ("mrcnn", "pipelines", "jobs"))

_lock = threading.RLock()
_handler: logging.Handler | None = None
_announced = False


def log_path() -> Path:
    """This process's log file (the folder is created; the file appears with the first message)."""
    with _lock:
        return Path(_file_handler().baseFilename)


def _file_handler() -> logging.FileHandler:
    global _handler
    with _lock:
        if _handler is None:
            folder = Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "mrcnn-logs")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"mrcnn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            _handler = _AnnouncingFileHandler(folder / name, encoding="utf-8", delay=True)
            _handler.setLevel(logging.INFO)
            _handler.setFormatter(logging.Formatter(_FORMAT))
        return _handler


class _AnnouncingFileHandler(logging.FileHandler):
    """A FileHandler that names its file on the console before its first record (unless already named)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _announced:
            announce("logs", "messages of Ray and other libraries go to {path}")
        super().emit(record)


class _ToFile(logging.Handler):
    """What Ray's loggers get: it hands records to the log file's handler, whose format Ray's own
    reformatting of its handlers (``ray.init`` sets every ``ray`` handler's formatter) leaves alone."""

    def emit(self, record: logging.LogRecord) -> None:
        _file_handler().handle(record)


_to_file = _ToFile(logging.INFO)


def announce(stage: str, template: str) -> None:
    """Print ``[stage] template`` with ``{path}`` replaced by :func:`log_path`, once per process: the first
    call prints, later ones do nothing."""
    global _announced
    with _lock:
        if _announced:
            return
        _announced = True
    print(f"[{stage}] " + template.format(path=log_path()), file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Ray


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


class _LoggersToFile:
    """The Python loggers of some libraries (``roots`` and their children): the log file added (from INFO up),
    their console handlers raised to ``console_level``; undone by :meth:`restore`. :meth:`sweep` may run again
    (Ray configures some loggers when it starts)."""

    def __init__(self, roots: tuple[str, ...], console_level: int) -> None:
        self.roots, self.console_level = roots, console_level
        self.levels: dict[logging.Handler, int] = {}
        self.with_file: list[logging.Logger] = []
        self.logger_levels: dict[logging.Logger, int] = {}

    def sweep(self) -> None:
        handler = _to_file
        loggers = [logging.getLogger(root) for root in self.roots] + [
            logger for name, logger in list(logging.root.manager.loggerDict.items())
            if name.startswith(tuple(root + "." for root in self.roots)) and isinstance(logger, logging.Logger)
        ]  # fmt: skip
        for logger in loggers:
            console = _console_handlers(logger)
            for console_handler in console:
                if console_handler not in self.levels:
                    self.levels[console_handler] = console_handler.level
                    console_handler.setLevel(max(console_handler.level, self.console_level))
            if (console or logger.name in self.roots) and handler not in logger.handlers:
                logger.addHandler(handler)
                self.with_file.append(logger)
            if logger.name in self.roots and logger.getEffectiveLevel() > logging.INFO:  # e.g. unconfigured MLflow
                self.logger_levels.setdefault(logger, logger.level)
                logger.setLevel(logging.INFO)

    def restore(self) -> None:
        for console_handler, level in self.levels.items():
            console_handler.setLevel(level)
        for logger in self.with_file:
            logger.removeHandler(_to_file)
        for logger, level in self.logger_levels.items():
            logger.setLevel(level)
        self.levels.clear()
        self.with_file.clear()
        self.logger_levels.clear()


class WorkerLogRouter:
    """What the driver does with the lines Ray's workers print (Ray forwards them with ``log_to_driver=True``,
    :func:`pipelines.common.session.ray_session`'s default) and with the raylet's messages: every line to the log file; our
    ``[stage] ...`` lines to the console as they are (a worker's stdout lines to stdout, stderr lines to
    stderr); the raylet's messages other than its ``WARNING: ...`` ones (a worker killed for memory, a node
    died) to stderr as well. Ray's progress bars drawn inside workers (the training's data ingest) are
    dropped. A failed task or training run reaches the console as the driver's exception, whose message
    carries the worker's error (:func:`pipelines.cli.main` prints its cause).

    Args:
        logger: where the lines are written (the log file's).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def __call__(self, data: dict[str, Any], ignore_prefix: bool = False) -> None:
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

        prefix = self._prefix(data)
        sink = sys.stderr if data.get("is_err") else sys.stdout
        for line in data.get("lines", []):
            if RAY_TQDM_MAGIC in line:
                continue
            self.logger.info("%s %s", prefix, line)
            if STAGE_LINE.match(line):
                print(line, file=sink, flush=True)
            elif data.get("pid") == "raylet" and not line.startswith("WARNING"):
                print(f"{prefix} {line}", file=sys.stderr, flush=True)

    @staticmethod
    def _prefix(data: dict[str, Any]) -> str:
        if data.get("pid") in ("raylet", "autoscaler"):
            return f"({data['pid']})"
        name = data.get("actor_name") or data.get("task_name") or ""
        ip = data.get("ip")
        where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
        return f"({name + ' ' if name else ''}pid={data.get('pid')}{where})"


def _worker_logger() -> logging.Logger:
    logger = logging.getLogger(WORKER_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if _to_file not in logger.handlers:
        logger.addHandler(_to_file)
    return logger


@contextmanager
def ray_logs_to_file() -> Iterator[Any]:
    """Ray's driver-side log lines to the log file (the console keeps ERROR and up), for the ``with`` block.

    Enter it before Ray starts (so the lines of its start go to the file too), and call the yielded
    ``connected()`` right after: it takes over the forwarding of the workers' lines
    (:class:`WorkerLogRouter`) when Ray forwards them, and sweeps the loggers Ray configured while it started.
    Ray's own handler comes back with the next ``ray.init``; the loggers are restored when the block ends.
    """
    import ray.data  # noqa: F401  (Ray Data configures its loggers when imported: sweep them too)

    loggers = _LoggersToFile(("ray",), console_level=logging.ERROR)
    loggers.sweep()

    from ray._private import worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    router = WorkerLogRouter(_worker_logger())

    def connected() -> None:
        # Ray has no public hook for the lines it forwards: its driver hands them to the handler named
        # "ray_print_logs" of its stdstream dispatcher, and the raylet's messages to print_to_stdstream.
        # Both are replaced where they exist; a Ray without them keeps its own printing.
        loggers.sweep()
        dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
        if dispatcher is not None and any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("ray_print_logs", router)
        if printer is not None:
            ray_worker.print_to_stdstream = router

    try:
        yield connected
    finally:
        if printer is not None:
            ray_worker.print_to_stdstream = printer
        loggers.restore()


# ----------------------------------------------------------------------------------------------
# Python warnings


def _is_own_code(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_OWN_CODE)


# Libraries whose INFO lines are theirs, not the user's: MLflow's ("Creating initial MLflow database tables...").
LIBRARY_LOGGERS = ("mlflow", "alembic")


@contextmanager
def library_warnings_to_file() -> Iterator[None]:
    """For the ``with`` block, Python warnings raised from code outside ``mrcnn/``, ``pipelines/`` and
    ``jobs/`` are written to the log file instead of the console (which warnings are shown at all stays
    up to the warning filters); this project's own warnings are shown as before. The loggers of
    :data:`LIBRARY_LOGGERS` write to the log file from INFO up and to the console only from WARNING up."""
    shown = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if _is_own_code(filename):
            shown(message, category, filename, lineno, file, line)
            return
        logger = logging.getLogger(WARNINGS_LOGGER)
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        record = logger.makeRecord(WARNINGS_LOGGER, logging.WARNING, filename, lineno, text, None, None)
        _file_handler().handle(record)

    warnings.showwarning = showwarning
    loggers = _LoggersToFile(LIBRARY_LOGGERS, console_level=logging.WARNING)
    loggers.sweep()
    try:
        yield
    finally:
        if warnings.showwarning is showwarning:
            warnings.showwarning = shown
        loggers.restore()
