"""The output table's schema: column names, status kinds and the Arrow schema, in one place.

Every input object yields exactly one row. A row whose ``status`` is not ``ok`` carries an
``error`` message and nulls in the prediction columns.

Bump :data:`SCHEMA_VERSION` whenever a column is added, removed or changes meaning; the version is
written into every row so readers can tell tables apart. History: 1 first release; 2 adds
``deleted_at`` (older rows read it as null: present); 3 adds ``roi_boxes``; 4 adds ``crm_score``
and ``roi_threshold`` (the settings that made the row; rows written before read them as null and
count as made with the defaults of the time, ``logit`` and 0.2), the statuses ``decode_error``,
``model_error`` and ``encode_error``, and ETags without quotes; 5 adds ``figure_type``, ``panels``,
``panel_count`` and ``modalities`` (compound figures split into panels; ``modality`` of a compound
figure is ``compound``; rows written before read them as null).
"""

from __future__ import annotations

import hashlib
from enum import Enum

import pyarrow as pa

SCHEMA_VERSION = 5


class Status(str, Enum):
    """Outcome of one input object. ``ok`` or the kind of error that stopped it."""

    OK = "ok"
    EMPTY = "empty"  # zero bytes
    TOO_LARGE = "too_large"  # over the byte or pixel limit (decompression bombs included)
    NOT_AN_IMAGE = "not_an_image"  # no image format recognised (text, HTML, ...)
    TRUNCATED = "truncated"  # recognised format, data ends early or is corrupt
    UNSUPPORTED = "unsupported"  # recognised format or mode we cannot turn into RGB
    MISSING = "missing"  # listed, but gone when read
    READ_ERROR = "read_error"  # listed, but reading it failed: refused, or faults outlasted the retries
    DECODE_ERROR = "decode_error"  # the decoder raised an error nobody listed (a decoder bug)
    MODEL_ERROR = "model_error"  # the classifier or CRM failed on this figure, or gave non-finite values
    ENCODE_ERROR = "encode_error"  # the row could not be built from the classifier's output


# Statuses a later run processes again: the cause may be transient (network, store, device) or a
# bug fixed since. The others describe the object itself and stay until the object changes.
RETRY_STATUSES = frozenset({Status.READ_ERROR.value, Status.DECODE_ERROR.value, Status.MODEL_ERROR.value,
                            Status.ENCODE_ERROR.value})


# What a figure (or panel) is: a medical image of one of the modalities, or another kind of figure.
MEDICAL_IMAGE = "medical_image"
FIGURE_TYPES: tuple[str, ...] = (MEDICAL_IMAGE, "chart", "diagram", "table", "microscopy", "photograph", "gel_blot",
                                 "chemical_structure", "screenshot", "other")
COMPOUND = "compound"  # the modality of a figure with two or more panels (their modalities: ``modalities``)


# Column names. Use these constants instead of string literals elsewhere.
FIGURE_ID = "figure_id"
SOURCE_URI = "source_uri"
ETAG = "etag"
SIZE = "size"
WIDTH = "width"
HEIGHT = "height"
MODALITY = "modality"
CONFIDENCE = "confidence"
PROBABILITIES = "probabilities"
CRM = "crm"
CRM_SHAPE = "crm_shape"
CRM_SCALE = "crm_scale"
ROI_BOXES = "roi_boxes"
CRM_SCORE = "crm_score"
ROI_THRESHOLD = "roi_threshold"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
DELETED_AT = "deleted_at"
RUN_ID = "run_id"
PROCESSED_AT = "processed_at"
STATUS = "status"
ERROR = "error"
SCHEMA_VERSION_COL = "schema_version"
FIGURE_TYPE = "figure_type"
PANELS = "panels"
PANEL_COUNT = "panel_count"
MODALITIES = "modalities"

# Intermediate columns passed between pipeline stages; never written to the table.
PIXELS = "pixels"
JPEG_BYTES = "jpeg_bytes"  # --jpeg-decoder classifier: plain JPEGs left for the classifier to decode
CRM_MAP = "crm_map"
ACTOR = "_actor"  # which classifier actor (host:pid:start) made a row: the run counts its actors
PANEL_BOXES = "panel_boxes"  # k×4 int32 per figure: its panels in figure pixels (k = 0: single-panel)
PANEL_PIXELS = "panel_pixels"  # k×3×S×S uint8 per figure: the panel crops the classifier runs
PANEL_MAPS = "panel_maps"  # k×H×W float32 per figure: the panels' CRM maps
PANEL_LABELS = "panel_labels"  # JSON per figure: [{"modality", "figure_type", "confidence"}, ...]
ROUTE = "_route"  # where the write stage puts a row: "append" (no row yet) or "stage" (replaces rows, merged)
ROUTE_APPEND, ROUTE_STAGE = "append", "stage"  # the values of ROUTE

PANEL_STRUCT = pa.struct([
    ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()), ("modality", pa.string()),
    ("figure_type", pa.string()), ("confidence", pa.float32()), ("crm", pa.binary()), ("crm_shape", pa.list_(pa.int32())),
    ("crm_scale", pa.float32()),
])

TABLE_SCHEMA = pa.schema(
    [
        pa.field(FIGURE_ID, pa.string(), nullable=False),
        pa.field(SOURCE_URI, pa.string(), nullable=False),
        pa.field(ETAG, pa.string()),
        pa.field(SIZE, pa.int64()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(MODALITY, pa.string()),
        pa.field(CONFIDENCE, pa.float32()),
        pa.field(PROBABILITIES, pa.list_(pa.float32())),
        pa.field(CRM, pa.binary()),
        pa.field(CRM_SHAPE, pa.list_(pa.int32())),
        pa.field(CRM_SCALE, pa.float32()),
        pa.field(ROI_BOXES, pa.list_(pa.struct([("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()), ("score", pa.float32())]))),
        pa.field(MODEL_NAME, pa.string()),
        pa.field(MODEL_VERSION, pa.string()),
        pa.field(CRM_SCORE, pa.string()),
        pa.field(ROI_THRESHOLD, pa.float32()),
        pa.field(DELETED_AT, pa.timestamp("us", tz="UTC")),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(PROCESSED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(SCHEMA_VERSION_COL, pa.int32(), nullable=False),
        pa.field(FIGURE_TYPE, pa.string()),
        pa.field(PANEL_COUNT, pa.int32()),
        pa.field(MODALITIES, pa.list_(pa.string())),
        pa.field(PANELS, pa.list_(PANEL_STRUCT)),
    ],
    metadata={b"xai_pipeline.schema_version": str(SCHEMA_VERSION).encode()},
)

COLUMN_DOCS: dict[str, str] = {
    FIGURE_ID: "stable key: first 32 hex digits of SHA-256 of source_uri",
    SOURCE_URI: "s3://bucket/key or file:///absolute/path of the input object",
    ETAG: "object ETag without quotes (S3 listing, inventory or manifest; null when unknown); local files: mtime-ns: and the modification time",
    SIZE: "object size in bytes",
    WIDTH: "figure width in pixels after EXIF orientation (null if the header gave none)",
    HEIGHT: "figure height in pixels after EXIF orientation (null if the header gave none)",
    MODALITY: "predicted class name; 'other' below the model's confidence threshold or when the figure is not a medical image; 'compound' for a figure with two or more panels",
    CONFIDENCE: "softmax probability of the top class",
    PROBABILITIES: "softmax probabilities in the model's class order",
    CRM: "relevance map at feature-map resolution, uint8, row-major, normalised by its max",
    CRM_SHAPE: "[rows, cols] of the stored map",
    CRM_SCALE: "the map's maximum: value = byte / 255 * crm_scale",
    ROI_BOXES: "regions of the map at or above the ROI threshold (20% of its max by default) as boxes in figure pixels: x0, y0, x1, y1 (exclusive), score (max relevance in the region / map max), best first",
    MODEL_NAME: "model name from the model description",
    MODEL_VERSION: "model version from the model description",
    CRM_SCORE: "the score CRM perturbed: logit (paper) or softmax (null: written before schema 4, taken as logit)",
    ROI_THRESHOLD: "the share of the map's maximum the ROI boxes enclose (null: written before schema 4, taken as 0.2)",
    DELETED_AT: "when a reindex found the object gone from the collection (null while it exists)",
    RUN_ID: "identifier of the job run that wrote the row",
    PROCESSED_AT: "UTC time the row was produced",
    STATUS: "'ok' or an error kind: " + ", ".join(s.value for s in Status if s is not Status.OK),
    ERROR: "error message (null when ok)",
    SCHEMA_VERSION_COL: f"table schema version (this code writes {SCHEMA_VERSION})",
    FIGURE_TYPE: "what the figure is: " + ", ".join(FIGURE_TYPES) + " (a compound figure: medical_image when a panel is one, else its panels' most common type)",
    PANEL_COUNT: "panels found in the figure (1: a single-panel figure)",
    MODALITIES: "the distinct modalities of the figure's panels, 'other' left out (a single-panel figure: [modality] unless other)",
    PANELS: "a compound figure's panels in reading order: box x0, y0, x1, y1 (figure pixels, exclusive), modality, figure_type, confidence and the panel's CRM as crm, crm_shape, crm_scale (null for a single-panel figure)",
}


# What rows written before schema 4 (null crm_score / roi_threshold) were made with.
LEGACY_CRM_SCORE = "logit"
LEGACY_ROI_THRESHOLD = 0.2


def normalize_etag(etag: object) -> str | None:
    """An ETag as the table stores it: no surrounding quotes or whitespace, ``None`` when unknown.

    S3 listings and HEAD/GET answers quote ETags (``"9b2c..."``), S3 Inventory reports do not;
    normalising in every path keeps a switch between them from looking like a changed object.
    """
    if etag is None:
        return None
    text = str(etag).strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"').strip()
    return text or None


def figure_id(source_uri: str) -> str:
    """Stable key of a figure: the first 128 bits of SHA-256 over its normalised URI, in hex."""
    return hashlib.sha256(source_uri.encode("utf-8")).hexdigest()[:32]
