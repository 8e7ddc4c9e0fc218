from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from xai_pipeline import schema
from xai_pipeline.job.codec import decode_map, encode_batch

REQUIRED = [
    "figure_id", "source_uri", "etag", "size", "width", "height", "modality", "confidence", "probabilities",
    "crm", "crm_shape", "crm_scale", "model_name", "model_version", "run_id", "processed_at", "status", "error",
]


def test_schema_has_every_required_column_and_a_version() -> None:
    names = schema.TABLE_SCHEMA.names
    for column in REQUIRED:
        assert column in names
        assert column in schema.COLUMN_DOCS
    assert schema.TABLE_SCHEMA.field("probabilities").type == pa.list_(pa.float32())
    assert schema.TABLE_SCHEMA.field("crm").type == pa.binary()
    assert schema.TABLE_SCHEMA.metadata[b"xai_pipeline.schema_version"] == str(schema.SCHEMA_VERSION).encode()


def test_figure_id_is_stable_and_distinct() -> None:
    a = schema.figure_id("s3://bucket/figs/a.png")
    assert a == schema.figure_id("s3://bucket/figs/a.png") and len(a) == 32
    assert a != schema.figure_id("s3://bucket/figs/b.png")


def _classified_batch() -> dict[str, np.ndarray]:
    maps = np.zeros((2, 7, 7), dtype=np.float32)
    maps[0, 3, 4] = 2.5
    return {
        schema.FIGURE_ID: np.array(["id1", "id2"], dtype=object),
        schema.SOURCE_URI: np.array(["s3://b/1.png", "s3://b/2.png"], dtype=object),
        schema.ETAG: np.array(['"abc"', ""], dtype=object),
        schema.SIZE: np.array([10, 0]),
        schema.WIDTH: np.array([640, 0], dtype=np.int32),
        schema.HEIGHT: np.array([480, 0], dtype=np.int32),
        schema.STATUS: np.array(["ok", "empty"], dtype=object),
        schema.ERROR: np.array(["", "object has zero bytes"], dtype=object),
        schema.MODALITY: np.array(["ct", ""], dtype=object),
        schema.CONFIDENCE: np.array([0.9, np.nan], dtype=np.float32),
        schema.PROBABILITIES: np.array([[0.05, 0.9, 0.05], [np.nan] * 3], dtype=np.float32),
        schema.CRM_MAP: maps,
        schema.MODEL_NAME: np.array(["m", "m"], dtype=object),
        schema.MODEL_VERSION: np.array(["1", "1"], dtype=object),
    }


def test_encode_batch_conforms_and_nulls_error_rows() -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    table = encode_batch(_classified_batch(), run_id="r1", processed_at=when)
    assert table.schema.equals(schema.TABLE_SCHEMA)
    ok, bad = table.to_pylist()
    assert ok["status"] == "ok" and ok["error"] is None and ok["etag"] == "abc"
    assert ok["crm_shape"] == [7, 7]
    restored = decode_map(ok["crm"], ok["crm_shape"], ok["crm_scale"])
    assert restored.argmax() == 3 * 7 + 4 and abs(restored.max() - 2.5) < 2.5 / 255
    assert bad["status"] == "empty" and bad["error"] == "object has zero bytes"
    for column in ("modality", "confidence", "probabilities", "crm", "crm_shape", "crm_scale", "width", "etag"):
        assert bad[column] is None
    assert ok["run_id"] == bad["run_id"] == "r1" and ok["schema_version"] == schema.SCHEMA_VERSION
