"""Data layer: image decoding, RLE masks, categories, keypoints, COCO loading, targets, transforms, augmentations,
synthetic data.

Pure numpy/PIL/pycocotools/torch; no Ray, no MLflow.
"""

from mrcnn.data.augment import AugmentationConfig, TrainAugmentation, build_train_augmentation
from mrcnn.data.copy_paste import copy_paste
from mrcnn.data.categories import Category, CategoryMap
from mrcnn.data.coco import (
    AnnotationRecord,
    CocoLoadResult,
    ImageRecord,
    RecordError,
    Reject,
    load_coco,
    validate_annotation,
)
from mrcnn.data.dataset import (
    CocoInstanceDataset,
    build_target,
    build_target_from_columns,
    collate_detection,
    image_to_tensor,
)
from mrcnn.data.images import ImageDecodeError, decode_image, image_size, load_image
from mrcnn.data.keypoints import (
    COCO_PERSON_KEYPOINTS,
    COCO_PERSON_SKELETON,
    KeypointError,
    flip_indices,
    parse_keypoints,
)
from mrcnn.data.masks import (
    SegmentationError,
    mask_to_rle,
    masks_to_rles,
    rle_area,
    rle_to_bbox_xyxy,
    rle_to_mask,
    rles_to_masks,
    segmentation_to_rle,
)
from mrcnn.data.synthetic import (
    SHAPE_CLASSES,
    make_synthetic_coco,
    render_synthetic_image,
    synthetic_categories,
)
from mrcnn.data.synthetic_keypoints import (
    make_synthetic_keypoints_coco,
    render_keypoint_image,
    synthetic_keypoint_categories,
)
from mrcnn.data.transforms import Compose, RandomHorizontalFlip, Resize, resized_shape

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "COCO_PERSON_SKELETON",
    "SHAPE_CLASSES",
    "AnnotationRecord",
    "AugmentationConfig",
    "Category",
    "CategoryMap",
    "CocoInstanceDataset",
    "CocoLoadResult",
    "Compose",
    "ImageDecodeError",
    "ImageRecord",
    "KeypointError",
    "RandomHorizontalFlip",
    "RecordError",
    "Reject",
    "Resize",
    "SegmentationError",
    "TrainAugmentation",
    "build_target",
    "build_target_from_columns",
    "build_train_augmentation",
    "collate_detection",
    "copy_paste",
    "decode_image",
    "flip_indices",
    "image_size",
    "image_to_tensor",
    "load_coco",
    "load_image",
    "make_synthetic_coco",
    "make_synthetic_keypoints_coco",
    "mask_to_rle",
    "masks_to_rles",
    "parse_keypoints",
    "render_keypoint_image",
    "render_synthetic_image",
    "resized_shape",
    "rle_area",
    "rle_to_bbox_xyxy",
    "rle_to_mask",
    "rles_to_masks",
    "segmentation_to_rle",
    "synthetic_categories",
    "synthetic_keypoint_categories",
    "validate_annotation",
]
