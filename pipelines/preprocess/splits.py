"""Where each split of a dataset root keeps its annotation json and its images."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pyarrow.fs as pafs

from pipelines.common.storage import join_path, resolve_path

__all__ = ["SPLITS", "find_coco_splits"]

SPLITS = ("train", "val")  # the splits looked for when none are named

_LAYOUTS = (
    "SRC/<split>/annotations.json + SRC/<split>/images/, or "
    "SRC/annotations/instances_<split>2017.json + SRC/<split>2017/"
)


def find_coco_splits(src: str | os.PathLike, splits: Iterable[str] | None = None) -> dict[str, tuple[str, str]]:
    """Locate each split's annotation json and image folder under a dataset root.

    Layouts (first match wins, per split):

    - this project's synthetic layout: ``SRC/<split>/annotations.json`` + ``SRC/<split>/images/``;
    - COCO 2017: ``SRC/annotations/instances_<split>2017.json`` + ``SRC/<split>2017/``;
    - COCO without a year: ``SRC/annotations/instances_<split>.json`` + ``SRC/<split>/``.

    Args:
        src: dataset root (path or URI).
        splits: split names; default every one of ``train``, ``val`` that is found.

    Returns:
        dict: ``{split: (annotations, image_folder)}`` as paths/URIs, in the order asked.

    Raises:
        FileNotFoundError: SRC is missing, a requested split is not found, or no split is found.
    """
    fs, root = resolve_path(src)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"dataset folder not found: {src}")
    shown = os.fspath(src).rstrip("/")
    found: dict[str, tuple[str, str]] = {}
    for split in SPLITS if splits is None else splits:
        location = _locate(fs, root, split)
        if location is not None:
            found[split] = (f"{shown}/{location[0]}", f"{shown}/{location[1]}")
        elif splits is not None:
            raise FileNotFoundError(f"{src}: split {split!r} not found; expected {_LAYOUTS}")
    if not found and splits is None:
        raise FileNotFoundError(f"{src}: no train or val split found; expected {_LAYOUTS}")
    return found


def _locate(fs: pafs.FileSystem, root: str, split: str) -> tuple[str, str] | None:
    """``(annotation json, image folder)`` of ``split`` relative to ``root``, in the first layout that has both."""
    candidates = [
        (f"{split}/annotations.json", f"{split}/images"),
        (f"annotations/instances_{split}2017.json", f"{split}2017"),
        (f"annotations/instances_{split}.json", split),
    ]
    for annotation, image_dir in candidates:
        if (
            fs.get_file_info(join_path(root, annotation)).type == pafs.FileType.File
            and fs.get_file_info(join_path(root, image_dir)).type == pafs.FileType.Directory
        ):
            return annotation, image_dir
    return None
