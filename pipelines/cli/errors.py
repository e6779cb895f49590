"""The one exception type of the command line."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: :func:`pipelines.cli.main` prints it as one line ``mrcnn: error: ...``, exit code 2."""
