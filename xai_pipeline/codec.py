"""Relevance maps <-> compact bytes, and the encode stage that builds table rows.

A map R (H×W, non-negative) is stored at feature-map resolution as

    q = round(255 · R / max R)  (uint8, row-major),   scale = max R (float32),   shape = (H, W)

and recovered as R' = q / 255 · scale, so |R − R'| ≤ scale / 510 (within 1/255 of the maximum).
A map that is zero everywhere is stored with scale 0.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from xai_pipeline import schema
from xai_pipeline.schema import Status


def encode_map(relevance: np.ndarray) -> tuple[bytes, tuple[int, int], float]:
    """Quantise a 2-D map to uint8 bytes; returns ``(bytes, shape, scale)``."""
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.ndim != 2:
        raise ValueError(f"a relevance map is 2-D, got shape {relevance.shape}")
    if not np.all(np.isfinite(relevance)):
        raise ValueError("relevance map has NaN or infinite values")
    if relevance.min() < 0:
        raise ValueError("relevance maps are non-negative")
    scale = float(relevance.max()) if relevance.size else 0.0
    if scale > 0:
        q = np.rint(relevance / scale * 255.0).astype(np.uint8)
    else:
        q = np.zeros(relevance.shape, dtype=np.uint8)
    return q.tobytes(), (int(relevance.shape[0]), int(relevance.shape[1])), np.float32(scale).item()


def decode_map(data: bytes, shape: tuple[int, int] | list[int], scale: float, *, normalized: bool = False) -> np.ndarray:
    """Inverse of :func:`encode_map`; ``normalized=True`` returns values in [0, 1] (÷ max)."""
    rows, cols = (int(v) for v in shape)
    if len(data) != rows * cols:
        raise ValueError(f"map has {len(data)} bytes, expected {rows}×{cols}")
    q = np.frombuffer(data, dtype=np.uint8).reshape(rows, cols).astype(np.float32) / 255.0
    return q if normalized else q * np.float32(scale)


def upsample(relevance: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear upsampling of a map to a figure's ``width × height`` pixels (float32).

    The model sees the whole figure resized to a square, so feature cell (l, m) covers the figure
    region [m·width/W, (m+1)·width/W) × [l·height/H, (l+1)·height/H).
    """
    image = Image.fromarray(np.asarray(relevance, dtype=np.float32), mode="F")
    return np.asarray(image.resize((int(width), int(height)), Image.Resampling.BILINEAR), dtype=np.float32)


def _null_if_empty(values: np.ndarray) -> list[str | None]:
    return [str(v) if v not in ("", None) else None for v in values]


def encode_batch(
    batch: dict[str, np.ndarray], *, run_id: str, processed_at: dt.datetime | None = None, roi_threshold: float = 0.2
) -> pa.Table:
    """The encode stage: a classified batch (numpy columns) → rows of :data:`schema.TABLE_SCHEMA`.

    Rows whose status is not ``ok`` get nulls in the image and prediction columns. ROI boxes are
    the regions of each map at or above ``roi_threshold`` of its maximum (:mod:`xai_pipeline.roi`).
    """
    from xai_pipeline.roi import roi_boxes  # here, not at the top: roi uses this module's upsample

    n = len(batch[schema.FIGURE_ID])
    ok = np.asarray(batch[schema.STATUS]) == Status.OK.value
    processed_at = processed_at or dt.datetime.now(dt.timezone.utc)
    crm_bytes: list[bytes | None] = []
    crm_shape: list[list[int] | None] = []
    crm_scale: list[float | None] = []
    probabilities: list[Any] = []
    boxes: list[Any] = []
    for i in range(n):
        if ok[i]:
            data, shape, scale = encode_map(batch[schema.CRM_MAP][i])
            crm_bytes.append(data)
            crm_shape.append(list(shape))
            crm_scale.append(scale)
            probabilities.append(np.asarray(batch[schema.PROBABILITIES][i], dtype=np.float32))
            found = roi_boxes(batch[schema.CRM_MAP][i], int(batch[schema.WIDTH][i]), int(batch[schema.HEIGHT][i]), roi_threshold)
            boxes.append([b.as_dict() for b in found])
        else:
            crm_bytes.append(None)
            crm_shape.append(None)
            crm_scale.append(None)
            probabilities.append(None)
            boxes.append(None)

    def masked(name: str) -> list[Any]:
        return [v.item() if ok[i] else None for i, v in enumerate(np.asarray(batch[name]))]

    def known(name: str) -> list[int | None]:
        # Dimensions are kept for error rows too when the header gave them (e.g. too_large).
        return [int(v) if v > 0 else None for v in np.asarray(batch[name])]

    columns = {
        schema.FIGURE_ID: [str(v) for v in batch[schema.FIGURE_ID]],
        schema.SOURCE_URI: [str(v) for v in batch[schema.SOURCE_URI]],
        schema.ETAG: _null_if_empty(batch[schema.ETAG]),
        schema.SIZE: [int(v) for v in batch[schema.SIZE]],
        schema.WIDTH: known(schema.WIDTH),
        schema.HEIGHT: known(schema.HEIGHT),
        schema.MODALITY: [str(v) if ok[i] else None for i, v in enumerate(batch[schema.MODALITY])],
        schema.CONFIDENCE: masked(schema.CONFIDENCE),
        schema.PROBABILITIES: probabilities,
        schema.CRM: crm_bytes,
        schema.CRM_SHAPE: crm_shape,
        schema.CRM_SCALE: crm_scale,
        schema.ROI_BOXES: boxes,
        schema.MODEL_NAME: [str(v) for v in batch[schema.MODEL_NAME]],
        schema.MODEL_VERSION: [str(v) for v in batch[schema.MODEL_VERSION]],
        schema.DELETED_AT: [None] * n,
        schema.RUN_ID: [run_id] * n,
        schema.PROCESSED_AT: [processed_at] * n,
        schema.STATUS: [str(v) for v in batch[schema.STATUS]],
        schema.ERROR: _null_if_empty(batch[schema.ERROR]),
        schema.SCHEMA_VERSION_COL: [schema.SCHEMA_VERSION] * n,
    }
    return pa.table(columns, schema=schema.TABLE_SCHEMA)
