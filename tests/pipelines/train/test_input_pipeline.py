"""The training input pipeline: decode + augment + collate in background threads (``loader_threads``),
the same batches and the same losses as in the loop's own thread, the augmentation wired into the worker."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrcnn.data.masks import mask_to_rle
from pipelines.train.data import ShardEpochs, TrainCollate, batch_generator


def _row(image_id: int, height: int, width: int, boxes: list[tuple[int, int, int, int]], seed: int) -> dict:
    """A shard row: PNG bytes, rectangle instances as compressed RLE."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    masks = []
    for x0, y0, x1, y1 in boxes:
        mask = np.zeros((height, width), np.uint8)
        mask[y0:y1, x0:x1] = 1
        masks.append(mask)
    return {
        "image_id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width,
        "image": buffer.getvalue(),
        "boxes": [np.asarray(b, dtype=np.float32) for b in boxes],
        "labels": np.asarray([1 + i % 2 for i in range(len(boxes))], dtype=np.int32),
        "category_ids": np.asarray([1 + i % 2 for i in range(len(boxes))], dtype=np.int64),
        "masks_rle": [mask_to_rle(m)["counts"] for m in masks],
        "iscrowd": np.zeros(len(boxes), np.int8),
        "area": np.asarray([m.sum() for m in masks], dtype=np.float32),
    }  # fmt: skip


def _batch(rows: list[dict]) -> dict:
    """Numpy columns as ``iter_batches(batch_format="numpy")`` gives them (object arrays for lists)."""
    batch = {}
    for name in rows[0]:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row[name] for row in rows]
        batch[name] = column
    return batch


ROWS = [
    _row(1, 60, 80, [(5, 5, 30, 40), (40, 10, 70, 50)], seed=1),
    _row(2, 50, 50, [], seed=2),  # no instance: an empty target
    _row(3, 70, 40, [(0, 0, 40, 70)], seed=3),
    _row(4, 64, 64, [(10, 20, 30, 60), (30, 5, 60, 15), (2, 2, 8, 8)], seed=4),
    _row(5, 48, 72, [(20, 10, 50, 40)], seed=5),
]


class FakeShard:
    """What ``ray.train.get_dataset_shard`` gives, for ``iter_batches`` only: the rows in a fixed order."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.calls: list[dict] = []

    def iter_batches(self, *, batch_size: int, **kwargs):
        self.calls.append(kwargs)
        for start in range(0, len(self.rows), batch_size):
            yield _batch(self.rows[start : start + batch_size])


def _assert_batches_equal(actual, expected) -> None:
    assert len(actual) == len(expected)
    for (images_a, targets_a), (images_e, targets_e) in zip(actual, expected):
        assert len(images_a) == len(images_e)
        for a, e in zip(images_a, images_e):
            torch.testing.assert_close(a, e, rtol=0, atol=0)
        for a, e in zip(targets_a, targets_e):
            assert a.keys() == e.keys()
            for key in a:
                if torch.is_tensor(a[key]):
                    torch.testing.assert_close(a[key], e[key], rtol=0, atol=0, msg=key)
                else:
                    assert a[key] == e[key], key


LSJ_PASTE = {"kind": "lsj", "lsj_size": 48, "lsj_scale": [0.5, 1.5], "hflip": 0.5, "copy_paste": 1.0}


def test_threads_give_the_same_batches_as_the_loop_thread_and_leave_the_global_rng_alone():
    passes = {}
    for threads in (0, 2):
        torch.manual_seed(123)
        collate = TrainCollate(LSJ_PASTE, seed=7, rank=1)
        epochs = ShardEpochs(FakeShard(ROWS), 2, seed=7, collate=collate, loader_threads=threads)
        passes[threads] = [list(epochs), list(epochs)]  # two passes: the epoch enters each batch's seed
        # Nothing in the collate drew from the global generator (the model's samplers use it).
        after = torch.rand(4)
        torch.manual_seed(123)
        assert torch.equal(after, torch.rand(4))
        assert isinstance(epochs.prefetcher.last_wait_s, float)
    for first, second in zip(passes[0], passes[2]):
        _assert_batches_equal(second, first)
    # lsj: every image is the crop size; another pass draws other crops.
    assert {tuple(image.shape) for images, _ in passes[0][0] for image in images} == {(3, 48, 48)}
    assert not all(torch.equal(a, b) for (x, _), (y, _) in zip(*passes[0]) for a, b in zip(x, y))


def test_the_next_pass_is_prepared_while_the_loop_takes_the_last_steps_of_this_one():
    """One prefetcher spans the passes: when this pass's raw batches are all read, the feeder opens the next
    pass's (seeded ``seed + pass``) without waiting for the loop, so a pass boundary costs no wait."""
    import threading
    import time

    before = set(threading.enumerate())
    shard = FakeShard(ROWS)
    epochs = ShardEpochs(shard, 2, seed=7, collate=TrainCollate({}), loader_threads=2)
    first = iter(epochs)
    next(first)  # pass 0 has 3 batches; the loop holds after its first
    deadline = time.monotonic() + 10
    while len(shard.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [call["local_shuffle_seed"] for call in shard.calls] == [7, 8]  # pass 1 opened during pass 0
    assert len(list(first)) == 2
    reference = ShardEpochs(FakeShard(ROWS), 2, seed=7, collate=TrainCollate({}), loader_threads=0)
    list(reference)
    second = list(epochs)
    _assert_batches_equal(second, list(reference))
    assert [t["image_id"] for _, targets in second for t in targets] == [1, 2, 3, 4, 5]
    epochs.close()  # its threads end
    deadline = time.monotonic() + 10
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t.name for t in set(threading.enumerate()) - before]


@pytest.mark.parametrize("threads", [0, 2])
def test_a_pass_left_early_does_not_leak_into_the_next(threads):
    epochs = ShardEpochs(FakeShard(ROWS), 2, seed=7, collate=TrainCollate(LSJ_PASTE, seed=7), loader_threads=threads)
    reference = ShardEpochs(FakeShard(ROWS), 2, seed=7, collate=TrainCollate(LSJ_PASTE, seed=7), loader_threads=0)
    expected = [list(reference), list(reference), list(reference)]
    next(iter(epochs))  # the loop leaves pass 0 after one batch
    _assert_batches_equal(list(epochs), expected[1])
    _assert_batches_equal(list(epochs), expected[2])
    epochs.close()


@pytest.mark.parametrize("threads", [0, 2])
def test_an_empty_shard_is_one_clear_error(threads):
    epochs = ShardEpochs(FakeShard([]), 2, seed=0, collate=TrainCollate({}), loader_threads=threads)
    with pytest.raises(ValueError, match="training shards is empty"):
        list(epochs)
    epochs.close()


def test_a_batch_seed_depends_on_seed_rank_epoch_and_index():
    draws = {key: torch.rand(3, generator=batch_generator(*key)) for key in
             [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]}  # fmt: skip
    values = [tuple(v.tolist()) for v in draws.values()]
    assert len(set(values)) == len(values)
    torch.testing.assert_close(torch.rand(3, generator=batch_generator(0, 0, 1, 0)), draws[(0, 0, 1, 0)], rtol=0, atol=0)


def test_no_augmentation_is_the_plain_decode():
    from pipelines.shards import collate_shard_batch

    epochs = ShardEpochs(FakeShard(ROWS), 5, seed=0, collate=TrainCollate({}), loader_threads=2)
    _assert_batches_equal(list(epochs), [collate_shard_batch(_batch(ROWS))])


def test_augmented_targets_train_the_model_including_an_image_without_instances():
    """Empty targets after lsj + copy-paste keep today's empty-target layout and give finite losses."""
    from mrcnn.config import get_preset
    from mrcnn.modeling import build_model

    collate = TrainCollate(LSJ_PASTE, seed=0)
    images, targets = collate(_batch(ROWS[:3]), epoch=0, index=0)
    for image, target in zip(images, targets):
        N = target["boxes"].shape[0]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].dtype == torch.uint8 and tuple(target["masks"].shape) == (N, 48, 48)
        assert ((target["boxes"][:, 2:] - target["boxes"][:, :2]) >= 1).all()  # nothing degenerate
    empty = TrainCollate({"kind": "lsj", "lsj_size": 48, "hflip": 0.0})(_batch([ROWS[1]]), epoch=0, index=0)[1][0]
    assert tuple(empty["boxes"].shape) == (0, 4) and tuple(empty["masks"].shape) == (0, 48, 48)
    assert empty["labels"].shape == (0,)

    torch.manual_seed(0)
    model = build_model(get_preset("r18_fpn_small").replace(**{"model.num_classes": 2}))
    model.skip_resize_in_training = True
    model.train()
    losses = model([*images, collate(_batch([ROWS[1]]), epoch=0, index=0)[0][0]], [*targets, empty]).losses
    assert losses and all(torch.isfinite(v) for v in losses.values())


def test_keypoint_flip_uses_the_category_map_names():
    names = ("nose", "left_eye", "right_eye")
    row = _row(9, 40, 40, [(5, 5, 20, 30)], seed=9)
    row["keypoints"] = [np.asarray([10.0, 10.0, 2.0, 8.0, 12.0, 2.0, 16.0, 12.0, 1.0], dtype=np.float32)]  # flat 3K
    collate = TrainCollate({"kind": "flip", "hflip": 1.0}, num_keypoints=3, keypoint_names=names)
    (_,), (target,) = collate(_batch([row]), epoch=0, index=0)
    # Mirrored (x -> W - x), and left/right trade places.
    expected = torch.tensor([[[30.0, 10.0, 2.0], [24.0, 12.0, 1.0], [32.0, 12.0, 2.0]]])
    torch.testing.assert_close(target["keypoints"], expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    import ray

    from mrcnn.data.synthetic import make_synthetic_coco
    from pipelines.preprocess import preprocess_dataset

    root = tmp_path_factory.mktemp("input_pipeline")
    make_synthetic_coco(root / "synth", num_train=12, num_val=2, size=64, seed=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        preprocess_dataset(root / "synth", root / "shards")
    finally:
        ray.shutdown()
    return root / "shards"


def test_prefetching_changes_no_loss_and_data_wait_reaches_mlflow(tiny_shards, tmp_path):
    """One CPU worker, 3 steps, multi-scale training: loader threads 0 and 2 log the same losses exactly."""
    import ray
    from mlflow.tracking import MlflowClient

    from pipelines.train import TrainRunConfig, train

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = TrainRunConfig(
        data=str(tiny_shards), preset="r18_fpn_small", workers=1, batch_size=2, max_iters=3, checkpoint_every=100,
        storage_path=str(tmp_path / "ray_results"), tracking_uri=tracking_uri, experiment="prefetch", model_name="",
        augmentation={"kind": "multiscale", "min_sizes": [48, 64, 80], "max_size": 128},
        overrides={"model.backbone.out_channels": 64, "model.box_head.representation_size": 128,
                   "model.mask_head.conv_dim": 64, "model.box_head.batch_size_per_image": 32},
    )  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # the same rows in the same order
        results = {t: train(dataclasses.replace(base, loader_threads=t, name=f"threads{t}")) for t in (0, 2)}
    finally:
        ray.shutdown()

    client = MlflowClient(tracking_uri)
    losses = {}
    for threads, result in results.items():
        assert result.iteration == 3
        history = sorted(client.get_metric_history(result.mlflow_run_id, "train/loss"), key=lambda m: m.step)
        losses[threads] = [m.value for m in history]
        waits = client.get_metric_history(result.mlflow_run_id, "train/data_wait_s")
        assert sorted(m.step for m in waits) == [1, 2, 3] and all(m.value >= 0 for m in waits)
        assert len(client.get_metric_history(result.mlflow_run_id, "train/step_s")) == 3
        params = client.get_run(result.mlflow_run_id).data.params
        assert params["run.loader_threads"] == str(threads) and params["run.augmentation.kind"] == "multiscale"
    assert len(losses[0]) == 3 and losses[0] == losses[2]
