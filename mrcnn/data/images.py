"""Image decoding: encoded bytes in, HxWx3 uint8 RGB out.

Every image that enters the model passes through :func:`decode_image`, so the rules for
EXIF orientation, colour modes and broken files live in one place:

- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so ``H, W`` are the
  displayed size. :func:`image_size` reports the same size from the header alone.
- Every PIL mode becomes 8-bit RGB (see :func:`decode_image` for the per-mode rules).
- Broken input raises :class:`ImageDecodeError`, which names the source and carries a
  short ``reason`` code, so a pipeline can count rejects by reason.

Truncated files are errors. This module never turns on
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``; if other code in the process has turned it on,
PIL pads truncated files silently and :func:`decode_image` refuses to run (see
:func:`decode_image`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["ImageDecodeError", "decode_image", "image_size", "load_image"]

DEFAULT_MAX_PIXELS = 100_000_000

# EXIF orientations 5..8 swap height and width (transpose, rotate 90/270, transverse).
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATIONS_THAT_SWAP_AXES = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """An image could not be turned into pixels.

    Attributes:
        source (str): where the bytes came from (a path, a record id, or ``"<bytes>"``).
        reason (str): short stable code, one of ``empty``, ``missing_file``,
            ``unreadable_file``, ``not_an_image``, ``truncated``, ``zero_size``,
            ``too_many_pixels``, ``unsupported_mode``, ``truncated_loading_enabled``.
    """

    def __init__(self, message: str, *, source: str, reason: str) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


def _fail(source: str, reason: str, detail: str) -> ImageDecodeError:
    return ImageDecodeError(f"{source}: {detail}", source=source, reason=reason)


def _open_header(data: bytes, *, source: str, max_pixels: int | None) -> Image.Image:
    """Open the image lazily (header only) and check its size before any pixel decoding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{source}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise _fail(source, "empty", "empty image data (0 bytes)")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as exc:
        raise _fail(
            source,
            "too_many_pixels",
            f"image header declares more pixels than PIL allows ({exc})",
        ) from exc
    except UnidentifiedImageError as exc:
        raise _fail(source, "not_an_image", f"not a recognised image format ({len(data)} bytes)") from exc
    except Exception as exc:  # PIL raises SyntaxError/ValueError/OSError for broken headers
        raise _fail(source, "not_an_image", f"cannot read image header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise _fail(source, "zero_size", f"image has zero size (width={width}, height={height})")
    if max_pixels is not None and width * height > max_pixels:
        raise _fail(
            source,
            "too_many_pixels",
            f"image has {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}",
        )
    return img


def _exif_orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; 1 (upright) when absent or unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb_array(img: Image.Image, *, source: str) -> np.ndarray:
    """Convert a loaded PIL image of any mode to a writable HxWx3 uint8 RGB array."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # 16-bit grey (PNG/TIFF; PIL also uses "I" for 16-bit sources): scale 0..65535 -> 0..255
        # by keeping the high byte, so 65535 -> 255 and 32768 -> 128. Out-of-range "I" values
        # are clipped to 0..65535 first.
        values = np.asarray(img).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        # 32-bit float grey: treated as 0..1 when every finite value lies in [0, 1],
        # otherwise as 0..255 and clipped. NaN and inf become 0.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        # Palette transparency is alpha; go through RGBA so PIL resolves it, then drop alpha.
        img = img.convert("RGBA")
    try:
        # RGBA/LA/PA/RGBa/La: alpha is DROPPED (stored colour kept, not composited).
        # L, 1, CMYK, YCbCr, RGBX, ...: PIL's standard conversion.
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise _fail(source, "unsupported_mode", f"cannot convert PIL mode {mode!r} to RGB: {exc}") from exc
    return np.array(rgb, dtype=np.uint8)


def decode_image(
    data: bytes,
    *,
    source: str = "<bytes>",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to RGB pixels.

    Mode rules: L/1 are replicated to three channels; P (palette, with or without
    transparency), RGBA, LA and PA lose their alpha channel (the stored colour is kept, it is
    NOT composited over a background); CMYK/YCbCr use PIL's conversion; 16-bit grey
    (I;16, I;16B, I) is scaled by keeping the high byte (65535 -> 255, 32768 -> 128);
    F is read as 0..1 if all values are in [0, 1], else as 0..255 and clipped. Animated
    images give their first frame.

    Args:
        data (bytes): the encoded file contents.
        source (str): where the bytes came from; used in error messages.
        max_pixels (int | None): refuse images whose header declares more than this many
            pixels, before decoding (decompression-bomb guard). None disables this check;
            PIL's own ``Image.MAX_IMAGE_PIXELS`` guard (2x its value) still applies.

    Returns:
        np.ndarray[H, W, 3] uint8: RGB, EXIF orientation applied, C-contiguous, writable.

    Raises:
        ImageDecodeError: empty data, not an image, truncated or corrupt data, zero size,
            too many pixels, a mode that cannot become RGB, or
            ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` turned on by other code (truncated files
            would then pass silently).
    """
    img = _open_header(data, source=source, max_pixels=max_pixels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise _fail(
            source,
            "truncated_loading_enabled",
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated "
            "images cannot be detected; set it back to False",
        )
    try:
        img.load()  # full decode: truncated or corrupt data fails here, not later
    except Image.DecompressionBombError as exc:
        raise _fail(source, "too_many_pixels", str(exc)) from exc
    except Exception as exc:
        message = str(exc)
        reason = "truncated" if "truncated" in message.lower() else "not_an_image"
        raise _fail(source, reason, f"cannot decode image data ({len(data)} bytes): {message}") from exc
    if _exif_orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return np.ascontiguousarray(_to_rgb_array(img, source=source))


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file and decode it with :func:`decode_image`.

    Args:
        path (str | PathLike): image file.
        max_pixels (int | None): see :func:`decode_image`.

    Returns:
        np.ndarray[H, W, 3] uint8: RGB, EXIF orientation applied.

    Raises:
        ImageDecodeError: every failure, including a missing file (``reason="missing_file"``)
            and an unreadable one (``reason="unreadable_file"``), so callers catch one type.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise _fail(source, "missing_file", "image file not found") from exc
    except OSError as exc:
        raise _fail(source, "unreadable_file", f"cannot read image file: {exc}") from exc
    return decode_image(data, source=source, max_pixels=max_pixels)


def image_size(data: bytes, *, source: str = "<bytes>") -> tuple[int, int]:
    """Displayed size of an encoded image, read from its header where the format allows.

    The size is after EXIF orientation, so it equals ``decode_image(data).shape[:2]``.
    JPEG needs no pixel decoding; PNG with an EXIF chunk after the pixel data may need it.

    Args:
        data (bytes): the encoded file contents.
        source (str): where the bytes came from; used in error messages.

    Returns:
        tuple[int, int]: ``(height, width)`` in pixels.

    Raises:
        ImageDecodeError: empty data, not an image, zero size.
    """
    img = _open_header(data, source=source, max_pixels=None)
    width, height = img.size
    if _exif_orientation(img) in _ORIENTATIONS_THAT_SWAP_AXES:
        width, height = height, width
    return height, width
