"""mrcnn: Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017) on torchvision's detection components.

The library part of the project: pure torch/torchvision/pycocotools, no Ray, no MLflow.

    from mrcnn.config import get_preset
    from mrcnn.modeling import build_model
    from mrcnn.predictor import Predictor
"""

__version__ = "0.1.0"
