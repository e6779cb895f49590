"""What a training worker reads: its part of the training shards, pass after pass, and (rank 0) the val shards."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any


def batch_generator(seed: int, rank: int, epoch: int, index: int):
    """The ``torch.Generator`` of one batch: every random draw of its augmentation comes from it, never from
    torch's global generator (which the model's samplers use), so a batch is augmented the same whichever
    thread prepares it. Seeded through numpy's ``SeedSequence`` of ``(seed, rank, epoch, index)``: nearby
    tuples give unrelated streams."""
    import numpy as np
    import torch

    entropy = np.random.SeedSequence([seed, rank, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


class TrainCollate:
    """Shard rows to a training batch: decode (:func:`pipelines.shards.collate_shard_batch`), augment each
    image, then copy-paste between the batch's images.

    Args:
        augmentation: an :class:`mrcnn.data.augment.AugmentationConfig` or its dict (empty: none).
        num_keypoints: the dataset's K (0: targets without keypoints).
        keypoint_names: the keypoint category's names, for the flip's left/right map
            (:func:`mrcnn.data.keypoints.flip_indices`); needed when targets carry keypoints.
        pad_fill: RGB (0..1) of LSJ's padding: the model's ``input.pixel_mean``.
        seed, rank: with the epoch and the batch's index, they seed the batch's generator
            (:func:`batch_generator`).

    ``collate(batch, epoch=e, index=i)`` takes a numpy column batch of shard rows and returns
    ``(images, targets)``: images ``Tensor[3, H, W]`` float32 in 0..1 (``lsj``: ``lsj_size`` square), targets
    as ``collate_shard_batch`` gives them after the augmentation (boxes the masks' tight boxes, degenerate
    instances dropped; an image may be left with no instance: boxes ``[0, 4]``, masks ``[0, H, W]``).
    """

    def __init__(
        self,
        augmentation: Any = None,
        *,
        num_keypoints: int = 0,
        keypoint_names: Sequence[str] = (),
        pad_fill: Sequence[float] = (0.485, 0.456, 0.406),
        seed: int = 0,
        rank: int = 0,
    ):
        from mrcnn.data.augment import AugmentationConfig, build_train_augmentation
        from mrcnn.data.keypoints import flip_indices

        config = augmentation if isinstance(augmentation, AugmentationConfig) else AugmentationConfig.from_dict(augmentation or {})
        self.config = config
        self.num_keypoints = num_keypoints
        flips = flip_indices(keypoint_names) if num_keypoints and keypoint_names else None
        self.augment = build_train_augmentation(config, flip_indices=flips, pad_fill=pad_fill)
        self.seed, self.rank = seed, rank

    def __call__(self, batch: Mapping[str, Any], *, epoch: int, index: int) -> tuple[list, list[dict]]:
        import torch

        from mrcnn.data.copy_paste import copy_paste
        from pipelines.shards import collate_shard_batch

        if self.config.kind == "none":
            return collate_shard_batch(batch, num_keypoints=self.num_keypoints)
        # The augmentations move uint8 pixels (a quarter of float32's bytes; torchvision's fast uint8 resize)
        # and the batch becomes float in 0..1 at the end, as collate_shard_batch gives it without them.
        images, targets = collate_shard_batch(batch, num_keypoints=self.num_keypoints, image_dtype=torch.uint8)
        generator = batch_generator(self.seed, self.rank, epoch, index)
        pairs = [self.augment(image, target, generator=generator) for image, target in zip(images, targets)]
        images, targets = [image for image, _ in pairs], [target for _, target in pairs]
        if self.config.copy_paste > 0:
            images, targets = copy_paste(images, targets, probability=self.config.copy_paste, generator=generator)
        return [image.float().div_(255.0) for image in images], targets


class ShardEpochs:
    """One pass over this worker's dataset shard per iteration, reshuffled with ``seed + pass``.

    Ray Train splits the dataset with ``streaming_split(equal=True)``: per epoch every row goes to one
    worker, and every worker gets the same number of rows (up to ``workers - 1`` rows of an epoch are left
    out to make them equal), so every rank takes the same number of steps. The last batch of an epoch
    may be smaller than ``batch_size``: no image is dropped to fill batches.

    The raw numpy batches (encoded images, RLE masks) become training batches through ``collate``
    (:class:`TrainCollate`) in ``loader_threads`` background threads (:class:`mrcnn.data.prefetch.Prefetcher`),
    ahead of the loop; 0 runs it in the loop's thread. One prefetcher runs over all passes, so the first
    batches of the next pass are prepared while the loop takes the last steps of this one: only the run's
    first batch is waited for. The batches are the same either way: a batch's randomness comes from
    ``(seed, rank, pass, index in the pass)``.

    Yields:
        ``(images, targets)`` as ``collate`` gives them (targets carry ``image_id``).

    Attributes:
        prefetcher: the :class:`~mrcnn.data.prefetch.Prefetcher` (``last_wait_s``: how long the loop
            waited for the batch it got last); None before the first pass.

    Raises:
        ValueError: a pass yields no batch (fewer training images than workers?).
    """

    def __init__(self, shard: Any, batch_size: int, *, seed: int, collate: TrainCollate | None = None,
                 loader_threads: int = 0):  # fmt: skip
        self.shard = shard
        self.batch_size = batch_size
        self.seed = seed
        self.collate = collate or TrainCollate(seed=seed)
        self.loader_threads = loader_threads
        self.prefetcher = None
        self._passes = 0
        self._stream: Iterator[tuple[int, Any]] | None = None
        self._next: tuple[int, Any] | None = None  # the next pass's first batch, taken ahead

    def __iter__(self) -> Iterator[tuple[list, list[dict]]]:
        from mrcnn.data.prefetch import Prefetcher

        if self._stream is None:
            self.prefetcher = Prefetcher(self._raw_passes(self._passes), self._collate, num_threads=self.loader_threads,
                                         depth=2 * self.loader_threads)  # fmt: skip
            self._stream = iter(self.prefetcher)
        epoch = self._passes
        self._passes += 1
        while True:
            if self._next is None:
                self._next = next(self._stream)  # the raw passes never end: a pass without batches raises
            if self._next[0] < epoch:  # the rest of a pass the caller left early
                self._next = None
                continue
            if self._next[0] > epoch:
                return
            batch, self._next = self._next[1], None
            yield batch

    def close(self) -> None:
        """Stop the prefetching threads (also done when the object is garbage-collected)."""
        if self._stream is not None:
            self._stream.close()
            self._stream, self._next = None, None

    def _raw_passes(self, first: int) -> Iterator[tuple[int, int, Any]]:
        """``(pass, index, raw numpy batch)`` for pass ``first`` on, without end."""
        epoch = first
        while True:
            raw = self.shard.iter_batches(
                batch_size=self.batch_size, batch_format="numpy", drop_last=False,
                local_shuffle_buffer_size=4 * self.batch_size, local_shuffle_seed=self.seed + epoch,
            )  # fmt: skip
            count = -1
            for count, batch in enumerate(raw):
                yield epoch, count, batch
            if count < 0:
                raise ValueError("this worker's part of the training shards is empty (fewer training images than workers?)")
            epoch += 1

    def _collate(self, item: tuple[int, int, Any]) -> tuple[int, Any]:
        epoch, index, batch = item
        return epoch, self.collate(batch, epoch=epoch, index=index)


def load_val(data_dir: str, max_images: int, num_keypoints: int = 0):
    """Val images + targets and the COCO ground truth built from the val shards (rank 0 only).

    Returns:
        ``(images, targets, gt)``: images ``Tensor[3, H, W]`` in [0, 1], targets with ``image_id``
        (crowd regions left out), ``gt`` a COCO dict of the same images; None when there is no val split.
    """
    import pyarrow.parquet as pq

    from pipelines.common.storage import join_path, resolve_path
    from pipelines.shards import collate_shard_batch, list_shards, shards_to_coco_gt

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
