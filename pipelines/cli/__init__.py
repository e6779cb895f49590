"""The ``mrcnn`` command line. Verbs and flags here are the public interface.

One module per verb: ``add_parser(subparsers)`` declares it and sets ``func`` to the function that runs it
(``cmd_<verb>(args) -> exit code``). The option groups several verbs share (cluster, tracking, model, actor
pool) are declared once in :mod:`pipelines.cli.options`. Heavy imports (torch, Ray, MLflow) happen inside each
verb, so ``mrcnn --help`` is instant and the light verbs never import Ray or MLflow.

Every verb that takes a model takes the same references with ``--model``: a checkpoint file,
``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/path``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.cli.errors import CLIError
from pipelines.cli.options import parse_overrides

# The verbs, in the order `mrcnn --help` lists them: each module has add_parser(subparsers).
VERB_MODULES = (
    "pipelines.cli.synth",
    "pipelines.cli.predict",
    "pipelines.cli.eval",
    "pipelines.cli.train",
    "pipelines.cli.demo",
    "pipelines.cli.ablate",
    "pipelines.cli.preprocess",
    "pipelines.cli.segment",
    "pipelines.cli.evaluate",
    "pipelines.cli.serve",
    "pipelines.cli.export",
    "pipelines.cli.submit",  # submit and jobs
)

EPILOG = (
    "MODEL, wherever a command takes --model: a checkpoint file, models:/NAME@ALIAS, models:/NAME/VERSION or "
    "runs:/RUN_ID/path (from the MLflow store of --tracking-uri, default MLFLOW_TRACKING_URI). "
    "eval and evaluate both give COCO AP: eval in this process (a predictions json, or a model over an image "
    "folder), evaluate distributed on Ray Data (a shard split or a COCO set; resumable; writes metrics.json)."
)

_parse_overrides = parse_overrides  # the name tests and older callers import

__all__ = ["CLIError", "VERB_MODULES", "build_parser", "config_args", "job_main", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mrcnn`` parser: one subparser per verb of :data:`VERB_MODULES`."""
    parser = argparse.ArgumentParser(prog="mrcnn", description="Mask R-CNN: train, evaluate and segment.", epilog=EPILOG)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in VERB_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "train", "size"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise CLIError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    threshold = getattr(args, "score_threshold", None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CLIError(f"--score-threshold: expected a value in [0, 1], got {threshold}")


def config_args(path: str | os.PathLike) -> list[str]:
    """A job's YAML run config as command-line arguments.

    The YAML maps flag names (``num_shards`` or ``num-shards``) to values: ``true`` gives the bare flag,
    ``false``/``null`` leave it out, a list repeats it; ``args`` lists the positional arguments.
    ``{"args": ["SRC", "OUT"], "num_shards": 8, "split": ["train", "val"]}`` ->
    ``["SRC", "OUT", "--num-shards", "8", "--split", "train", "--split", "val"]``.
    """
    from mrcnn.config import load_yaml

    source = Path(path)
    if not source.is_file():
        raise CLIError(f"--config {source}: no such file")
    data = load_yaml(source) or {}
    if not isinstance(data, dict):
        raise CLIError(f"{source}: expected a mapping of flag names to values, got {type(data).__name__}")
    positional = data.pop("args", []) or []
    if not isinstance(positional, list):
        raise CLIError(f"{source}: 'args' must be a list of positional arguments")
    argv = [str(a) for a in positional]
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                argv.append(flag)
            elif item is not None and item is not False:
                argv += [flag, str(item)]
    return argv


def job_main(verb: str, argv: Sequence[str]) -> int:
    """What ``python -m jobs.<verb> ARGS`` runs: ``mrcnn <verb> ARGS``, where ``--config FILE`` (for every verb
    but ``train``, whose ``--config`` is its own run config) is replaced by the file's flags; flags given
    after it win."""
    argv = list(argv)
    if verb != "train" and "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            print(f"mrcnn {verb}: error: --config needs a YAML file", file=sys.stderr)
            return 2
        try:
            expanded = config_args(argv[at + 1])
        except CLIError as exc:
            print(f"mrcnn: error: {exc}", file=sys.stderr)
            return 2
        argv = [*expanded, *argv[:at], *argv[at + 2 :]]
    return main([verb, *argv])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_line(exc: BaseException) -> str:
    """The exception's first line; for one of Ray's (a failed task, actor or training run, whose first line
    only says where) that line and the last one, which says why (``...: ValueError: box 3 has zero width``):
    ``MRCNN_DEBUG=1`` shows the whole traceback."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and type(exc).__module__.split(".")[0] == "ray":
        return f"{lines[0].rstrip(':')}: {lines[-1]}"
    return lines[0]


def main(argv: Sequence[str] | None = None) -> int:
    """``mrcnn ARGV`` (default: ``sys.argv[1:]``). Returns the exit code: 0 done, 1 done with failures (skipped
    images, a failed variant or job), 2 an error (printed as one ``mrcnn: error: ...`` line), 130 interrupted."""
    from pipelines.common.logs import library_warnings_to_file

    # MLflow, when this process imports it, leaves its loggers to us: library_warnings_to_file sends its INFO
    # lines to the log file (otherwise it installs a console handler of its own at import).
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        with library_warnings_to_file():  # other libraries' warnings go to the log file, ours stay here
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mrcnn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; MRCNN_DEBUG=1 shows the traceback
        if os.environ.get("MRCNN_DEBUG"):
            raise
        message = _error_line(exc)
        known = (CLIError, ValueError, FileNotFoundError, OSError)
        prefix = "" if isinstance(exc, known) else f"{type(exc).__name__}: "
        print(f"mrcnn: error: {prefix}{message}", file=sys.stderr)
        return 2
