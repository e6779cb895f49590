"""Training augmentations: exact geometry of each transform on hand-made instances (mask pixels, the box as the
mask's tight box, keypoints, the flip's keypoint map), LSJ crops that drop emptied instances, copy-paste
occlusion, torchvision's own sizes as the reference, seeded repeatability, and the config."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from mrcnn.config import ConfigError
from mrcnn.data.augment import AugmentationConfig, build_train_augmentation, mask_boxes
from mrcnn.data.copy_paste import copy_paste
from mrcnn.data.keypoints import COCO_PERSON_KEYPOINTS, flip_indices

NAMES = ("nose", "left_eye", "right_eye")
FLIP = flip_indices(NAMES)  # (0, 2, 1)


def rect_mask(H, W, box):
    """A uint8 [H, W] mask whose pixels are columns x0..x1-1 and rows y0..y1-1 of box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def make_target(H, W, boxes, keypoints=None, labels=None):
    """Target dict of rectangle instances; keypoints: per instance a list of (x, y, v), or None."""
    masks = torch.stack([rect_mask(H, W, b) for b in boxes]) if boxes else torch.zeros(0, H, W, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "masks": masks,
        "labels": torch.tensor(labels if labels is not None else list(range(1, len(boxes) + 1)), dtype=torch.int64),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.uint8),
        "area": masks.flatten(1).sum(1).float(),
        "image_id": 42,
    }
    if keypoints is not None:
        target["keypoints"] = torch.tensor(keypoints, dtype=torch.float32).reshape(len(boxes), -1, 3)
    return target


def assert_consistent(image, target):
    """Boxes are the masks' tight boxes, areas their pixel counts, nothing degenerate, masks match the image."""
    N = target["boxes"].shape[0]
    assert target["masks"].shape == (N, *image.shape[-2:]) and target["masks"].dtype == torch.uint8
    assert torch.equal(target["boxes"], mask_boxes(target["masks"]))
    assert torch.equal(target["area"], target["masks"].flatten(1).sum(1).float())
    assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    for key in ("labels", "iscrowd", "area"):
        assert target[key].shape[0] == N
    if "keypoints" in target:
        assert target["keypoints"].shape[0] == N
        unlabelled = target["keypoints"][..., 2] == 0
        assert (target["keypoints"][unlabelled] == 0).all()


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_mask_boxes_are_pixel_edge_boxes():
    empty = torch.zeros(8, 10, dtype=torch.uint8)
    masks = torch.stack([rect_mask(8, 10, (2, 1, 5, 7)), empty, rect_mask(8, 10, (9, 7, 10, 8))])
    assert mask_boxes(masks).tolist() == [[2, 1, 5, 7], [0, 0, 0, 0], [9, 7, 10, 8]]
    assert mask_boxes(torch.zeros(0, 8, 10, dtype=torch.uint8)).shape == (0, 4)


def test_flip_moves_mask_box_keypoints_and_swaps_left_right():
    H, W = 100, 200
    image = torch.rand(3, H, W)
    # nose, left eye, right eye (labelled, not visible); a second instance whose keypoints are unlabelled.
    target = make_target(H, W, [(20, 10, 60, 50), (100, 60, 130, 90)],
                         keypoints=[[(30.5, 20.5, 2), (25, 15, 2), (35, 15, 1)], [(0, 0, 0)] * 3])  # fmt: skip
    augment = build_train_augmentation({"kind": "flip", "hflip": 1.0}, flip_indices=FLIP)
    out_image, out = augment(image, target, generator=seeded(0))
    assert torch.equal(out_image, image.flip(-1))
    expected_masks = torch.stack([rect_mask(H, W, (140, 10, 180, 50)), rect_mask(H, W, (70, 60, 100, 90))])
    assert torch.equal(out["masks"], expected_masks)
    assert out["boxes"].tolist() == [[140, 10, 180, 50], [70, 60, 100, 90]]
    # x -> W - x; index k takes the keypoint flip_indices[k]: the mirrored right eye is the new left eye.
    assert out["keypoints"][0].tolist() == [[169.5, 20.5, 2], [165, 15, 1], [175, 15, 2]]
    assert out["keypoints"][1].tolist() == [[0, 0, 0]] * 3
    # The nose was on pixel (30, 20) of the mask; it is on the mirrored pixel (199 - 30, 20).
    assert out["masks"][0, 20, 169] == 1 and expected_masks[0, 20, 199 - 30] == 1
    assert out["labels"].tolist() == [1, 2] and out["area"].tolist() == [1600, 900] and out["image_id"] == 42
    assert_consistent(out_image, out)
    assert target["boxes"].tolist()[0] == [20, 10, 60, 50], "the input target is not modified"


def test_flip_map_of_coco_person_keypoints():
    K = len(COCO_PERSON_KEYPOINTS)
    keypoints = [[(float(k), 10.0, 2) for k in range(K)]]  # keypoint k at x = k
    target = make_target(50, 40, [(0, 0, 20, 20)], keypoints=keypoints)
    augment = build_train_augmentation({"kind": "flip", "hflip": 1.0}, flip_indices=flip_indices(COCO_PERSON_KEYPOINTS))
    _, out = augment(torch.rand(3, 50, 40), target)
    names = list(COCO_PERSON_KEYPOINTS)
    for k, name in enumerate(names):
        mirror = name.replace("left", "#").replace("right", "left").replace("#", "right")
        assert out["keypoints"][0, k].tolist() == [40 - names.index(mirror), 10, 2], name


def test_flip_without_a_keypoint_map_is_an_error():
    target = make_target(20, 20, [(0, 0, 5, 5)], keypoints=[[(1, 1, 2)] * 3])
    with pytest.raises(ValueError, match="flip_indices with 3 entries"):
        build_train_augmentation({"kind": "flip"})(torch.rand(3, 20, 20), target)
    with pytest.raises(ValueError, match="flip_indices with 3 entries"):
        build_train_augmentation({"kind": "flip"}, flip_indices=(1, 0))(torch.rand(3, 20, 20), target)
    # No flip, no map needed.
    _, out = build_train_augmentation({"kind": "flip", "hflip": 0.0})(torch.rand(3, 20, 20), target)
    assert torch.equal(out["keypoints"], target["keypoints"])


def centre_rule_span(start, stop, scale, size):
    """Output pixels j (0..size-1) whose centre maps into input pixels start..stop-1: start <= (j + 0.5) / scale < stop."""
    inside = [j for j in range(size) if start <= Fraction(2 * j + 1, 2) / scale < stop]
    return inside[0], inside[-1] + 1


@pytest.mark.parametrize(("min_size", "scale"), [(200, Fraction(2)), (50, Fraction(1, 2)), (125, Fraction(5, 4))])
def test_multiscale_scales_mask_box_keypoints_exactly(min_size, scale):
    H, W = 100, 200
    box = (21, 11, 61, 51)
    target = make_target(H, W, [box], keypoints=[[(30.5, 20.5, 2), (25, 15, 2), (0, 0, 0)]])
    augment = build_train_augmentation({"kind": "multiscale", "min_sizes": [min_size], "hflip": 0.0})
    out_image, out = augment(torch.rand(3, H, W), target)
    h, w = int(H * scale), int(W * scale)
    assert out_image.shape == (3, h, w)
    # A mask pixel is set where its centre falls on the input mask (nearest neighbour on pixel centres).
    x0, x1 = centre_rule_span(box[0], box[2], scale, w)
    y0, y1 = centre_rule_span(box[1], box[3], scale, h)
    assert torch.equal(out["masks"][0], rect_mask(h, w, (x0, y0, x1, y1)))
    assert out["boxes"].tolist() == [[x0, y0, x1, y1]]
    assert out["area"].tolist() == [(x1 - x0) * (y1 - y0)]
    s = float(scale)
    assert out["keypoints"][0].tolist() == [[30.5 * s, 20.5 * s, 2], [25 * s, 15 * s, 2], [0, 0, 0]]
    x, y = out["keypoints"][0, 0, :2].floor().long().tolist()
    assert out["masks"][0, y, x] == 1, "the keypoint stays on its instance's pixels"
    assert_consistent(out_image, out)


@pytest.mark.parametrize(("shape", "min_sizes", "max_size"), [((480, 640), (640,), 1333), ((427, 640), (800,), 1333),
                                                             ((100, 400), (200,), 600), ((333, 500), (704,), 1000)])  # fmt: skip
def test_multiscale_sizes_are_torchvisions(shape, min_sizes, max_size):
    H, W = shape
    target = make_target(H, W, [(0, 0, W, H)])  # a whole-image instance: its box is the output size
    spec = {"kind": "multiscale", "min_sizes": list(min_sizes), "max_size": max_size, "hflip": 0}
    augment = build_train_augmentation(spec)
    out_image, out = augment(torch.rand(3, H, W), target)
    reference = v2.RandomShortestSize(min_size=list(min_sizes), max_size=max_size)(tv_tensors.Image(torch.rand(3, H, W)))
    assert out_image.shape == reference.shape
    assert out["boxes"].tolist() == [[0, 0, out_image.shape[2], out_image.shape[1]]]


def test_multiscale_draws_every_size():
    augment = build_train_augmentation({"kind": "multiscale", "min_sizes": [64, 96, 128], "max_size": 1000, "hflip": 0})
    generator = seeded(0)
    sizes = {augment(torch.rand(3, 32, 48), make_target(32, 48, []), generator=generator)[0].shape[1] for _ in range(40)}
    assert sizes == {64, 96, 128}


def test_lsj_scales_then_pads_to_the_fixed_size():
    H, W, size = 100, 200, 100
    image = torch.rand(3, H, W)
    target = make_target(H, W, [(20, 10, 60, 50)], keypoints=[[(30.5, 20.5, 2), (25, 15, 1), (0, 0, 0)]])
    fill = (0.25, 0.5, 0.75)
    augment = build_train_augmentation({"kind": "lsj", "lsj_size": size, "lsj_scale": [1.0, 1.0], "hflip": 0}, pad_fill=fill)
    out_image, out = augment(image, target)
    # Fit into 100 x 100 (x 0.5), then pad the bottom 50 rows.
    assert out_image.shape == (3, size, size)
    assert torch.equal(out_image[:, 50:], torch.tensor(fill)[:, None, None].expand(3, 50, size))
    assert torch.allclose(out_image[:, :50], v2.functional.resize(image, [50, 100], antialias=True))
    assert torch.equal(out["masks"][0], rect_mask(size, size, (10, 5, 30, 25)))
    assert out["boxes"].tolist() == [[10, 5, 30, 25]] and out["area"].tolist() == [400]
    assert out["keypoints"][0].tolist() == [[15.25, 10.25, 2], [12.5, 7.5, 1], [0, 0, 0]]
    assert_consistent(out_image, out)


@pytest.mark.parametrize("scale", [0.1, 0.37, 1.0, 1.6, 2.0])
def test_lsj_sizes_are_torchvisions_scale_jitter(scale):
    H, W, size = 480, 640, 512
    target = make_target(H, W, [(0, 0, W, H)])
    augment = build_train_augmentation({"kind": "lsj", "lsj_size": size, "lsj_scale": [scale, scale], "hflip": 0})
    out_image, out = augment(torch.rand(3, H, W), target, generator=seeded(1))
    reference = v2.ScaleJitter(target_size=(size, size), scale_range=(scale, scale))(tv_tensors.Image(torch.rand(3, H, W)))
    h, w = reference.shape[-2:]
    assert out_image.shape == (3, size, size)
    assert out["boxes"].tolist() == [[0, 0, min(w, size), min(h, size)]]


def test_lsj_crop_moves_instances_and_drops_the_ones_it_empties():
    H, W, size = 100, 200, 100
    image = torch.zeros(3, H, W)
    image[0] = torch.arange(W, dtype=torch.float32) / 1000  # channel 0 encodes the column: reads back the crop
    boxes = [(0, 10, 20, 30), (90, 40, 110, 60), (180, 70, 200, 90)]
    target = make_target(H, W, boxes, keypoints=[[(10.5, 20.5, 2)], [(100.5, 50.5, 2)], [(190.5, 80.5, 2)]])
    # Scale 2 of "fit into 100 x 100" is exactly 1: the image is only cropped, at a left edge in 0..100.
    augment = build_train_augmentation({"kind": "lsj", "lsj_size": size, "lsj_scale": [2.0, 2.0], "hflip": 0})
    outcomes = set()
    for seed in range(60):
        out_image, out = augment(image, target, generator=seeded(seed))
        left = round(out_image[0, 0, 0].item() * 1000)
        assert torch.allclose(out_image, image[:, :, left : left + size])
        kept = [i for i, (x0, _, x1, _) in enumerate(boxes) if x1 > left and x0 < left + size]
        assert out["labels"].tolist() == [i + 1 for i in kept]
        assert torch.equal(out["masks"], target["masks"][kept][:, :, left : left + size])
        for row, i in enumerate(kept):
            x0, y0, x1, y1 = boxes[i]
            assert out["boxes"][row].tolist() == [max(x0 - left, 0), y0, min(x1 - left, size), y1]
            x, y, _ = target["keypoints"][i, 0].tolist()
            inside = 0 <= x - left <= size
            assert out["keypoints"][row, 0].tolist() == ([x - left, y, 2] if inside else [0, 0, 0])
        assert_consistent(out_image, out)
        outcomes.add((0 in kept, 2 in kept, bool(kept) and out["keypoints"][0, 0, 2].item() == 0))
    # Both the left and the right instance were cut away in some crops and kept in others, and the left one
    # was kept with its keypoint cut away (crops starting at 11..19).
    assert {o[0] for o in outcomes} == {True, False} and {o[1] for o in outcomes} == {True, False}
    assert (True, False, True) in outcomes


def test_degenerate_input_instances_are_dropped_with_all_their_fields():
    H, W = 30, 40
    target = make_target(H, W, [(2, 2, 10, 10), (20, 5, 30, 25)], keypoints=[[(5, 5, 2)], [(25, 10, 2)]], labels=[3, 4])
    target["masks"][0] = 0  # an instance without pixels
    for kind in ("flip", "multiscale", "lsj"):
        spec = {"kind": kind, "hflip": 0, "min_sizes": [30], "max_size": 100, "lsj_size": 40, "lsj_scale": [1, 1]}
        out_image, out = build_train_augmentation(spec)(torch.rand(3, H, W), target)
        assert out["labels"].tolist() == [4], kind
        assert out["keypoints"].shape == (1, 1, 3) and out["keypoints"][0, 0, 2] == 2, kind
        assert_consistent(out_image, out)


@pytest.mark.parametrize("kind", ["none", "flip", "multiscale", "lsj"])
def test_an_image_without_instances(kind):
    target = make_target(48, 64, [])
    target["keypoints"] = torch.zeros(0, 3, 3)
    spec = {"kind": kind, "hflip": 1.0, "min_sizes": [96], "lsj_size": 80}
    out_image, out = build_train_augmentation(spec, flip_indices=FLIP)(torch.rand(3, 48, 64), target, generator=seeded(0))
    H, W = out_image.shape[-2:]
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, H, W) and out["keypoints"].shape == (0, 3, 3)
    assert out["labels"].shape == (0,) and out["area"].shape == (0,)


def test_none_is_the_identity():
    image, target = torch.rand(3, 20, 30), make_target(20, 30, [(1, 2, 3, 4)])
    out_image, out = build_train_augmentation(AugmentationConfig())(image, target)
    assert out_image is image and out.keys() == target.keys()
    assert all(out[key] is target[key] for key in target)


def test_boxes_without_masks_follow_torchvisions_geometry():
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0], [0.0, 0.0, 5.0, 100.0]]), "labels": torch.tensor([1, 2])}
    augment = build_train_augmentation({"kind": "lsj", "lsj_size": 100, "lsj_scale": [1.0, 1.0], "hflip": 1.0})
    _, out = augment(torch.rand(3, 100, 200), target)
    # Flip (x -> 200 - x), then x 0.5: the thin box becomes 2.5 px wide and is kept.
    assert out["boxes"].tolist() == [[70, 5, 90, 25], [97.5, 0, 100, 50]]
    assert out["area"].tolist() == [400, 125] and out["labels"].tolist() == [1, 2]


def test_seeded_runs_repeat_and_the_global_rng_is_left_alone():
    H, W = 60, 80
    images = [torch.rand(3, H, W) for _ in range(4)]
    targets = [make_target(H, W, [(5 * i, 5, 5 * i + 30, 40), (40, 10 + i, 70, 50)]) for i in range(4)]
    augment = build_train_augmentation({"kind": "lsj", "lsj_size": 64, "copy_paste": 1.0})

    def run(seed):
        generator = seeded(seed)
        pairs = [augment(image, target, generator=generator) for image, target in zip(images, targets)]
        return copy_paste([p[0] for p in pairs], [p[1] for p in pairs], probability=1.0, generator=generator)

    state = torch.get_rng_state()
    first, again, other = run(5), run(5), run(6)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first[0], again[0]):
        assert torch.equal(a, b)
    for a, b in zip(first[1], again[1]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert any(not torch.equal(a, b) for a, b in zip(first[0], other[0]))
    # Without a generator, torch's global seed repeats a run.
    torch.manual_seed(11)
    one = augment(images[0], targets[0])
    torch.manual_seed(11)
    two = augment(images[0], targets[0])
    assert torch.equal(one[0], two[0]) and torch.equal(one[1]["masks"], two[1]["masks"])


def test_copy_paste_removes_exactly_the_pasted_pixels_underneath():
    H, W = 64, 64
    image_a, image_b = torch.full((3, H, W), 0.25), torch.full((3, H, W), 0.75)
    # a: an object, and a second one that b's object covers completely; b: one object over a's right side.
    target_a = make_target(H, W, [(10, 10, 40, 40), (30, 12, 34, 16)], keypoints=[[(15.5, 15.5, 2), (35.5, 35.5, 2)],
                           [(31, 13, 2), (0, 0, 0)]], labels=[1, 2])  # fmt: skip
    target_b = make_target(H, W, [(25, 0, 64, 64)], keypoints=[[(40, 30, 2), (50, 50, 1)]], labels=[3])
    images, targets = copy_paste([image_a, image_b], [target_a, target_b], probability=1.0, generator=seeded(0))
    covered = rect_mask(H, W, (25, 0, 64, 64)).bool()
    # a: b's pixels replace a's exactly where b's object is.
    assert torch.equal(images[0], torch.where(covered, image_b, image_a))
    out = targets[0]
    assert out["labels"].tolist() == [1, 3], "the fully covered object is dropped, the pasted one appended"
    assert torch.equal(out["masks"][0], rect_mask(H, W, (10, 10, 40, 40)) * ~covered)
    assert torch.equal(out["masks"][0], rect_mask(H, W, (10, 10, 25, 40)))
    assert out["boxes"].tolist() == [[10, 10, 25, 40], [25, 0, 64, 64]]
    assert out["area"].tolist() == [15 * 30, 39 * 64]
    assert out["keypoints"].tolist() == [[[15.5, 15.5, 2], [0, 0, 0]], [[40, 30, 2], [50, 50, 1]]]
    assert out["image_id"] == 42 and out["iscrowd"].tolist() == [0, 0]
    assert_consistent(images[0], out)
    # b gets a's objects as they were before any paste (both, or one of them): b's object loses their pixels.
    pasted = targets[1]["labels"].tolist()[1:]
    assert targets[1]["labels"].tolist()[0] == 3 and pasted in ([1], [2], [1, 2])
    masks_a = torch.stack([rect_mask(H, W, (10, 10, 40, 40)), rect_mask(H, W, (30, 12, 34, 16))])
    under = masks_a[[p - 1 for p in pasted]].bool().any(0)
    assert torch.equal(targets[1]["masks"][0], rect_mask(H, W, (25, 0, 64, 64)) * ~under)
    assert torch.equal(images[1], torch.where(under, image_a, image_b))
    assert_consistent(images[1], targets[1])
    # The inputs are untouched.
    assert target_a["labels"].tolist() == [1, 2] and target_a["masks"][0].sum() == 900


def test_copy_paste_pastes_a_random_nonempty_subset_from_another_image():
    H, W = 32, 32
    images = [torch.full((3, H, W), float(i)) for i in range(3)]
    targets = [make_target(H, W, [(0, 0, 4, 4), (8, 8, 12, 12), (16, 16, 20, 20), (24, 24, 28, 28)],
                           labels=[10 * i + 1, 10 * i + 2, 10 * i + 3, 10 * i + 4]) for i in range(3)]  # fmt: skip
    generator, subsets = seeded(0), set()
    for _ in range(30):
        _, out = copy_paste(images, targets, probability=1.0, generator=generator)
        for i, target in enumerate(out):
            labels = target["labels"].tolist()
            sources = {label // 10 for label in labels if label // 10 != i}
            own = [label % 10 for label in labels if label // 10 == i]
            pasted = [label % 10 for label in labels if label // 10 != i]
            assert len(sources) == 1 and 1 <= len(pasted) <= 4, "a non-empty subset of one other image"
            (j,) = sources
            assert labels == [10 * i + k for k in own] + [10 * j + k for k in pasted]
            # The objects sit at the same places in every image: a pasted one covers its twin completely.
            assert own == sorted({1, 2, 3, 4} - set(pasted))
            assert_consistent(images[i], target)
            subsets.add(len(pasted))
    assert subsets == {1, 2, 3, 4}


def test_copy_paste_probability_and_errors():
    image, target = torch.rand(3, 16, 16), make_target(16, 16, [(0, 0, 8, 8)])
    images, targets = copy_paste([image, image.clone()], [target, target], probability=0.0)
    assert images[0] is image and torch.equal(targets[0]["boxes"], target["boxes"])
    assert copy_paste([image], [target], probability=1.0)[1][0]["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="one size"):
        copy_paste([image, torch.rand(3, 16, 20)], [target, make_target(16, 20, [(0, 0, 8, 8)])], probability=1.0)
    with pytest.raises(ValueError, match="no masks"):
        copy_paste([image, image], [target, {"boxes": target["boxes"], "labels": target["labels"]}], probability=1.0)
    with pytest.raises(ValueError, match="has the fields"):
        copy_paste([image, image], [target, make_target(16, 16, [(0, 0, 8, 8)], keypoints=[[(1, 1, 2)]])], probability=1.0)
    with pytest.raises(ValueError, match="probability"):
        copy_paste([image, image], [target, target], probability=1.5)


def test_config_round_trips_and_rejects_bad_values():
    config = AugmentationConfig(kind="lsj", copy_paste=1.0)
    data = config.to_dict()
    assert data == {"kind": "lsj", "min_sizes": [640, 672, 704, 736, 768, 800], "max_size": 1333,
                    "lsj_scale": [0.1, 2.0], "lsj_size": 1024, "hflip": 0.5, "copy_paste": 1.0}  # fmt: skip
    assert AugmentationConfig.from_dict(data) == config
    assert AugmentationConfig.from_dict({"kind": "multiscale", "min_sizes": [800]}).min_sizes == (800,)
    bad = [({"kind": "mosaic"}, "augmentation.kind"), ({"colour": 1}, "unknown key"),
           ({"kind": "flip", "copy_paste": 0.5}, "only kind 'lsj'"), ({"lsj_scale": [2.0, 1.0]}, "lsj_scale"),
           ({"lsj_scale": [0.1]}, "expected 2 values"), ({"hflip": 2}, "augmentation.hflip"),
           ({"min_sizes": [800], "max_size": 600}, "max_size"), ({"min_sizes": []}, "min_sizes")]  # fmt: skip
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            AugmentationConfig.from_dict(data)
    with pytest.raises(ValueError, match="float or uint8 image"):
        build_train_augmentation({"kind": "flip"})(torch.zeros(3, 4, 4, dtype=torch.int64), make_target(4, 4, []))


def test_mask_areas_equal_the_plain_pixel_count():
    """The word-at-a-time count equals ``sum`` for every layout: widths not a multiple of 8, bool, views that
    cannot be read as int64 words, masks of all ones (the largest lane sums), no masks."""
    from mrcnn.data.augment import mask_areas

    generator = torch.Generator().manual_seed(0)
    cases = [torch.rand(n, h, w, generator=generator) > p for n, h, w, p in
             [(3, 1024, 1024, 0.5), (5, 800, 1066, 0.7), (2, 427, 641, 0.3), (4, 7, 9, 0.5), (1, 1, 8, 0.5)]]  # fmt: skip
    cases += [torch.ones(2, 512, 512, dtype=torch.bool), torch.zeros(0, 16, 16, dtype=torch.bool)]
    for masks in cases:
        expected = masks.flatten(1).sum(dim=1, dtype=torch.int64)
        for layout in (masks, masks.to(torch.uint8), masks.to(torch.uint8)[:, :, 1:], masks.to(torch.uint8).flip(2)):
            if layout.shape[-1] == 0:
                continue
            areas = mask_areas(layout)
            assert areas.dtype == torch.int32
            assert torch.equal(areas.long(), layout.flatten(1).sum(dim=1, dtype=torch.int64)), tuple(layout.shape)
        assert torch.equal(mask_areas(masks).long(), expected)
    offset = torch.ones(1, 4 * 64 + 1, dtype=torch.uint8)[:, 1:].view(1, 4, 64)  # storage offset 1: not word-aligned
    assert mask_areas(offset).tolist() == [256]


@pytest.mark.parametrize("kind", ["flip", "multiscale", "lsj"])
def test_a_uint8_image_moves_as_its_float_copy_does(kind):
    """``mrcnn train`` augments uint8 pixels: the same draws give the same geometry (masks, boxes, keypoints
    bit for bit) and pixels within uint8's rounding of the float path's, LSJ's padding included."""
    H, W = 60, 90
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=generator)
    target = make_target(H, W, [(5, 5, 40, 30), (50, 20, 85, 55)], keypoints=[[(10.5, 10.5, 2)], [(60.5, 30.5, 1)]])
    spec = {"kind": kind, "min_sizes": [64, 96], "max_size": 200, "lsj_size": 80, "lsj_scale": [0.5, 1.5], "hflip": 0.5}
    augment = build_train_augmentation(spec, flip_indices=[0], pad_fill=(0.485, 0.456, 0.406))
    for seed in range(6):
        image_u8, out_u8 = augment(pixels, target, generator=seeded(seed))
        image_f, out_f = augment(pixels.float() / 255, target, generator=seeded(seed))
        assert image_u8.dtype == torch.uint8 and image_u8.shape == image_f.shape
        assert (image_u8.float() / 255 - image_f).abs().max() <= 1 / 255 + 1e-6, (kind, seed)
        for key in ("masks", "boxes", "keypoints", "area", "labels"):
            assert torch.equal(out_u8[key], out_f[key]), (kind, seed, key)
