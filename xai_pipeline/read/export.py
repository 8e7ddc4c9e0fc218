"""Export a table for search engines: one document per figure, streamed batch by batch.

* ``jsonl``: one JSON object a line.
* ``opensearch-bulk``: the OpenSearch/Elasticsearch ``_bulk`` format: an ``index`` action line
  (``_id`` = figure_id) and the document per figure; figures marked deleted become ``delete``
  actions, so replaying an export keeps the index in step with the collection.

Document: ``figure_id``, ``source_uri``, ``modality``, ``confidence``, ``roi_boxes``, ``status``,
``width``, ``height``, ``model_version``, ``processed_at``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from xai_pipeline import schema
from xai_pipeline.store import sink
from xai_pipeline.progress import progress_bar
from xai_pipeline.store.source import S3Settings, parse_location

FORMATS = ("jsonl", "opensearch-bulk")
DOC_COLUMNS = [schema.FIGURE_ID, schema.SOURCE_URI, schema.MODALITY, schema.CONFIDENCE, schema.ROI_BOXES, schema.STATUS,
               schema.WIDTH, schema.HEIGHT, schema.MODEL_VERSION, schema.PROCESSED_AT, schema.FIGURE_TYPE, schema.PANEL_COUNT,
               schema.MODALITIES, schema.PANELS]
PANEL_FIELDS = ("x0", "y0", "x1", "y1", "modality", "figure_type", "confidence")  # a panel in a document: no map bytes


def _documents(table_uri: str, settings: S3Settings) -> tuple[int, Iterator[dict[str, Any]]]:
    location = parse_location(table_uri, "--table")
    dataset = sink.open_table(location, sink.storage_options(location, settings)).to_pyarrow_dataset()
    total = dataset.count_rows()

    present = set(dataset.schema.names)  # a table of an older schema version lacks newer columns

    def rows() -> Iterator[dict[str, Any]]:
        for batch in dataset.to_batches(columns=[c for c in DOC_COLUMNS + [schema.DELETED_AT] if c in present], batch_size=4096):
            for row in batch.to_pylist():
                yield {c: row.get(c) for c in DOC_COLUMNS + [schema.DELETED_AT]}

    return total, rows()


def _doc(row: dict[str, Any]) -> dict[str, Any]:
    doc = {k: row[k] for k in DOC_COLUMNS}
    doc[schema.PROCESSED_AT] = row[schema.PROCESSED_AT].isoformat() if row[schema.PROCESSED_AT] else None
    if doc[schema.CONFIDENCE] is not None:
        doc[schema.CONFIDENCE] = round(float(doc[schema.CONFIDENCE]), 5)
    if doc[schema.PANELS] is not None:
        doc[schema.PANELS] = [{k: round(p[k], 5) if k == "confidence" and p[k] is not None else p[k] for k in PANEL_FIELDS}
                              for p in doc[schema.PANELS]]
    return doc


def export(table_uri: str, fmt: str, out: str | Path, *, index_name: str = "figures", settings: S3Settings = S3Settings(),
           progress: bool = False) -> int:
    """Write the export to ``out``; returns the number of figures written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    total, rows = _documents(table_uri, settings)
    written = 0
    with Path(out).open("w", encoding="utf-8") as fh, progress_bar("export", total, force=progress) as bar:
        for row in rows:
            deleted = row[schema.DELETED_AT] is not None
            if fmt == "jsonl":
                if not deleted:
                    fh.write(json.dumps(_doc(row), ensure_ascii=False) + "\n")
            elif deleted:
                fh.write(json.dumps({"delete": {"_index": index_name, "_id": row[schema.FIGURE_ID]}}) + "\n")
            else:
                fh.write(json.dumps({"index": {"_index": index_name, "_id": row[schema.FIGURE_ID]}}) + "\n")
                fh.write(json.dumps(_doc(row), ensure_ascii=False) + "\n")
            written += 1
            bar.update()
    return written
