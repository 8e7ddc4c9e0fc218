"""The output table: a Delta Lake table (Parquet files + transaction log). The only module that
knows Delta.

A run's rows are written by Ray's ``Dataset.write_delta``: workers write Parquet files and the
driver commits them in one Delta transaction, so readers see all of a run or none of it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from xai_pipeline import schema
from xai_pipeline.source import Location, S3Settings

if TYPE_CHECKING:  # pragma: no cover
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

TABLE_NAME = "xai_pipeline_figures"
# Beside the Delta log, ignored by Delta readers (leading underscore): ids of chunks being written.
INFLIGHT_DIR = "_xai_pipeline/inflight"


class WriteMode(str, Enum):
    """``append`` adds this run's rows in a new version; ``overwrite`` replaces the table's rows
    in a new version (older versions stay readable until vacuumed)."""

    APPEND = "append"
    OVERWRITE = "overwrite"


def table_uri(location: Location) -> str:
    """The URI delta-rs takes: ``s3://bucket/prefix`` or an absolute local path."""
    return location.uri if location.scheme == "s3" else location.path


def storage_options(location: Location, settings: S3Settings = S3Settings()) -> dict[str, str] | None:
    """delta-rs storage options for non-secret settings; credentials come from the environment."""
    if location.scheme != "s3":
        return None
    # Retries for transient faults (5xx, SlowDown, dropped connections) in delta-rs' object store.
    options: dict[str, str] = {"max_retries": "10", "retry_timeout": "120s"}
    if settings.resolved_region:
        options["AWS_REGION"] = settings.resolved_region
    endpoint = settings.resolved_endpoint
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if urlparse(endpoint).scheme == "http":
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def write_dataset(
    ds: Any,
    location: Location,
    mode: WriteMode,
    options: dict[str, str] | None,
    filesystem: pafs.FileSystem | None = None,
) -> None:
    """Write a Ray dataset of :data:`schema.TABLE_SCHEMA` rows as one Delta commit."""
    from ray.data import SaveMode

    ds.write_delta(
        table_uri(location),
        mode=SaveMode(mode.value),
        storage_options=options,
        filesystem=filesystem if location.scheme == "s3" else None,
        schema_mode="error",
        name=TABLE_NAME,
        description=f"xai-pipeline figure modalities and CRM maps, schema v{schema.SCHEMA_VERSION}",
    )


def open_table(location: Location, options: dict[str, str] | None, version: int | None = None) -> "DeltaTable":
    from deltalake import DeltaTable

    return DeltaTable(table_uri(location), storage_options=options, version=version)


def table_exists(location: Location, options: dict[str, str] | None) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(location), storage_options=options)


def read_rows(
    location: Location,
    options: dict[str, str] | None,
    columns: list[str] | None = None,
    run_id: str | None = None,
    version: int | None = None,
) -> pa.Table:
    """Rows of the current (or a given) snapshot, optionally of one run only."""
    dataset = open_table(location, options, version).to_pyarrow_dataset()
    flt = pc.field(schema.RUN_ID) == run_id if run_id else None
    return dataset.to_table(columns=columns, filter=flt)


def status_counts(location: Location, options: dict[str, str] | None, run_id: str) -> tuple[int, Counter[str]]:
    """``(table version, rows per status)`` for one run's rows in the current snapshot."""
    table = open_table(location, options)
    dataset = table.to_pyarrow_dataset()
    statuses = dataset.to_table(columns=[schema.STATUS], filter=pc.field(schema.RUN_ID) == run_id)
    counts: Counter[str] = Counter(statuses.column(schema.STATUS).to_pylist())
    return table.version(), counts


def committed_ids(location: Location, options: dict[str, str] | None, model_name: str, model_version: str) -> pa.Array:
    """Distinct figure_ids already committed by this model name and version (ok or error rows)."""
    if not table_exists(location, options):
        return pa.array([], pa.string())
    dataset = open_table(location, options).to_pyarrow_dataset()
    flt = (pc.field(schema.MODEL_NAME) == model_name) & (pc.field(schema.MODEL_VERSION) == model_version)
    ids = dataset.to_table(columns=[schema.FIGURE_ID], filter=flt).column(schema.FIGURE_ID)
    return pc.unique(ids.combine_chunks())


def _inflight_path(location: Location, name: str = "") -> str:
    return f"{location.path.rstrip('/')}/{INFLIGHT_DIR}" + (f"/{name}" if name else "")


def mark_inflight(location: Location, fs: pafs.FileSystem, run_id: str, chunk: int, ids: list[str]) -> str:
    """Record the figure_ids a chunk is about to write; removed once its commit is done."""
    name = f"{run_id}-{chunk:05d}.json"
    fs.create_dir(_inflight_path(location), recursive=True)
    with fs.open_output_stream(_inflight_path(location, name)) as fh:
        fh.write(json.dumps({"run_id": run_id, "chunk": chunk, "figure_ids": ids}).encode())
    return name


def read_inflight(location: Location, fs: pafs.FileSystem) -> dict[str, list[str]]:
    """Chunks that earlier runs started but never committed: marker name → figure_ids."""
    selector = pafs.FileSelector(_inflight_path(location), allow_not_found=True)
    found = {}
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
            with fs.open_input_stream(info.path) as fh:
                found[info.base_name] = json.loads(fh.read())["figure_ids"]
    return found


def clear_inflight(location: Location, fs: pafs.FileSystem, names: list[str]) -> None:
    for name in names:
        try:
            fs.delete_file(_inflight_path(location, name))
        except FileNotFoundError:
            pass
