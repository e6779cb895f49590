"""What one split's preprocessing did: :class:`PreprocessSummary`, its text, and the split's report files
``rejects.jsonl`` and ``_summary.json``."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from pipelines.common.storage import display_path, join_path, write_atomic
from pipelines.shards import CATEGORIES_FILE, shard_file_name

__all__ = ["REJECTS_FILE", "SUMMARY_FILE", "PreprocessSummary", "write_split_reports"]

REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "_summary.json"


@dataclass(frozen=True)
class PreprocessSummary:
    """What one split's preprocessing did.

    Attributes:
        split (str): output split name.
        annotations (str): the COCO json that was read.
        images (str): the image folder.
        out_dir (str): ``OUT/<split>``.
        num_images (int): image entries in the json.
        num_rows (int): rows written (valid images), one per image.
        num_annotations (int): instances written, crowd regions included.
        num_crowd (int): crowd regions written (``iscrowd=1``).
        rejects_by_reason (dict[str, int]): image and annotation rejects by reason code.
        shard_paths (tuple[str, ...]): the Parquet files, in shard order.
        categories_path (str): ``OUT/categories.json``.
        rejects_path (str): ``OUT/<split>/rejects.jsonl``.
        summary_path (str): ``OUT/<split>/_summary.json``.
        seconds (float): wall time of the whole split (json, images, writing).
    """

    split: str
    annotations: str
    images: str
    out_dir: str
    num_images: int
    num_rows: int
    num_annotations: int
    num_crowd: int
    rejects_by_reason: dict[str, int] = field(repr=False)
    shard_paths: tuple[str, ...] = field(repr=False)
    categories_path: str = field(repr=False)
    rejects_path: str = field(repr=False)
    summary_path: str = field(repr=False)
    seconds: float = 0.0

    @property
    def num_rejects(self) -> int:
        return sum(self.rejects_by_reason.values())

    @property
    def images_per_second(self) -> float:
        """Json image entries handled per second of wall time."""
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``_summary.json`` object: counts, rejects by reason, paths, seconds, images/s."""
        return {
            "split": self.split,
            "annotations": self.annotations,
            "images": self.images,
            "out_dir": self.out_dir,
            "num_images": self.num_images,
            "rows": self.num_rows,
            "num_annotations": self.num_annotations,
            "num_crowd": self.num_crowd,
            "num_rejects": self.num_rejects,
            "rejects": dict(self.rejects_by_reason),
            "num_shards": len(self.shard_paths),
            "shards": list(self.shard_paths),
            "categories": self.categories_path,
            "rejects_file": self.rejects_path,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }

    def format(self) -> str:
        """A few human lines: counts, rejects by reason, output paths."""
        lines = [
            f"{self.split}: {self.num_rows} rows ({self.num_annotations} instances, {self.num_crowd} crowd) "
            f"from {self.num_images} images in {len(self.shard_paths)} shard(s), {self.num_rejects} rejects, "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        ]
        for reason, count in self.rejects_by_reason.items():
            lines.append(f"  rejected {reason}: {count}")
        lines.append(f"  shards:  {self.out_dir}/part-*-of-{len(self.shard_paths):05d}.parquet")
        lines.append(f"  rejects: {self.rejects_path}")
        lines.append(f"  summary: {self.summary_path}")
        return "\n".join(lines)

    def done_line(self) -> str:
        """The one line printed when the split is written (with ``progress``)."""
        rejected = ", ".join(f"{k} {v}" for k, v in self.rejects_by_reason.items()) or "none"
        return (
            f"{self.split}: wrote {self.num_rows} rows in {len(self.shard_paths)} shard(s) in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s); rejects: {rejected}"
        )


def write_split_reports(
    out: str | os.PathLike, out_fs: pafs.FileSystem, staging: str, split_dir: str, *, split: str, source: str,
    images: str | os.PathLike, files: dict[int, str], json_rejects: list, write_returns: list[dict], num_shards: int,
    num_json_images: int, start: float,
) -> PreprocessSummary:
    """Write ``rejects.jsonl`` and ``_summary.json`` into the staging folder; the summary names the final paths.

    Args:
        out: ``OUT`` as the user gave it (for displayed paths).
        out_fs, staging, split_dir: ``OUT``'s filesystem, the staging folder, the final ``OUT/<split>``.
        split, source, images: the split name, the annotation file, the image folder.
        files (dict[int, str]): ``file_name`` by image id, for the json rejects' ``file``.
        json_rejects (list[mrcnn.data.coco.Reject]): the rejects of the json's validation, first in the file.
        write_returns (list[dict]): per write task ``{"shards": {shard: {"rows", "annotations", "crowd"}},
            "rejects": [image rejects]}``; their rejects follow in shard order.
        num_shards, num_json_images: shard files written, image entries in the json.
        start (float): ``time.perf_counter()`` when the split began.

    Returns:
        PreprocessSummary: what ``_summary.json`` holds.
    """
    rejects = [
        {
            "image_id": r.image_id,
            "annotation_id": r.annotation_id,
            "file": files.get(r.image_id) if r.image_id is not None else None,
            "reason": r.reason,
            "message": r.message,
        }
        for r in json_rejects
    ]
    ordered = sorted(write_returns, key=lambda r: min(r["shards"], default=-1))
    rejects.extend(reject for r in ordered for reject in r["rejects"])
    totals = Counter()
    for r in write_returns:
        for stats in r["shards"].values():
            totals.update(stats)

    def shown(*parts: str) -> str:
        return display_path(out, out_fs, join_path(*parts))

    write_atomic(join_path(staging, REJECTS_FILE), "".join(json.dumps(r) + "\n" for r in rejects), fs=out_fs)
    summary = PreprocessSummary(
        split=split,
        annotations=source,
        images=os.fspath(images),
        out_dir=display_path(out, out_fs, split_dir),
        num_images=num_json_images,
        num_rows=totals["rows"],
        num_annotations=totals["annotations"],
        num_crowd=totals["crowd"],
        rejects_by_reason=dict(sorted(Counter(r["reason"] for r in rejects).items())),
        shard_paths=tuple(shown(split_dir, shard_file_name(i, num_shards)) for i in range(num_shards)),
        categories_path=shown(split_dir.rsplit("/", 1)[0], CATEGORIES_FILE),
        rejects_path=shown(split_dir, REJECTS_FILE),
        summary_path=shown(split_dir, SUMMARY_FILE),
        seconds=time.perf_counter() - start,
    )
    write_atomic(join_path(staging, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=1) + "\n", fs=out_fs)
    return summary
