"""Matplotlib figures written as PNG files, atomically, without pyplot (no global figure state)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common.storage import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_png(figure: Figure, path: str | os.PathLike) -> Path:
    """Lay out ``figure`` (``tight_layout``) and write it as a PNG to ``path`` (a local path or URI), atomically.

    Returns:
        ``Path(path)``; parent folders are created as needed.
    """
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_atomic(path, png.getvalue())
    return Path(path)
