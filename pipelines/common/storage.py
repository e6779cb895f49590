"""Paths and files on local disks and object stores, through ``pyarrow.fs``.

Every stage reads and writes through these functions, so ``s3://bucket/key``, ``gs://bucket/key`` and
plain local paths work alike. Writes that a reader may see are atomic: a hidden temporary beside the
target, then a rename (on object stores a single PUT, which is atomic there).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import PurePosixPath

import pyarrow.fs as pafs

# The image files that predict, segment and evaluate pick up from a folder (lower-case suffixes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_image_name(name: str) -> bool:
    """Whether a file name has one of ``IMAGE_SUFFIXES`` (case-insensitive)."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def resolve_path(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A local path or a filesystem URI (``s3://bucket/key``, ``gs://``, ``file://``...) -> (fs, path).

    Local paths are made absolute. The returned path has no trailing slash.
    """
    text = os.fspath(path)
    if _URI.match(text):
        fs, inner = pafs.FileSystem.from_uri(text)
        return fs, inner.rstrip("/") or inner
    return pafs.LocalFileSystem(), os.path.abspath(text)


def join_path(base: str, *parts: str) -> str:
    """Join with ``/`` (pyarrow filesystems use ``/`` on every platform)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def display_path(original: str | os.PathLike, fs: pafs.FileSystem, path: str) -> str:
    """A path for messages: a URI keeps its scheme, a local path stays a plain path."""
    text = os.fspath(original)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = text.split("://", 1)[0]
    return f"{scheme}://{path}"


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole file; ``FileNotFoundError`` when it does not exist."""
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_uri(uri: str | os.PathLike) -> bytes:
    """The whole file at a local path or URI; ``FileNotFoundError`` naming ``uri`` when it does not exist."""
    fs, path = resolve_path(uri)
    try:
        return read_bytes(fs, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def tmp_path(path: str) -> str:
    """A hidden temporary beside ``path``: ``dir/.name.tmp-<random>``."""
    parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
    return f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"


def is_tmp(base_name: str) -> bool:
    """Whether a base name is one of ``tmp_path``'s temporaries (left behind by an interrupted write)."""
    return base_name.startswith(".") and ".tmp-" in base_name


def write_atomic(target: str | os.PathLike, data: bytes | str, *, fs: pafs.FileSystem | None = None) -> str:
    """Write ``data`` (str is UTF-8 encoded) to a hidden temporary beside ``target``, then rename it over
    ``target``. A reader sees either the old file or the whole new one, never a partial one.

    Args:
        target: a local path or URI; with ``fs`` given, a path inside that filesystem.
        data: the file's whole content.
        fs: the filesystem of ``target`` when the caller has already resolved it.

    Returns:
        The path written (inside its filesystem). Parent folders are created as needed.
    """
    if fs is None:
        fs, path = resolve_path(target)
    else:
        path = os.fspath(target)
    if "/" in path.rstrip("/"):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = tmp_path(path)
    with fs.open_output_stream(tmp) as stream:
        stream.write(data.encode() if isinstance(data, str) else data)
    try:
        fs.move(tmp, path)
    except BaseException:
        fs.delete_file(tmp)
        raise
    return path


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def list_files(fs: pafs.FileSystem, folder: str, *, recursive: bool) -> list[pafs.FileInfo]:
    """The files (not folders) under ``folder``; none when it does not exist."""
    selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
    return [info for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]
