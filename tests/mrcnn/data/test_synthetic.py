"""The synthetic dataset: deterministic, valid COCO, exact masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mrcnn.data.coco import load_coco
from mrcnn.data.images import load_image
from mrcnn.data.masks import rle_to_bbox_xyxy, rle_to_mask
from mrcnn.data.synthetic import (
    SHAPE_CLASSES,
    make_synthetic_coco,
    render_synthetic_image,
)


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, synthetic_root):
    again = make_synthetic_coco(tmp_path / "again", num_train=10, num_val=50, size=96, seed=0)
    first, second = _all_files(synthetic_root["root"]), _all_files(again["root"])
    assert len(first) == 10 + 50 + 2 and first == second
    other = make_synthetic_coco(tmp_path / "other", num_train=10, num_val=50, size=96, seed=1)
    third = _all_files(other["root"])
    assert third.keys() == first.keys()
    different = [name for name in first if first[name] != third[name]]
    assert len(different) == len(first)  # every image and both jsons change


def test_train_and_val_do_not_overlap(synthetic_root):
    train = {p.read_bytes() for p in synthetic_root["train"]["image_dir"].glob("*.png")}
    val = {p.read_bytes() for p in synthetic_root["val"]["image_dir"].glob("*.png")}
    assert len(train) == 10 and len(val) == 50 and not train & val


@pytest.mark.parametrize("split", ["train", "val"])
def test_valid_coco_with_exact_masks(synthetic_root, split):
    info = synthetic_root[split]
    coco = json.loads(info["annotations"].read_text())
    assert set(coco) == {"info", "licenses", "images", "annotations", "categories"}
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    reference = COCO(str(info["annotations"]))
    result = load_coco(info["annotations"], check_decode=True)
    assert result.rejects == []
    assert len(result.records) == info["num_images"] and result.num_annotations == info["num_annotations"]
    raw = {a["id"]: a for a in coco["annotations"]}
    for record in result.records:
        pixels = load_image(result.image_path(record))
        covered = np.zeros(pixels.shape[:2], dtype=np.int64)
        for ann in record.annotations:
            assert isinstance(raw[ann.id]["segmentation"]["counts"], str)
            mask = rle_to_mask(ann.rle)
            np.testing.assert_array_equal(mask, reference.annToMask(raw[ann.id]))
            assert mask.sum() > 0 and raw[ann.id]["area"] == float(mask.sum()) == ann.area
            x, y, w, h = raw[ann.id]["bbox"]
            assert [x, y, x + w, y + h] == rle_to_bbox_xyxy(ann.rle) == list(ann.box)
            colours = np.unique(pixels[mask.astype(bool)], axis=0)
            assert len(colours) == 1, f"annotation {ann.id}: {len(colours)} colours under its mask"
            covered += mask
        assert covered.max() <= 1  # visible masks never overlap


def test_variety(synthetic_root):
    coco = json.loads(synthetic_root["val"]["annotations"].read_text())
    classes = {a["category_id"] for a in coco["annotations"]}
    assert len(classes) >= 3
    image_area = 96 * 96
    areas = [a["area"] / image_area for a in coco["annotations"]]
    assert min(areas) < 0.02 and max(areas) > 0.15  # small and large shapes
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]])
    assert per_image[1:].min() >= 1 and per_image.max() >= 3
    # Rings have a hole: the centre of some ring's box is background.
    hole_seen = False
    for ann in coco["annotations"]:
        if SHAPE_CLASSES[ann["category_id"] - 1] == "ring":
            mask = rle_to_mask(ann["segmentation"])
            x, y, w, h = ann["bbox"]
            hole_seen |= mask[int(y + h / 2), int(x + w / 2)] == 0
    assert hole_seen


def test_render_contract():
    rng = np.random.default_rng(5)
    image, instances = render_synthetic_image(rng, size=64, min_shapes=2, max_shapes=4)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert 2 <= len(instances) <= 4
    for class_index, mask in instances:
        assert 0 <= class_index < len(SHAPE_CLASSES)
        assert mask.shape == (64, 64) and mask.dtype == np.uint8 and mask.sum() >= 20
    # Crowded small images force occlusion drops; min_shapes still holds.
    counts = [len(render_synthetic_image(rng, size=40, min_shapes=4, max_shapes=4)[1]) for _ in range(100)]
    assert counts == [4] * 100
    empty_image, none = render_synthetic_image(rng, size=32, min_shapes=0, max_shapes=0)
    assert none == [] and empty_image.shape == (32, 32, 3)
    with pytest.raises(ValueError):
        render_synthetic_image(rng, size=64, min_shapes=3, max_shapes=2)


def test_speed_default_size(tmp_path):
    import time

    start = time.perf_counter()
    summary = make_synthetic_coco(tmp_path, num_train=200, num_val=50, size=128)
    elapsed = time.perf_counter() - start
    assert summary["train"]["num_images"] == 200 and summary["val"]["num_images"] == 50
    assert elapsed < 10.0, f"250 images took {elapsed:.1f}s"
    assert Image.open(summary["train"]["image_dir"] / "000001.png").size == (128, 128)


def _content_digest(root) -> str:
    """sha256 over the decoded pixels of every image and the bytes of every json (PNG encoder-independent)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix == ".png":
            digest.update(np.asarray(Image.open(path)).tobytes())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_default_difficulty_output_is_unchanged(tmp_path):
    # Recorded before the `difficulty` option existed: the default set (the demo's) must stay the same.
    make_synthetic_coco(tmp_path, num_train=6, num_val=3, size=96, seed=7)
    assert _content_digest(tmp_path) == "f39293ad64d2cb74c34e97712ac94292f93f40e5d027d3bae78942c5def90360"


def test_hard_difficulty_is_smaller_thinner_and_more_crowded(tmp_path):
    default = make_synthetic_coco(tmp_path / "default", num_train=0, num_val=60, size=128, seed=0)
    hard = make_synthetic_coco(tmp_path / "hard", num_train=0, num_val=60, size=128, seed=0, difficulty="hard")
    coco = {name: json.loads(info["val"]["annotations"].read_text()) for name, info in (("default", default), ("hard", hard))}
    assert coco["hard"]["info"]["difficulty"] == "hard" and "difficulty" not in coco["default"]["info"]
    assert [c["name"] for c in coco["hard"]["categories"]] == list(SHAPE_CLASSES)  # same classes, same model
    sides = {name: np.median([max(a["bbox"][2:]) for a in c["annotations"]]) for name, c in coco.items()}
    assert sides["hard"] < 0.7 * sides["default"], sides
    assert all(max(a["bbox"][2:]) <= 0.31 * 128 + 1 for a in coco["hard"]["annotations"])
    per_image = np.bincount([a["image_id"] for a in coco["hard"]["annotations"]], minlength=61)[1:]
    assert per_image.min() >= 2 and per_image.mean() > len(coco["default"]["annotations"]) / 60

    def ring_fill(annotations):  # mask area / box area of rings: lower = thinner band
        return np.median([a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in annotations if a["category_id"] == 5])

    assert ring_fill(coco["hard"]["annotations"]) < ring_fill(coco["default"]["annotations"]) - 0.05
    result = load_coco(hard["val"]["annotations"], check_decode=True)
    assert result.rejects == [] and result.num_annotations == len(coco["hard"]["annotations"])


def test_easy_difficulty_is_larger_sparser_and_less_occluded(tmp_path):
    # The demo's set: 1-3 shapes of 25-60% of the side, each at least 60% visible and never cut by the edge.
    default = make_synthetic_coco(tmp_path / "default", num_train=0, num_val=60, size=128, seed=0)
    easy = make_synthetic_coco(tmp_path / "easy", num_train=0, num_val=60, size=128, seed=0, difficulty="easy")
    coco = {name: json.loads(info["val"]["annotations"].read_text()) for name, info in (("default", default), ("easy", easy))}
    assert coco["easy"]["info"]["difficulty"] == "easy"
    assert [c["name"] for c in coco["easy"]["categories"]] == list(SHAPE_CLASSES)
    annotations = coco["easy"]["annotations"]
    sides = {name: np.median([max(a["bbox"][2:]) for a in c["annotations"]]) for name, c in coco.items()}
    assert sides["easy"] > 1.4 * sides["default"], sides
    # A visible side under 25% of 128 px comes only from occlusion, which leaves >= 60% of the area.
    assert sum(max(a["bbox"][2:]) < 0.25 * 128 * 0.6 for a in annotations) <= len(annotations) // 10
    assert {a["category_id"] for a in annotations} == {1, 2, 3, 4, 5}
    per_image = np.bincount([a["image_id"] for a in annotations], minlength=61)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 3

    def at_edge(c):  # boxes that reach the image edge (a shape touching it by a pixel counts)
        return sum(min(x, y) <= 0 or max(x + w, y + h) >= 128 for x, y, w, h in (a["bbox"] for a in c["annotations"]))

    assert at_edge(coco["easy"]) <= len(annotations) // 10 < at_edge(coco["default"]), at_edge(coco["default"])
    result = load_coco(easy["val"]["annotations"], check_decode=True)
    assert result.rejects == [] and result.num_annotations == len(annotations)
    # Noise-free backgrounds: a solid background is one colour, a gradient changes smoothly.
    for path in sorted(easy["val"]["image_dir"].glob("*.png"))[:10]:
        pixels = load_image(path).astype(np.int64)
        corner = pixels[:3, :3].reshape(-1, 3)  # no shape reaches a corner
        assert np.abs(np.diff(corner, axis=0)).max() <= 12, path


def test_unknown_difficulty_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"difficulty: expected one of \['default', 'easy', 'hard'\], got 'extreme'"):
        make_synthetic_coco(tmp_path, num_train=1, num_val=1, difficulty="extreme")
    with pytest.raises(ValueError, match="difficulty"):
        render_synthetic_image(np.random.default_rng(0), size=64, difficulty="trivial")
