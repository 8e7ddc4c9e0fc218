"""The output table: a Delta Lake table (Parquet files + transaction log). The only module that
knows Delta.

A run's rows are written by Ray's ``Dataset.write_delta``: workers write Parquet files and the
driver commits them in one Delta transaction, so readers see all of a run or none of it.
"""

from __future__ import annotations

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
from xai_pipeline.summary import RUN_ID_PATTERN

if TYPE_CHECKING:  # pragma: no cover
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

TABLE_NAME = "xai_pipeline_figures"


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
        schema_mode="merge",  # a table of an older schema version gains the new columns
        name=TABLE_NAME,
        description=f"xai-pipeline figure modalities and CRM maps, schema v{schema.SCHEMA_VERSION}",
    )


def open_table(location: Location, options: dict[str, str] | None, version: int | None = None) -> "DeltaTable":
    from deltalake import DeltaTable

    return DeltaTable(table_uri(location), storage_options=options, version=version)


def table_exists(location: Location, options: dict[str, str] | None) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(location), storage_options=options)


def scan(location: Location, options: dict[str, str] | None, columns: list[str], version: int | None = None) -> pa.Table:
    """``columns`` of a snapshot with the schema's plain Arrow types.

    Files written by a delta-rs merge store strings as ``string_view``; filters are applied after
    the cast, in memory, because pyarrow cannot compare the two kinds in a scan filter.
    """
    wanted = pa.schema([schema.TABLE_SCHEMA.field(c) for c in columns])
    return open_table(location, options, version).to_pyarrow_dataset().to_table(columns=columns).cast(wanted)


def read_rows(
    location: Location,
    options: dict[str, str] | None,
    columns: list[str] | None = None,
    run_id: str | None = None,
    version: int | None = None,
) -> pa.Table:
    """Rows of the current (or a given) snapshot, optionally of one run only."""
    names = columns or schema.TABLE_SCHEMA.names
    table = scan(location, options, sorted(set(names) | ({schema.RUN_ID} if run_id else set())), version)
    if run_id:
        table = table.filter(pc.equal(table.column(schema.RUN_ID), run_id))
    return table.select(names)


def status_counts(location: Location, options: dict[str, str] | None, run_id: str) -> tuple[int, Counter[str]]:
    """``(table version, rows per status)`` for one run's rows in the current snapshot, counted by
    delta-rs' SQL engine (no rows come to Python). ``run_id`` must match the run-id pattern."""
    from deltalake import QueryBuilder

    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    table = open_table(location, options)
    query = f"SELECT {schema.STATUS} AS s, COUNT(*) AS n FROM t WHERE {schema.RUN_ID} = '{run_id}' GROUP BY {schema.STATUS}"
    counts = pa.table(QueryBuilder().register("t", table).execute(query).read_all())
    return table.version(), Counter({str(k): int(v) for k, v in zip(counts.column("s").to_pylist(), counts.column("n").to_pylist())})


def committed_ids(location: Location, options: dict[str, str] | None, model_name: str, model_version: str) -> pa.Array:
    """Distinct figure_ids already committed by this model name and version (ok or error rows)."""
    if not table_exists(location, options):
        return pa.array([], pa.string())
    t = scan(location, options, [schema.FIGURE_ID, schema.MODEL_NAME, schema.MODEL_VERSION])
    mask = pc.and_(pc.equal(t.column(schema.MODEL_NAME), model_name), pc.equal(t.column(schema.MODEL_VERSION), model_version))
    return pc.unique(t.filter(mask).column(schema.FIGURE_ID).combine_chunks())


def table_state(location: Location, options: dict[str, str] | None, columns: list[str]) -> pa.Table:
    """The current snapshot's ``columns`` (empty, typed, when there is no table)."""
    if not table_exists(location, options):
        return pa.schema([schema.TABLE_SCHEMA.field(c) for c in columns]).empty_table()
    return scan(location, options, columns)


def write_staging(ds: Any, staging: Location, filesystem: pafs.FileSystem) -> None:
    """Write a run's rows as plain Parquet files in its staging folder (not yet in the table)."""
    ds.write_parquet(staging.path, filesystem=filesystem, mode="overwrite")


def read_staging(staging: Location, filesystem: pafs.FileSystem) -> pa.Table:
    """The rows a run staged (none if it staged nothing)."""
    import pyarrow.dataset as pads

    if filesystem.get_file_info(staging.path).type == pafs.FileType.NotFound:
        return schema.TABLE_SCHEMA.empty_table()
    return pads.dataset(staging.path, filesystem=filesystem, format="parquet").to_table().cast(schema.TABLE_SCHEMA)


def merge_run(
    location: Location, options: dict[str, str] | None, upserts: pa.Table, deleted_ids: pa.Array, deleted_at: Any, run_id: str
) -> dict[str, Any] | None:
    """One atomic Delta commit: upsert ``upserts`` by figure_id and set ``deleted_at`` on the rows
    of ``deleted_ids`` (their other columns, run_id included, stay as the run that wrote them).
    Creates the table (an empty version) if there is none. Returns the merge metrics, or None
    when there was nothing to commit."""
    from deltalake import DeltaTable

    if not table_exists(location, options):
        DeltaTable.create(table_uri(location), schema=schema.TABLE_SCHEMA, name=TABLE_NAME, storage_options=options)
    if upserts.num_rows == 0 and len(deleted_ids) == 0:
        return None  # nothing to commit
    table = open_table(location, options)
    action = "_action"
    # The merge source: staged rows to upsert, and one marker row per deleted figure.
    nullable = pa.schema([f.with_nullable(True) for f in schema.TABLE_SCHEMA])
    deleted_type = schema.TABLE_SCHEMA.field(schema.DELETED_AT).type
    markers = pa.table({
        schema.FIGURE_ID: deleted_ids.cast(pa.string()),
        schema.DELETED_AT: pa.array([deleted_at] * len(deleted_ids), deleted_type),
    })
    source = pa.concat_tables([upserts.cast(nullable), markers], promote_options="default")
    source = source.append_column(action, pa.array(["upsert"] * upserts.num_rows + ["delete"] * len(deleted_ids), pa.string()))
    return (
        table.merge(source, predicate=f"t.{schema.FIGURE_ID} = s.{schema.FIGURE_ID}", source_alias="s", target_alias="t",
                    commit_properties=_commit_properties(run_id))
        .when_matched_update_all(predicate=f"s.{action} = 'upsert'", except_cols=[action])
        .when_matched_update(updates={schema.DELETED_AT: f"s.{schema.DELETED_AT}"}, predicate=f"s.{action} = 'delete'")
        .when_not_matched_insert_all(predicate=f"s.{action} = 'upsert'", except_cols=[action])
        .execute()
    )


def _commit_properties(run_id: str) -> Any:
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={"xai_pipeline.run_id": run_id})


def optimize(location: Location, options: dict[str, str] | None) -> dict[str, Any]:
    """Compact small files into larger ones (a new version; data unchanged)."""
    return open_table(location, options).optimize.compact()


def vacuum(location: Location, options: dict[str, str] | None, retention_hours: int, dry_run: bool) -> list[str]:
    """Delete files that no version within ``retention_hours`` needs; older versions stop being readable."""
    return open_table(location, options).vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)


def history(location: Location, options: dict[str, str] | None) -> list[dict[str, Any]]:
    """Versions, newest first: version, timestamp, operation, metrics."""
    return open_table(location, options).history()
