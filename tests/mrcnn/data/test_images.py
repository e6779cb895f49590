"""decode_image: colour modes, EXIF orientation and every kind of broken input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from mrcnn.data.images import ImageDecodeError, decode_image, image_size, load_image

from .conftest import PHOTO_PATH


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _decode_error(data: bytes, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, source="sample.img", **kwargs)
    assert "sample.img" in str(info.value)
    return info.value


def test_rgb_photo():
    image = load_image(PHOTO_PATH)
    assert image.shape == (640, 427, 3) and image.dtype == np.uint8
    assert image.flags.c_contiguous and image.flags.writeable
    assert image_size(PHOTO_PATH.read_bytes()) == (640, 427)
    assert 20 < image.mean() < 235


def test_grayscale():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    decoded = decode_image(_encode(Image.fromarray(grey, mode="L")))
    assert decoded.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], grey)


def test_one_bit():
    bits = Image.new("1", (4, 2), 0)
    bits.putpixel((1, 0), 1)
    decoded = decode_image(_encode(bits))
    assert decoded[0, 1].tolist() == [255, 255, 255] and decoded[0, 0].tolist() == [0, 0, 0]


def test_rgba_drops_alpha():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: colour kept, not composited
    rgba[1, 1] = (200, 100, 50, 128)
    decoded = decode_image(_encode(Image.fromarray(rgba, mode="RGBA")))
    assert decoded.shape == (2, 2, 3)
    assert decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[1, 1].tolist() == [200, 100, 50]


def test_grey_alpha():
    la = Image.fromarray(np.stack([np.full((2, 2), 90, np.uint8), np.zeros((2, 2), np.uint8)], axis=2), mode="LA")
    assert decode_image(_encode(la))[0, 0].tolist() == [90, 90, 90]


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette(transparency):
    palette_image = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), mode="P")
    palette_image.putpalette([255, 0, 0, 0, 0, 255, 0, 128, 0] + [0] * (256 * 3 - 9))
    kwargs = {} if transparency is None else {"transparency": transparency}
    decoded = decode_image(_encode(palette_image, **kwargs))
    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[0, 1].tolist() == [0, 0, 255]
    assert decoded[1, 1].tolist() == [0, 128, 0]


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535, 257 * 100]], np.uint16)
    data = _encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data)
    assert decoded[0, :, 0].tolist() == [0, 128, 255, 100]
    assert (decoded[:, :, 0] == decoded[:, :, 2]).all()


def test_cmyk():
    cmyk = Image.new("CMYK", (3, 2), (0, 0, 0, 0))
    cmyk.putpixel((2, 1), (0, 255, 255, 0))
    decoded = decode_image(_encode(cmyk, "TIFF"))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[1, 2].tolist() == [255, 0, 0]


def test_float_mode():
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    decoded = decode_image(_encode(Image.fromarray(values, mode="F"), "TIFF"))
    assert decoded[0, :, 1].tolist() == [0, 128, 255]


def test_exif_orientation_6_rotates_clockwise():
    # Stored 40 wide x 20 high, red block in the stored top-left corner, blue elsewhere.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :] = (0, 0, 255)
    stored[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    assert image_size(data) == (40, 20)
    decoded = decode_image(data)
    assert decoded.shape == (40, 20, 3)
    top_right, top_left = decoded[3, 16].astype(int), decoded[3, 3].astype(int)
    assert top_right[0] > 200 and top_right[2] < 60  # red landed top-right
    assert top_left[2] > 200 and top_left[0] < 60


def test_truncated_jpeg():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = PHOTO_PATH.read_bytes()
    error = _decode_error(data[: len(data) // 2])
    assert error.reason == "truncated"
    assert image_size(data[: len(data) // 2]) == (640, 427)  # the header alone is intact


def test_refuses_when_truncated_loading_is_enabled(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _decode_error(PHOTO_PATH.read_bytes()).reason == "truncated_loading_enabled"


def test_not_an_image_and_empty():
    assert _decode_error(b"this is a text file, not a picture\n").reason == "not_an_image"
    assert _decode_error(b"").reason == "empty"
    with pytest.raises(TypeError):
        decode_image("not bytes")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_zero_pixels_and_too_many_pixels():
    assert _decode_error(_png_header_only(0, 10)).reason in ("zero_size", "not_an_image")
    small = _encode(Image.new("RGB", (20, 20)))
    assert _decode_error(small, max_pixels=399).reason == "too_many_pixels"
    assert decode_image(small, max_pixels=400).shape == (20, 20, 3)
    # A header that declares 100 MP more than max_pixels is refused before any decoding.
    assert _decode_error(_png_header_only(12_000, 10_000)).reason == "too_many_pixels"
    # Far beyond PIL's own bomb limit.
    assert _decode_error(_png_header_only(100_000, 100_000), max_pixels=None).reason == "too_many_pixels"


def test_load_image_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="image file not found") as info:
        load_image(tmp_path / "nope.jpg")
    assert info.value.reason == "missing_file"
    assert str(tmp_path / "nope.jpg") in str(info.value)
