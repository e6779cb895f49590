"""Online segmentation: a Ray Serve application with a FastAPI ingress (``mrcnn serve``).

One deployment, ``SegmentationService``. Each replica loads the model once (in its constructor,
never at import time), decodes and checks every request itself, and groups concurrent requests into
one forward pass with ``@serve.batch``. The same :class:`mrcnn.predictor.Predictor` as ``mrcnn
predict`` does the work (``predict_each``), so a request gives the detections ``mrcnn predict``
gives for that file.

The package, one thing a module:

- :mod:`~pipelines.serve.config`: :class:`ServeConfig` (builder args, ``mrcnn serve``'s flags) and
  the Serve deployment options it gives;
- :mod:`~pipelines.serve.requests`: HTTP parsing and limits (query, content type, body size,
  multipart, the image, the token), pure and tested without Serve;
- :mod:`~pipelines.serve.deployment`: the model layer of a replica (model, batching, counters);
- :mod:`~pipelines.serve.api`: the HTTP layer (the FastAPI routes, the web page in ``web/``);
- :mod:`~pipelines.serve.app`: the two bound into the deployment, and :func:`build_app` (also the
  ``import_path`` of ``serve_config.yaml`` and of ``serve run pipelines.serve:build_app model=...``);
- :mod:`~pipelines.serve.run`: :func:`run_server`, which is ``mrcnn serve``.
"""

from pipelines.serve.api import WEB_PAGE, build_api
from pipelines.serve.app import SegmentationService, build_app
from pipelines.serve.config import TOKEN_ENV, ServeConfig, deployment_options
from pipelines.serve.deployment import BatchStats, SegmentationModel
from pipelines.serve.requests import ApiError, SegmentQuery, bearer_token_ok, check_content_type, decode_request_image
from pipelines.serve.requests import instances_json, parse_segment_query
from pipelines.serve.run import run_server

__all__ = [
    "TOKEN_ENV",
    "WEB_PAGE",
    "ApiError",
    "BatchStats",
    "SegmentQuery",
    "SegmentationModel",
    "SegmentationService",
    "ServeConfig",
    "bearer_token_ok",
    "build_api",
    "build_app",
    "check_content_type",
    "decode_request_image",
    "deployment_options",
    "instances_json",
    "parse_segment_query",
    "run_server",
]
