"""Bytes → RGB pixels at the model's input size, with a status instead of an exception.

Every input yields a :class:`Decoded`: either ``ok`` with a ``3×S×S`` uint8 array, or an error
kind from :class:`~xai_pipeline.schema.Status` and a message. Limits on bytes and pixels are
checked before any pixel data is decoded, so a decompression bomb costs only its header.

Conversions: the first frame of animated or multi-page files; EXIF orientation applied (the
reported width and height are as displayed); 16-bit and float images stretched from their own
minimum to maximum; transparency composited over white (figures are printed on white); CMYK,
palette and other modes converted to RGB. The whole figure is resized to ``S×S`` (aspect ratio not
kept), which is what the classifier was trained on.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xai_pipeline.job import faults
from xai_pipeline import schema
from xai_pipeline.schema import Status
from xai_pipeline.policies import DecodeLimits
from xai_pipeline.model.panels import split_panels

log = logging.getLogger(__name__)

PANEL_DRAFT = 3  # panels are cut from the figure decoded at no less than this many times the model's input size
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "TIFF", "BMP", "WEBP", "PPM"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class Decoded:
    """A decoded figure, or the error that stopped it. ``image``: RGB at full size (or JPEG-draft
    reduced), from :func:`open_rgb`; ``pixels``: ``3×S×S`` uint8, from :func:`decode_image`;
    for a compound figure, ``panel_boxes`` (k×4, figure pixels) and ``panel_pixels`` (k×3×S×S)."""

    status: Status
    error: str = ""
    width: int = 0
    height: int = 0
    image: Image.Image | None = None
    pixels: np.ndarray | None = None
    panel_boxes: np.ndarray | None = None
    panel_pixels: np.ndarray | None = None


def _sniff_unsupported(data: bytes) -> str | None:
    """Name formats we recognise but do not decode, so they are not called 'not an image'."""
    if len(data) > 132 and data[128:132] == b"DICM":
        return "DICOM files are not decoded; export the figure as PNG or JPEG"
    head = data[:512].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "PDF documents are not decoded; extract the figure as an image"
    if b"<svg" in head and (head.startswith(b"<?xml") or head.startswith(b"<svg")):
        return "SVG vector graphics are not rasterised; render the figure to PNG"
    return None


def _stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float64)
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((array - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        return Image.fromarray(_stretch_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    raise ValueError(f"image mode {mode!r} cannot be converted to RGB")


def open_rgb(data: bytes, limits: DecodeLimits = DecodeLimits(), draft: int | None = None) -> Decoded:
    """Decode one figure to RGB with EXIF orientation applied. Never raises for bad input.

    ``draft``: for JPEGs, let libjpeg downscale in the DCT domain to no less than this size.
    """
    if len(data) == 0:
        return Decoded(Status.EMPTY, "object has zero bytes")
    if len(data) > limits.max_bytes:
        return Decoded(Status.TOO_LARGE, f"{len(data)} bytes exceeds max_bytes={limits.max_bytes}")
    width = height = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > limits.max_pixels:
                    return Decoded(
                        Status.TOO_LARGE,
                        f"{width}×{height} pixels exceeds max_pixels={limits.max_pixels}",
                        width,
                        height,
                    )
                if img.format not in SUPPORTED_FORMATS:
                    return Decoded(Status.UNSUPPORTED, f"image format {img.format} is not supported", width, height)
                if draft and img.format in ("JPEG", "MPO"):
                    img.draft("RGB", (draft, draft))  # DCT-domain downscaling, never below draft
                img.load()  # first frame only
                # Read EXIF only now: for PNG, getexif() decodes the whole image to find it.
                if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                    width, height = height, width
                rgb = _to_rgb(ImageOps.exif_transpose(img))
                rgb.load()
    except Image.DecompressionBombError as exc:
        return Decoded(Status.TOO_LARGE, str(exc), width, height)
    except UnidentifiedImageError:
        reason = _sniff_unsupported(data)
        if reason:
            return Decoded(Status.UNSUPPORTED, reason)
        return Decoded(Status.NOT_AN_IMAGE, "no image format recognised in the object's bytes")
    except ValueError as exc:
        return Decoded(Status.UNSUPPORTED, str(exc), width, height)
    except (OSError, SyntaxError, EOFError) as exc:
        message = str(exc) or type(exc).__name__
        if "decoder" in message and "not available" in message:
            return Decoded(Status.UNSUPPORTED, message, width, height)
        return Decoded(Status.TRUNCATED, f"truncated or corrupt image data: {message}", width, height)
    return Decoded(Status.OK, "", width, height, image=rgb)


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Resize a whole RGB figure to ``size × size`` (aspect not kept) → ``3×S×S`` uint8."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def probe_plain_jpeg(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Decoded | None:
    """Header-only check that a device JPEG decoder can take this figure as the CPU path would:
    a complete baseline or progressive JPEG stream (ends with the EOI marker), RGB or grayscale,
    no EXIF rotation, within the limits. Returns ``ok`` with the size, or ``None``: decode it
    with :func:`decode_image` (which also gives bad inputs their status)."""
    if not 0 < len(data) <= limits.max_bytes or data[:3] != b"\xff\xd8\xff" or not data[-64:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if img.format != "JPEG" or img.mode not in ("RGB", "L") or width * height > limits.max_pixels:
                    return None
                if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                    return None
    except (Image.DecompressionBombError, UnidentifiedImageError, ValueError, OSError, SyntaxError, EOFError):
        return None
    return Decoded(Status.OK, "", width, height)


def decode_image(data: bytes, size: int, limits: DecodeLimits = DecodeLimits(), panels: bool = False) -> Decoded:
    """Decode one figure and resize it to ``size × size``. Never raises for bad input.

    ``panels``: also split the figure into panels (:func:`xai_pipeline.model.panels.split_panels`,
    on the figure decoded at ``PANEL_DRAFT × size`` or more) and resize each panel's crop to
    ``size × size``; a single-panel figure gets no panel arrays."""
    opened = open_rgb(data, limits, draft=size * PANEL_DRAFT if panels else size)
    if opened.image is None:
        return opened
    pixels = to_pixels(opened.image, size)
    found = split_panels(opened.image) if panels else []
    if len(found) < 2:
        return Decoded(Status.OK, "", opened.width, opened.height, pixels=pixels)
    sx, sy = opened.width / opened.image.width, opened.height / opened.image.height
    boxes = np.array([[round(p.x0 * sx), round(p.y0 * sy), round(p.x1 * sx), round(p.y1 * sy)] for p in found], dtype=np.int32)
    crops = np.stack([to_pixels(opened.image.crop(p.as_tuple()), size) for p in found])
    return Decoded(Status.OK, "", opened.width, opened.height, pixels=pixels, panel_boxes=boxes, panel_pixels=crops)


def ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object column of arrays with the same dimensions and different lengths."""
    column = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        column[i] = array
    return column


def decode_batch(batch: dict[str, np.ndarray], size: int, limits: DecodeLimits = DecodeLimits(), defer_jpeg: bool = False,
                 panels: bool = False) -> dict[str, np.ndarray]:
    """The decode stage: fetched rows (``uri``, ``size``, ``etag``, ``bytes``, ``read_status``,
    ``read_error``) → columns for the classifier, with ``pixels`` zero where not ok. A row that
    failed to read keeps its read status.

    ``defer_jpeg``: plain JPEGs (:func:`probe_plain_jpeg`) are not decoded here; their bytes go
    on in ``jpeg_bytes`` (empty for other rows) for the classifier to decode on its device (and
    are not split into panels).

    ``panels``: each decoded figure is split into panels here, in the CPU task; ``panel_boxes``
    (k×4) and ``panel_pixels`` (k×3×S×S) go on per row, k = 0 for single-panel figures.

    Bad inputs get their own statuses from :func:`decode_image`; any other exception while
    decoding one figure (a decoder bug, say) becomes that figure's ``decode_error`` row and the
    rest of the batch goes on."""
    uris = [str(u) for u in batch["uri"]]
    faults.maybe_raise_task("decode", uris)
    n = len(uris)
    pixels = np.zeros((n, 3, size, size), dtype=np.uint8)
    status = np.empty(n, dtype=object)
    error = np.empty(n, dtype=object)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    read_status = batch.get("read_status", np.full(n, "", dtype=object))
    read_error = batch.get("read_error", np.full(n, "", dtype=object))
    deferred = np.full(n, b"", dtype=object)
    panel_boxes = [np.zeros((0, 4), dtype=np.int32)] * n
    panel_pixels = [np.zeros((0, 3, size, size), dtype=np.uint8)] * n
    for i, data in enumerate(batch["bytes"]):
        if read_status[i]:
            status[i], error[i] = read_status[i], read_error[i]
            continue
        data = bytes(data)
        try:
            faults.maybe_delay("decode", uris[i])
            faults.maybe_raise("decode", uris[i])
            result = probe_plain_jpeg(data, limits) if defer_jpeg else None
            if result is not None:
                deferred[i] = data
            else:
                result = decode_image(data, size, limits, panels=panels)
        except Exception as exc:  # noqa: BLE001 - errors are data: one figure's failure is its row
            log.warning("decode %s: %s: %s", uris[i], type(exc).__name__, exc)
            result = Decoded(Status.DECODE_ERROR, f"{type(exc).__name__}: {exc}"[:1000])
        status[i], error[i] = result.status.value, result.error
        width[i], height[i] = result.width, result.height
        if result.pixels is not None:
            pixels[i] = result.pixels
        if result.panel_boxes is not None and result.panel_pixels is not None:
            panel_boxes[i], panel_pixels[i] = result.panel_boxes, result.panel_pixels
    columns = {
        schema.FIGURE_ID: np.array([schema.figure_id(u) for u in uris], dtype=object),
        schema.SOURCE_URI: np.array(uris, dtype=object),
        schema.ETAG: np.array([schema.normalize_etag(e) for e in batch["etag"]], dtype=object),
        schema.SIZE: np.array([-1 if s is None or s != s else int(s) for s in batch["size"]], dtype=np.int64),  # -1: unknown
        schema.WIDTH: width,
        schema.HEIGHT: height,
        schema.STATUS: status,
        schema.ERROR: error,
        schema.PIXELS: pixels,
    }
    if defer_jpeg:
        columns[schema.JPEG_BYTES] = deferred
    if panels:
        columns[schema.PANEL_BOXES] = ragged(panel_boxes)
        columns[schema.PANEL_PIXELS] = ragged(panel_pixels)
    if schema.ROUTE in batch:
        columns[schema.ROUTE] = np.asarray(batch[schema.ROUTE], dtype=object)
    return columns
