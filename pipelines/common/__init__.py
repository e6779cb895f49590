"""Plumbing every stage shares: storage (local paths and ``s3://``/``gs://`` through pyarrow.fs, atomic
writes), the one Ray-session policy, a stage's log lines and progress bars, and the log file where Ray's own
messages and other libraries' warnings go (:mod:`pipelines.common.logs`)."""

from pipelines.common.progress import StageLog, progress
from pipelines.common.session import ray_session
from pipelines.common.storage import (
    IMAGE_SUFFIXES,
    display_path,
    is_image_name,
    join_path,
    list_files,
    read_bytes,
    read_uri,
    resolve_path,
    write_atomic,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "StageLog",
    "display_path",
    "is_image_name",
    "join_path",
    "list_files",
    "progress",
    "ray_session",
    "read_bytes",
    "read_uri",
    "resolve_path",
    "write_atomic",
]
