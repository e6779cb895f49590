"""What a training worker reads: its part of the training shards, pass after pass, and (rank 0) the val shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class ShardEpochs:
    """One pass over this worker's dataset shard per iteration, reshuffled with ``seed + pass``.

    Ray Train splits the dataset with ``streaming_split(equal=True)``: per epoch every row goes to one
    worker, and every worker gets the same number of rows (up to ``workers - 1`` rows of an epoch are left
    out to make them equal), so every rank takes the same number of steps. The last batch of an epoch
    may be smaller than ``batch_size``: no image is dropped to fill batches.

    Yields:
        ``(images, targets)`` as :func:`pipelines.shards.collate_shard_batch` gives them (targets carry
        ``image_id``).

    Raises:
        ValueError: a pass yields no batch (fewer training images than workers?).
    """

    def __init__(self, shard: Any, batch_size: int, *, seed: int, num_keypoints: int = 0):
        self.shard = shard
        self.batch_size = batch_size
        self.seed = seed
        self.num_keypoints = num_keypoints
        self._passes = 0

    def __iter__(self) -> Iterator[tuple[list, list[dict]]]:
        from pipelines.shards import collate_shard_batch

        seed = self.seed + self._passes
        self._passes += 1
        count = 0
        for batch in self.shard.iter_batches(
            batch_size=self.batch_size, batch_format="numpy", drop_last=False,
            local_shuffle_buffer_size=4 * self.batch_size, local_shuffle_seed=seed,
        ):  # fmt: skip
            count += 1
            yield collate_shard_batch(batch, num_keypoints=self.num_keypoints)
        if count == 0:
            raise ValueError("this worker's part of the training shards is empty (fewer training images than workers?)")


def load_val(data_dir: str, max_images: int, num_keypoints: int = 0):
    """Val images + targets and the COCO ground truth built from the val shards (rank 0 only).

    Returns:
        ``(images, targets, gt)``: images ``Tensor[3, H, W]`` in [0, 1], targets with ``image_id``
        (crowd regions left out), ``gt`` a COCO dict of the same images; None when there is no val split.
    """
    import pyarrow.parquet as pq

    from pipelines.shards import (
        collate_shard_batch,
        join_path,
        list_shards,
        resolve_path,
        shards_to_coco_gt,
    )

    split_dir = join_path(data_dir, "val")
    try:
        files = list_shards(split_dir)
    except FileNotFoundError:
        return None
    filesystem, _ = resolve_path(split_dir)
    table = pq.read_table([resolve_path(f)[1] for f in files], filesystem=filesystem)
    if max_images:
        table = table.slice(0, max_images)
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    images, targets = collate_shard_batch(batch, include_crowd=False, num_keypoints=num_keypoints)
    for t, image_id in zip(targets, batch["image_id"]):
        t["image_id"] = int(image_id)
    gt = shards_to_coco_gt(split_dir)
    if max_images:
        keep = {int(i) for i in batch["image_id"]}
        gt["images"] = [im for im in gt["images"] if im["id"] in keep]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    return images, targets, gt
