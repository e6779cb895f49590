"""The export stage: a model reference (file, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...``) to an
ONNX or TorchScript file, checked against PyTorch before it is written (``mrcnn.export``).

    from pipelines.export import export_model
    summary = export_model("models:/mrcnn-demo@best", fmt="onnx", out="s3://bucket/mrcnn-demo.onnx")

The ``mrcnn export`` verb is ``pipelines.cli.export``. Importing this package is cheap: ``export_model`` and the
rest (torch, pyarrow) load on first use.
"""

from typing import Any

__all__ = ["ExportSummary", "export_model", "load_sample_images"]
_LAZY = {"ExportSummary", "export_model", "load_sample_images"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pipelines.export import model_export

        return getattr(model_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
