"""The model: backbone + FPN, RPN, RoIAlign poolers, box head, mask head, losses."""

from mrcnn.modeling.mask_rcnn import MaskRCNN, ModelOutput, build_model

__all__ = ["MaskRCNN", "ModelOutput", "build_model"]
