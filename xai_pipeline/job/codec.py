"""Relevance maps <-> compact bytes, and the encode stage that builds table rows.

A map R (H×W, non-negative) is stored at feature-map resolution as

    q = round(255 · R / max R)  (uint8, row-major),   scale = max R (float32),   shape = (H, W)

and recovered as R' = q / 255 · scale, so |R − R'| ≤ scale / 510 (within 1/255 of the maximum).
A map that is zero everywhere is stored with scale 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from xai_pipeline.job import faults
from xai_pipeline import schema
from xai_pipeline.schema import Status
from xai_pipeline.model.roi import roi_boxes

log = logging.getLogger(__name__)


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


def _figure_type(batch: dict[str, np.ndarray], i: int) -> str:
    """The classifier's figure type; for batches without one, from the modality (as a model without
    a figure-type head: ``medical_image`` unless ``other``)."""
    if schema.FIGURE_TYPE in batch and batch[schema.FIGURE_TYPE][i]:
        return str(batch[schema.FIGURE_TYPE][i])
    return schema.MEDICAL_IMAGE if str(batch[schema.MODALITY][i]) not in ("other", "") else "other"


def _null_if_empty(values: np.ndarray) -> list[str | None]:
    return [str(v) if v not in ("", None) else None for v in values]


def _encode_row(relevance: np.ndarray, probabilities: np.ndarray, width: int, height: int, roi_threshold: float) -> tuple[Any, ...]:
    """``(crm bytes, shape, scale, probabilities, ROI boxes)`` of one classified figure."""
    data, shape, scale = encode_map(relevance)
    probs = np.asarray(probabilities, dtype=np.float32)
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities have NaN or infinite values")
    boxes = [b.as_dict() for b in roi_boxes(relevance, width, height, roi_threshold)]
    return data, list(shape), scale, probs, boxes


def _panels_of(boxes: np.ndarray | None, maps: np.ndarray | None, labels: str | None, modality: str) -> tuple[list[dict[str, Any]] | None, int, list[str]]:
    """``(panels, panel_count, modalities)`` of one ok figure from the classifier's panel columns."""
    parsed = json.loads(labels) if labels else {"modalities": [modality] if modality not in ("other", "") else [], "panels": []}
    entries = parsed["panels"]
    if boxes is None or len(entries) < 2:
        return None, 1, list(parsed["modalities"])
    panels = []
    for box, relevance, entry in zip(np.asarray(boxes), np.asarray(maps), entries):
        data, shape, scale = encode_map(relevance)
        x0, y0, x1, y1 = (int(v) for v in box)
        panels.append({"x0": x0, "y0": y0, "x1": x1, "y1": y1, "modality": entry["modality"], "figure_type": entry["figure_type"],
                       "confidence": float(entry["confidence"]), "crm": data, "crm_shape": list(shape), "crm_scale": scale})
    return panels, len(panels), list(parsed["modalities"])


def encode_batch(
    batch: dict[str, np.ndarray], *, run_id: str, processed_at: dt.datetime | None = None, roi_threshold: float = 0.2
) -> pa.Table:
    """The encode stage: a classified batch (numpy columns) → rows of :data:`schema.TABLE_SCHEMA`.

    Rows whose status is not ``ok`` get nulls in the image and prediction columns. ROI boxes are
    the regions of each map at or above ``roi_threshold`` of its maximum (:mod:`xai_pipeline.model.roi`).
    A figure whose row cannot be built (a NaN map, say) becomes an ``encode_error`` row; the rest
    of the batch goes on. Every row records the settings that made it (``crm_score``,
    ``roi_threshold``), so a run with other settings can tell the row is stale.
    """
    n = len(batch[schema.FIGURE_ID])
    faults.maybe_raise_task("encode", batch[schema.SOURCE_URI])
    status = [str(v) for v in batch[schema.STATUS]]
    errors = _null_if_empty(batch[schema.ERROR])
    processed_at = processed_at or dt.datetime.now(dt.timezone.utc)
    encoded: list[tuple[Any, ...] | None] = []

    def column(name: str, i: int) -> Any:
        return batch[name][i] if name in batch else None

    for i in range(n):
        if status[i] != Status.OK.value:
            encoded.append(None)
            continue
        try:
            faults.maybe_raise("encode", batch[schema.SOURCE_URI][i])
            row = _encode_row(batch[schema.CRM_MAP][i], batch[schema.PROBABILITIES][i], int(batch[schema.WIDTH][i]),
                              int(batch[schema.HEIGHT][i]), roi_threshold)
            encoded.append(row + _panels_of(column(schema.PANEL_BOXES, i), column(schema.PANEL_MAPS, i), column(schema.PANEL_LABELS, i),
                                            str(batch[schema.MODALITY][i])))
        except Exception as exc:  # noqa: BLE001 - errors are data: one figure's failure is its row
            log.warning("encode %s: %s: %s", batch[schema.SOURCE_URI][i], type(exc).__name__, exc)
            status[i], errors[i] = Status.ENCODE_ERROR.value, f"{type(exc).__name__}: {exc}"[:1000]
            encoded.append(None)
    ok = [e is not None for e in encoded]

    def part(k: int) -> list[Any]:
        return [e[k] if e is not None else None for e in encoded]

    def masked(name: str) -> list[Any]:
        return [v.item() if ok[i] else None for i, v in enumerate(np.asarray(batch[name]))]

    def known(name: str) -> list[int | None]:
        # Dimensions are kept for error rows too when the header gave them (e.g. too_large).
        return [int(v) if v > 0 else None for v in np.asarray(batch[name])]

    crm_score = batch.get(schema.CRM_SCORE, np.full(n, schema.LEGACY_CRM_SCORE, dtype=object))
    columns = {
        schema.FIGURE_ID: [str(v) for v in batch[schema.FIGURE_ID]],
        schema.SOURCE_URI: [str(v) for v in batch[schema.SOURCE_URI]],
        schema.ETAG: [schema.normalize_etag(v) for v in batch[schema.ETAG]],
        schema.SIZE: [int(v) if v >= 0 else None for v in np.asarray(batch[schema.SIZE])],  # -1: unknown
        schema.WIDTH: known(schema.WIDTH),
        schema.HEIGHT: known(schema.HEIGHT),
        schema.MODALITY: [str(v) if ok[i] else None for i, v in enumerate(batch[schema.MODALITY])],
        schema.CONFIDENCE: masked(schema.CONFIDENCE),
        schema.PROBABILITIES: part(3),
        schema.CRM: part(0),
        schema.CRM_SHAPE: part(1),
        schema.CRM_SCALE: part(2),
        schema.ROI_BOXES: part(4),
        schema.MODEL_NAME: [str(v) for v in batch[schema.MODEL_NAME]],
        schema.MODEL_VERSION: [str(v) for v in batch[schema.MODEL_VERSION]],
        schema.CRM_SCORE: [str(v) for v in crm_score],
        schema.ROI_THRESHOLD: [float(roi_threshold)] * n,
        schema.DELETED_AT: [None] * n,
        schema.RUN_ID: [run_id] * n,
        schema.PROCESSED_AT: [processed_at] * n,
        schema.STATUS: status,
        schema.ERROR: [None if status[i] == Status.OK.value else errors[i] for i in range(n)],
        schema.SCHEMA_VERSION_COL: [schema.SCHEMA_VERSION] * n,
        schema.FIGURE_TYPE: [_figure_type(batch, i) if ok[i] else None for i in range(n)],
        schema.PANEL_COUNT: part(6),
        schema.MODALITIES: part(7),
        schema.PANELS: part(5),
    }
    return pa.table(columns, schema=schema.TABLE_SCHEMA)
