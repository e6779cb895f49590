"""The Serve application: the HTTP layer (:func:`pipelines.serve.api.build_api`) bound to the model
layer (:class:`pipelines.serve.deployment.SegmentationModel`) as one deployment, and :func:`build_app`,
the builder of ``serve_config.yaml`` and ``serve run pipelines.serve:build_app model=...``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from ray import serve

from pipelines.serve.api import build_api
from pipelines.serve.config import TOKEN_ENV, ServeConfig, deployment_options
from pipelines.serve.deployment import SegmentationModel

if TYPE_CHECKING:
    from ray.serve import Application


@serve.deployment
@serve.ingress()
class SegmentationService(SegmentationModel):
    """The deployment: each replica loads the model (:class:`SegmentationModel`), then builds its routes.

    Args:
        config: ``ServeConfig.to_dict()``.
    """

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)


def build_app(args: dict[str, Any] | ServeConfig) -> Application:
    """The Serve application: ``serve run pipelines.serve:build_app model=URI [key=value ...]``.

    Loads nothing: each replica loads the model when Serve starts it.

    Args:
        args: :class:`ServeConfig` fields (strings are converted); a ``ServeConfig`` also works. The
            token defaults to the ``MRCNN_SERVE_TOKEN`` environment variable where this runs.

    Raises:
        ValueError: a bad or unknown field (:meth:`ServeConfig.from_dict`).
    """
    config = args if isinstance(args, ServeConfig) else ServeConfig.from_dict(args)
    if config.token is None and os.environ.get(TOKEN_ENV):
        config = dataclasses.replace(config, token=os.environ[TOKEN_ENV])
    return SegmentationService.options(**deployment_options(config)).bind(config.to_dict())
