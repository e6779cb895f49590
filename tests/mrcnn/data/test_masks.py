"""RLE conversion against pycocotools' own reference (``COCO.annToMask``) and hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.data.coco import load_coco
from mrcnn.data.masks import (
    SegmentationError,
    mask_to_polygons,
    mask_to_rle,
    masks_to_rles,
    rle_area,
    rle_to_bbox_xyxy,
    rle_to_mask,
    rles_to_masks,
    segmentation_to_rle,
)

from .conftest import COCO_DIRS_PRESENT, COCO_MINI_DIR


@pytest.mark.parametrize("coco_dir", COCO_DIRS_PRESENT, ids=lambda d: d.name)
def test_loaded_masks_equal_pycocotools_ann_to_mask(coco_dir):
    result = load_coco(coco_dir / "annotations.json", image_dir=coco_dir / "images")
    assert result.rejects == []
    reference = COCO(str(coco_dir / "annotations.json"))
    assert result.num_annotations == len(reference.anns)
    num_crowd = 0
    for record in result.records:
        for ann in record.annotations:
            assert isinstance(ann.rle["counts"], str)
            assert ann.rle["size"] == [record.height, record.width]
            expected = reference.annToMask(reference.anns[ann.id])
            mask = rle_to_mask(ann.rle)
            assert mask.dtype == np.uint8 and mask.shape == (record.height, record.width)
            np.testing.assert_array_equal(mask, expected, err_msg=f"annotation {ann.id}")
            assert ann.area == float(expected.sum()) > 0
            assert ann.iscrowd == reference.anns[ann.id]["iscrowd"]
            num_crowd += ann.iscrowd
    assert num_crowd >= 2  # the crowd (uncompressed RLE) path is exercised
    if coco_dir == COCO_MINI_DIR:
        assert (len(result.records), result.num_annotations, num_crowd) == (6, 58, 2)


def _rectangle(height, width, x0, y0, x1, y1):
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def test_polygon_with_several_parts_is_the_union():
    # pycocotools rasterises the square with corners (1,1)-(4,4) to pixels 1..3 in x and y.
    polygons = [[1, 1, 4, 1, 4, 4, 1, 4], [6.0, 5.0, 9.0, 5.0, 9.0, 8.0, 6.0, 8.0]]
    rle = segmentation_to_rle(polygons, height=10, width=12)
    expected = _rectangle(10, 12, 1, 1, 4, 4) | _rectangle(10, 12, 6, 5, 9, 8)
    np.testing.assert_array_equal(rle_to_mask(rle), expected)
    assert rle["size"] == [10, 12] and isinstance(rle["counts"], str)
    assert rle_area(rle) == 18.0


def test_uncompressed_rle_is_column_major():
    expected = np.array([[0, 1, 1], [0, 1, 0]], np.uint8)  # H=2, W=3
    # column-major runs: col0 = 0,0 ; col1 = 1,1 ; col2 = 1,0  -> 2 zeros, 3 ones, 1 zero
    rle = segmentation_to_rle({"size": [2, 3], "counts": [2, 3, 1]}, height=2, width=3)
    np.testing.assert_array_equal(rle_to_mask(rle), expected)
    assert isinstance(rle["counts"], str)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_compressed_rle_str_and_bytes(as_bytes):
    rng = np.random.default_rng(0)
    mask = (rng.random((17, 23)) < 0.4).astype(np.uint8)
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str)
    counts = rle["counts"].encode("ascii") if as_bytes else rle["counts"]
    converted = segmentation_to_rle({"size": [17, 23], "counts": counts}, height=17, width=23)
    assert converted == rle
    np.testing.assert_array_equal(rle_to_mask(converted), mask)
    np.testing.assert_array_equal(rle_to_mask({"size": [17, 23], "counts": counts}), mask)


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ([[1, 1, 5, 5]], "polygon_too_few_points"),
        ([[1, 1, 5, 1, 5, 5], [2, 2, 3, 3]], "polygon_too_few_points"),
        ([[1, 1, 5, 1, 5]], "bad_segmentation"),  # odd count
        ([[1, 1, "a", 1, 5, 5]], "bad_segmentation"),
        ([[1, 1, float("nan"), 1, 5, 5]], "bad_segmentation"),
        ([], "bad_segmentation"),
        ("polygon", "bad_segmentation"),
        ({"size": [9, 10], "counts": [100]}, "rle_size_mismatch"),
        ({"size": [10, 10], "counts": [50, 49]}, "bad_segmentation"),  # sums to 99, not 100
        ({"size": [10, 10], "counts": [50, -1, 51]}, "bad_segmentation"),
        ({"size": [10, 10], "counts": "garbage!!"}, "bad_segmentation"),
        ({"size": [10, 10], "counts": "0"}, "bad_segmentation"),  # sums to 0
        ({"counts": [100]}, "bad_segmentation"),
    ],
)
def test_malformed_segmentation_raises_with_reason(segmentation, reason):
    with pytest.raises(SegmentationError) as info:
        segmentation_to_rle(segmentation, height=10, width=10)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_too_few_points_message():
    with pytest.raises(SegmentationError, match="polygon has 2 points, need at least 3"):
        segmentation_to_rle([[1, 1, 5, 5]], height=10, width=10)


@pytest.mark.parametrize("broken", [[2, 2, 3, 3], [2, 2, 3], [2, 2, float("inf"), 3, 4, 4], "part"])
def test_broken_polygon_part_dropped_when_asked(broken):
    """With ``dropped_parts``, a broken part is left out (the valid parts kept, as detectron2) and described."""
    valid = [1, 1, 8, 1, 8, 8, 1, 8]
    dropped: list[str] = []
    rle = segmentation_to_rle([broken, valid], height=10, width=10, dropped_parts=dropped)
    assert rle == segmentation_to_rle([valid], height=10, width=10)
    assert len(dropped) == 1 and "part 0" in dropped[0]
    with pytest.raises(SegmentationError):  # nothing valid left: still an error
        segmentation_to_rle([broken], height=10, width=10, dropped_parts=[])


def test_masks_roundtrip_and_empty_stack():
    rng = np.random.default_rng(1)
    masks = (rng.random((3, 8, 11)) < 0.5).astype(np.uint8)
    rles = masks_to_rles(masks)
    assert [r["size"] for r in rles] == [[8, 11]] * 3
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = rles_to_masks(rles, 8, 11)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, masks)
    assert masks_to_rles(np.zeros((0, 8, 11), np.uint8)) == []
    assert rles_to_masks([], 8, 11).shape == (0, 8, 11)
    with pytest.raises(ValueError, match="expected \\[9, 11\\]"):
        rles_to_masks(rles, 9, 11)


def test_area_and_box():
    mask = _rectangle(10, 12, 3, 2, 7, 9)
    rle = mask_to_rle(mask.astype(bool))
    assert rle_area(rle) == 28.0
    assert rle_to_bbox_xyxy(rle) == [3.0, 2.0, 7.0, 9.0]
    single = np.zeros((5, 5), np.uint8)
    single[4, 1] = 1
    assert rle_to_bbox_xyxy(mask_to_rle(single)) == [1.0, 4.0, 2.0, 5.0]
    assert rle_to_bbox_xyxy(mask_to_rle(np.zeros((5, 5)))) == [0.0, 0.0, 0.0, 0.0]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the border become foreground (a flood fill)."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask.astype(bool), structure=ndimage.generate_binary_structure(2, 1))


def test_mask_to_polygons_hand_made():
    assert mask_to_polygons(_rectangle(10, 12, 3, 2, 7, 5)) == [[3.0, 2.0, 7.0, 2.0, 7.0, 5.0, 3.0, 5.0]]
    diagonal = np.zeros((6, 6), np.uint8)
    diagonal[1, 1] = diagonal[2, 2] = 1  # touch at a corner only: two 4-connected regions
    assert sorted(mask_to_polygons(diagonal)) == [[1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0],
                                                  [2.0, 2.0, 3.0, 2.0, 3.0, 3.0, 2.0, 3.0]]  # fmt: skip
    ring = _rectangle(9, 9, 1, 1, 8, 8)
    ring[3:6, 3:6] = 0  # the hole is dropped
    assert mask_to_polygons(ring) == [[1.0, 1.0, 8.0, 1.0, 8.0, 8.0, 1.0, 8.0]]
    assert mask_to_polygons(np.zeros((4, 4), np.uint8)) == []
    with pytest.raises(ValueError, match="shape"):
        mask_to_polygons(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("seed", range(4))
def test_mask_to_polygons_rasterise_back_to_the_mask(seed):
    """pycocotools rasterises the polygons back to exactly the mask with its holes filled."""
    rng = np.random.default_rng(seed)
    H, W = 40, 50
    yy, xx = np.mgrid[:H, :W]
    blobs = np.zeros((H, W), bool)
    for _ in range(3):
        cy, cx, ry, rx = rng.uniform(5, 35), rng.uniform(5, 45), rng.uniform(2, 12), rng.uniform(2, 12)
        blobs |= (yy - cy) ** 2 / ry**2 + (xx - cx) ** 2 / rx**2 < 1
    blobs |= rng.random((H, W)) < 0.05  # isolated pixels, and pixels touching only diagonally
    polygons = mask_to_polygons(blobs)
    assert all(len(p) >= 8 and len(p) % 2 == 0 for p in polygons)
    back = rle_to_mask(segmentation_to_rle(polygons, height=H, width=W))
    np.testing.assert_array_equal(back.astype(bool), _fill_holes(blobs))

