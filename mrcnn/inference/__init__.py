"""Rewrites of a trained model for fast inference, each switched on by an explicit argument.

- ``optimize.py``: BatchNorm folded into the convolutions, channels-last (NHWC) convolutions, and optionally
  Winograd 3x3 convolutions: ``optimize_for_inference(model, channels_last=..., winograd=...)``.
- ``winograd.py``: ``WinogradConv2d``, F(4x4, 3x3) for the CPU, and ``use_winograd`` that installs it.

Nothing here changes the process: the malloc setting under which Winograd pays off
(``mrcnn.runtime.keep_freed_memory``) is the application's call.
"""

from mrcnn.inference.optimize import fold_batchnorm, optimize_for_inference
from mrcnn.inference.winograd import WinogradConv2d, use_winograd, winograd_eligible

__all__ = ["WinogradConv2d", "fold_batchnorm", "optimize_for_inference", "use_winograd", "winograd_eligible"]
