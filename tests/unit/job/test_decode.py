"""Decoding: every input becomes pixels or a status; limits are checked before decoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import gradient, image_bytes
from xai_pipeline.job.decode import DecodeLimits, decode_batch, decode_image
from xai_pipeline.schema import Status

SIZE = 32


def _decode(data: bytes, limits: DecodeLimits = DecodeLimits()):
    return decode_image(data, SIZE, limits)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF"])
def test_common_formats_decode_to_square_rgb(fmt: str) -> None:
    out = _decode(image_bytes(gradient(), fmt))
    assert out.status is Status.OK, out.error
    assert out.pixels is not None and out.pixels.shape == (3, SIZE, SIZE) and out.pixels.dtype == np.uint8
    assert (out.width, out.height) == (64, 48)


def test_empty_bytes() -> None:
    assert _decode(b"").status is Status.EMPTY


def test_text_and_html_are_not_images() -> None:
    assert _decode(b"just some text\n" * 10).status is Status.NOT_AN_IMAGE
    html = b"<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>"
    assert _decode(html).status is Status.NOT_AN_IMAGE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(fmt: str) -> None:
    data = image_bytes(gradient(256, 256), fmt)
    out = _decode(data[: len(data) // 2])
    assert out.status is Status.TRUNCATED, out.error


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_too_large_before_decoding() -> None:
    out = _decode(_png_header_only(50000, 50000))
    assert out.status is Status.TOO_LARGE
    modest = _decode(_png_header_only(15000, 10000), DecodeLimits(max_pixels=10_000_000))
    assert modest.status is Status.TOO_LARGE and (modest.width, modest.height) == (15000, 10000)


def test_pixel_and_byte_limits_are_configurable() -> None:
    data = image_bytes(gradient(100, 100), "PNG")
    assert _decode(data, DecodeLimits(max_pixels=99 * 100)).status is Status.TOO_LARGE
    assert _decode(data, DecodeLimits(max_bytes=len(data) - 1)).status is Status.TOO_LARGE
    assert _decode(data, DecodeLimits(max_pixels=100 * 100)).status is Status.OK


def test_sixteen_bit_grayscale_is_stretched() -> None:
    ramp = np.linspace(1000, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data
    out = _decode(image_bytes(Image.fromarray(ramp), "PNG"))
    assert out.status is Status.OK
    assert out.pixels.min() <= 5 and out.pixels.max() >= 250  # full 8-bit range, not >>8


def test_palette_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    out = _decode(image_bytes(img, "PNG", transparency=0))
    assert out.status is Status.OK
    assert out.pixels.min() == 255  # fully transparent black → white


def test_cmyk_jpeg() -> None:
    out = _decode(image_bytes(gradient(mode="CMYK"), "JPEG"))
    assert out.status is Status.OK and out.pixels.shape == (3, SIZE, SIZE)


def test_exif_rotation_is_applied_and_reported() -> None:
    img = gradient(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = _decode(image_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.status is Status.OK
    assert (out.width, out.height) == (20, 60)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 255, 255), (0, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = _decode(buf.getvalue())
    assert out.status is Status.OK and out.pixels.min() > 200


def test_dicom_and_svg_are_unsupported_with_a_hint() -> None:
    dicom = b"\x00" * 128 + b"DICM" + b"\x02\x00" * 50
    out = _decode(dicom)
    assert out.status is Status.UNSUPPORTED and "DICOM" in out.error
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    assert _decode(svg).status is Status.UNSUPPORTED


def test_extreme_aspect_and_single_pixel() -> None:
    assert _decode(image_bytes(gradient(2000, 10), "PNG")).status is Status.OK
    assert _decode(image_bytes(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")).status is Status.OK


def test_batch_has_one_row_per_input_with_zero_pixels_for_errors() -> None:
    good = image_bytes(gradient(), "PNG")
    batch = {
        "uri": np.array(["file:///a.png", "file:///b.png", "file:///c.png", "file:///d.png"], dtype=object),
        "size": np.array([len(good), 0, 4, 99]),
        "etag": np.array(["", "", "", ""], dtype=object),
        "bytes": np.array([good, b"", b"nope", b""], dtype=object),
        "read_status": np.array(["", "", "", "missing"], dtype=object),
        "read_error": np.array(["", "", "", "gone"], dtype=object),
    }
    out = decode_batch(batch, SIZE)
    assert list(out["status"]) == ["ok", "empty", "not_an_image", "missing"]
    assert out["error"][3] == "gone"
    assert out["pixels"].shape == (4, 3, SIZE, SIZE)
    assert out["pixels"][1:].max() == 0
    assert len(set(out["figure_id"])) == 4
    assert list(out["size"]) == [len(good), 0, 4, 99]
