"""A corpus of bad and unusual inputs, generated (nothing is checked in), with the outcome each
must have: a decoded figure (``ok``) or an error row of a given kind."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: str  # expected status
    width: int | None = None  # expected reported width/height (after EXIF orientation), if known
    height: int | None = None


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=2)
    return Image.fromarray((base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def bad_inputs() -> list[Case]:
    """Every case named by the reliability issue, plus a few more."""
    photo = _photo()
    jpeg = _save(photo, "JPEG", quality=90)
    png = _save(photo, "PNG")
    gray16 = Image.fromarray(np.linspace(0, 4095, 96 * 64).reshape(64, 96).astype(np.uint16))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    animated = io.BytesIO()
    frames = [_photo(40, 30).convert("P"), Image.new("P", (40, 30))]
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    multipage = io.BytesIO()
    photo.save(multipage, format="TIFF", save_all=True, append_images=[_photo(50, 20)])
    exif = Image.Exif()
    exif[0x0112] = 6
    dicom = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4
    svg = b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><circle cx="20" cy="20" r="10"/></svg>'
    return [
        Case("zero-byte.jpg", b"", "empty"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated"),
        Case("truncated.png", png[: len(png) // 2], "truncated"),
        Case("readme.png", b"This is a text file with an image name.\n" * 20, "not_an_image"),
        Case("error-page.jpg", b"<!DOCTYPE html><html><head><title>503</title></head><body>Service Unavailable</body></html>", "not_an_image"),
        Case("bomb.png", _png_bomb(50000, 50000), "too_large"),
        Case("gray16.png", _save(gray16, "PNG"), "ok", 96, 64),
        Case("gray16.tif", _save(gray16, "TIFF"), "ok", 96, 64),
        Case("cmyk.jpg", _save(photo.convert("CMYK"), "JPEG"), "ok", 96, 64),
        Case("palette-transparent.png", _save(palette, "PNG", transparency=0), "ok", 96, 64),
        Case("animated.gif", animated.getvalue(), "ok", 40, 30),
        Case("multipage.tif", multipage.getvalue(), "ok", 96, 64),
        Case("exif-rotated.jpg", _save(photo, "JPEG", exif=exif.tobytes()), "ok", 64, 96),
        Case("one-pixel.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok", 1, 1),
        Case("strip.png", _save(_photo(20000, 10), "PNG"), "ok", 20000, 10),
        Case("scan.dcm", dicom, "unsupported"),
        Case("vector.svg", svg, "unsupported"),
        Case("photo.webp", _save(photo, "WEBP"), "ok", 96, 64),
        Case("grayscale-alpha.png", _save(photo.convert("LA"), "PNG"), "ok", 96, 64),
    ]
