"""The output table: a Delta Lake table (Parquet files + transaction log). The only module that
knows Delta.

Rows reach the table through :mod:`xai_pipeline.job.writer` (workers write Parquet files, the driver
commits them as Delta add actions) and :func:`merge_run` (replaced rows and deletions, one merge).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from xai_pipeline import schema
from xai_pipeline.store.source import Location, S3Settings
from xai_pipeline.policies import RUN_ID_PATTERN

if TYPE_CHECKING:  # pragma: no cover
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

TABLE_NAME = "xai_pipeline_figures"


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


def commit_files(uri: str, options: dict[str, str] | None, files: list[dict[str, Any]], run_id: str, version: int,
                 overwrite: bool = False) -> bool:
    """Commit Parquet files written beside the Delta log (:mod:`xai_pipeline.job.writer` records:
    path, size, stats) as one version of ``add`` actions, creating the table if needed.

    The commit carries the application transaction ``(run_id, version)``: if the table already
    holds it (a commit retried after its answer was lost), nothing is committed and False is
    returned. ``overwrite``: the commit replaces the table's rows."""
    from deltalake import CommitProperties, DeltaTable, Schema, Transaction
    from deltalake.transaction import AddAction, create_table_with_add_actions

    now = int(time.time() * 1000)
    actions = [AddAction(path=f["path"], size=int(f["size"]), partition_values={}, modification_time=now, data_change=True,
                         stats=f["stats"]) for f in files]
    properties = CommitProperties(custom_metadata={"xai_pipeline.run_id": run_id, "xai_pipeline.commit": str(version)},
                                  app_transactions=[Transaction(run_id, version)])
    delta_schema = Schema.from_arrow(schema.TABLE_SCHEMA)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        create_table_with_add_actions(uri, delta_schema, actions, mode="error", name=TABLE_NAME, storage_options=options,
                                      commit_properties=properties)
        return True
    table = DeltaTable(uri, storage_options=options)
    if (table.transaction_version(run_id) or 0) >= version:
        log.warning("commit %d of run %s is already in the table; not committing it again", version, run_id)
        return False
    table.create_write_transaction(actions, mode="overwrite" if overwrite else "append", schema=delta_schema, commit_properties=properties)
    return True


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


def data_files(location: Location, options: dict[str, str] | None) -> tuple[list[str], int]:
    """The current snapshot's data files (paths for the table's pyarrow filesystem) and its row
    count from the log's statistics (no data read); none when there is no table."""
    if not table_exists(location, options):
        return [], 0
    table = open_table(location, options)
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = int(pc.sum(actions.column("num_records")).as_py() or 0) if "num_records" in actions.column_names else 0
    root = location.path.rstrip("/")
    return [f"{root}/{p}" for p in actions.column("path").to_pylist()], rows


def table_state(location: Location, options: dict[str, str] | None, columns: list[str]) -> pa.Table:
    """The current snapshot's ``columns`` (empty, typed, when there is no table); columns the
    table predates (an older schema version) are left out."""
    if not table_exists(location, options):
        return pa.schema([schema.TABLE_SCHEMA.field(c) for c in columns]).empty_table()
    present = set(open_table(location, options).schema().to_arrow().names)
    return scan(location, options, [c for c in columns if c in present])


def conform(table: pa.Table) -> pa.Table:
    """Rows of any schema version as :data:`schema.TABLE_SCHEMA`: columns it lacks are null."""
    columns = {}
    for f in schema.TABLE_SCHEMA:
        columns[f.name] = table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
    return pa.table(columns, schema=pa.schema([f.with_nullable(True) for f in schema.TABLE_SCHEMA]))


_ACTION = "_xai_action"


def upgrade_schema(location: Location, options: dict[str, str] | None) -> list[str]:
    """Add the columns of :data:`schema.TABLE_SCHEMA` a table of an older schema version lacks
    (a metadata-only commit; older rows read them as null). Returns the columns added.

    Done before a merge instead of the merge's own ``merge_schema``: in deltalake 1.6 a merge
    with ``merge_schema=True`` and a delete clause nulls the non-nullable columns of the target
    rows it rewrites (seen here; the merge then fails its own validation)."""
    from deltalake import Schema

    if not table_exists(location, options):
        return []
    table = open_table(location, options)
    present = set(table.schema().to_arrow().names)
    missing = [f.with_nullable(True) for f in schema.TABLE_SCHEMA if f.name not in present]
    if missing:
        table.alter.add_columns(Schema.from_arrow(pa.schema(missing)).fields)
        log.info("table %s upgraded to schema version %d: added %s", location.uri, schema.SCHEMA_VERSION, ", ".join(f.name for f in missing))
    return [f.name for f in missing]


def staged_paths(staging: Location, filesystem: pafs.FileSystem) -> list[str]:
    """The Parquet files in a staging folder."""
    selector = pafs.FileSelector(staging.path, recursive=True, allow_not_found=True)
    return sorted(i.path for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))


def staged_tables(folder: Location, filesystem: pafs.FileSystem, names: list[str], *, root: bool, run_id: str | None = None,
                  batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """The rows of staged files, read a file and a batch at a time (``names`` relative to
    ``folder``, or full paths with ``root=True``); ``run_id`` rewrites the rows' run_id (rows an
    interrupted run staged, committed by this one)."""
    import pyarrow.parquet as pq

    for name in names:
        path = name if root else f"{folder.path.rstrip('/')}/{name}"
        with filesystem.open_input_file(path) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                table = conform(pa.Table.from_batches([batch]))
                if run_id is not None:
                    table = table.set_column(table.schema.get_field_index(schema.RUN_ID), schema.RUN_ID, pa.array([run_id] * table.num_rows, pa.string()))
                yield table


def merge_run(
    location: Location, options: dict[str, str] | None, upserts: pa.Table | Iterable[pa.Table], deleted_ids: pa.Array | Iterable[pa.Array],
    deleted_at: Any, run_id: str, *, check: Callable[[], None] | None = None,
) -> dict[str, Any] | None:
    """One atomic Delta commit: ``upserts`` replace every row of their figure_ids (so a figure
    that had several rows, say from two model versions, ends with one) or are inserted, and the
    rows of ``deleted_ids`` get ``deleted_at`` (their other columns, run_id included, stay as the
    run that wrote them). A table of an older schema version gains the new columns first
    (:func:`upgrade_schema`). Creates the table (an empty version) if there is none. Returns the
    merge metrics, or None when there was nothing to commit.

    ``upserts`` and ``deleted_ids`` may be iterables (staged files read a batch at a time): the
    merge source is then streamed to delta-rs, never held whole in memory. Upserts must hold one
    row per figure_id. ``check`` is called just before the merge (the table lease).

    The merge source holds, per upserted figure, a ``replace`` row that matches (and deletes) the
    figure's old rows and an ``insert`` row that never matches (the merge predicate excludes it)
    and is inserted; per deleted figure, a ``delete`` row that sets ``deleted_at``. Each target row
    thus matches at most one source row, which Delta requires.
    """
    from deltalake import DeltaTable

    if not table_exists(location, options):
        DeltaTable.create(table_uri(location), schema=schema.TABLE_SCHEMA, name=TABLE_NAME, storage_options=options)
    upsert_parts = [upserts] if isinstance(upserts, pa.Table) else upserts
    deleted_parts = [deleted_ids] if isinstance(deleted_ids, (pa.Array, pa.ChunkedArray)) else deleted_ids
    if isinstance(upserts, pa.Table) and isinstance(deleted_ids, (pa.Array, pa.ChunkedArray)) and upserts.num_rows == 0 and len(deleted_ids) == 0:
        return None  # nothing to commit
    upgrade_schema(location, options)
    source_schema = pa.schema([f.with_nullable(True) for f in schema.TABLE_SCHEMA] + [pa.field(_ACTION, pa.string())])
    deleted_type = schema.TABLE_SCHEMA.field(schema.DELETED_AT).type

    def tagged(table: pa.Table, action: str) -> Iterator[pa.RecordBatch]:
        rows = conform(table)
        yield from rows.append_column(_ACTION, pa.array([action] * rows.num_rows, pa.string())).cast(source_schema).to_batches()

    def batches() -> Iterator[pa.RecordBatch]:
        for part in upsert_parts:
            if part.num_rows:
                yield from tagged(part, "insert")
                yield from tagged(pa.table({schema.FIGURE_ID: part.column(schema.FIGURE_ID)}), "replace")
        for ids in deleted_parts:
            if len(ids):
                yield from tagged(pa.table({schema.FIGURE_ID: ids.cast(pa.string()),
                                            schema.DELETED_AT: pa.array([deleted_at] * len(ids), deleted_type)}), "delete")

    if check is not None:
        check()
    table = open_table(location, options)
    return (
        table.merge(pa.RecordBatchReader.from_batches(source_schema, batches()),
                    predicate=f"t.{schema.FIGURE_ID} = s.{schema.FIGURE_ID} AND s.{_ACTION} <> 'insert'",
                    source_alias="s", target_alias="t", commit_properties=_commit_properties(run_id))
        .when_matched_delete(predicate=f"s.{_ACTION} = 'replace'")
        .when_matched_update(updates={schema.DELETED_AT: f"s.{schema.DELETED_AT}"}, predicate=f"s.{_ACTION} = 'delete'")
        .when_not_matched_insert_all(predicate=f"s.{_ACTION} = 'insert'", except_cols=[_ACTION])
        .execute()
    )


def _commit_properties(run_id: str) -> Any:
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={"xai_pipeline.run_id": run_id})


OPTIMIZE_TARGET_BYTES = 128 * 1024  # --target-size: about 1,000 rows a file (see the README's table layout)


def optimize(location: Location, options: dict[str, str] | None, target_size: int = OPTIMIZE_TARGET_BYTES) -> dict[str, Any]:
    """Rewrite the table's files sorted by ``source_uri`` (z-order on one column), cut at
    ``target_size`` bytes: a file then holds a narrow range of articles, so a merge that corrects
    or retracts a few articles rewrites few, small files. A new version; data unchanged."""
    return open_table(location, options).optimize.z_order([schema.SOURCE_URI], target_size=target_size)


def vacuum(location: Location, options: dict[str, str] | None, retention_hours: int, dry_run: bool) -> list[str]:
    """Delete files that no version within ``retention_hours`` needs; older versions stop being readable."""
    return open_table(location, options).vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)


def history(location: Location, options: dict[str, str] | None) -> list[dict[str, Any]]:
    """Versions, newest first: version, timestamp, operation, metrics."""
    return open_table(location, options).history()
