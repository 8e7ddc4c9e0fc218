"""The plan at collection scale: both sides bucketed by article, each bucket diffed in its own task.

The driver never holds the listing or the table's state. Ray tasks write the listing rows and the
table's state rows (:data:`plan.STATE_COLUMNS`) into ``B`` buckets of Parquet files in the run's
scratch folder, by a hash of the figure's folder (its article): every figure of one article, on
both sides, lands in one bucket. One task per bucket then runs the in-memory plan
(:func:`plan.plan_run`: the same function, on 1/B of the collection) and writes that bucket's
figures to process (``todo/``, sorted by path, each with its route) and figure_ids to mark deleted
(``deleted/``), and returns counts. Since every decision of the plan concerns one figure_id, the
union of the buckets' plans is the plan of the whole collection.

Bucketing by article rather than by figure_id keeps an article's figures together downstream: a
file the job appends holds whole articles, which is what a nightly merge of corrected or
retracted articles wants (few files to rewrite).
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xai_pipeline.job import listing, plan
from xai_pipeline import schema
from xai_pipeline.store import sink
from xai_pipeline.job.listing import LISTING_SCHEMA
from xai_pipeline.store.source import Location, S3Settings, make_filesystem

log = logging.getLogger(__name__)

LISTING, STATE, STAGED, TODO, DELETED, REUSED = "listing", "state", "staged", "todo", "deleted", "reused"
COUNT_COLUMNS = ("listed", "new", "changed", "skipped", "deleted", "reused")
TODO_SCHEMA = pa.schema([*LISTING_SCHEMA, pa.field(schema.FIGURE_ID, pa.string()), pa.field(schema.ROUTE, pa.string())])


def bucket_count(expected_rows: int, rows_per_bucket: int = 250_000, most: int = 4096) -> int:
    """Buckets for a collection of about ``expected_rows``: a power of two, at least 8."""
    count = 8
    while count < most and count * rows_per_bucket < expected_rows:
        count *= 2
    return count


def bucket_of(uris: pa.ChunkedArray | pa.Array, buckets: int) -> np.ndarray:
    """The bucket of each figure: CRC-32 of its folder (``source_uri`` up to the last ``/``)."""
    return np.fromiter((zlib.crc32(u.rsplit("/", 1)[0].encode()) % buckets for u in uris.to_pylist()), dtype=np.int64, count=len(uris))


def _folder(scratch: Location, side: str, bucket: int | None = None) -> str:
    base = f"{scratch.path.rstrip('/')}/{side}"
    return base if bucket is None else f"{base}/b={bucket:05d}"


def write_buckets(rows: pa.Table, *, uri_column: str, buckets: int, scratch: Location, side: str, fs: pafs.FileSystem) -> pa.Table:
    """Write ``rows`` into the ``side`` buckets (one file per bucket present); returns ``{rows}``."""
    if rows.num_rows:
        index = bucket_of(rows.column(uri_column), buckets)
        order = np.argsort(index, kind="stable")
        rows, index = rows.take(pa.array(order)), index[order]
        starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
        for start, stop in zip(starts, [*starts[1:], len(index)]):
            folder = _folder(scratch, side, int(index[start]))
            if scratch.scheme == "file":
                fs.create_dir(folder, recursive=True)
            with fs.open_output_stream(f"{folder}/{uuid.uuid4().hex}.parquet") as out:
                pq.write_table(rows.slice(int(start), int(stop - start)), out)
    return pa.table({"rows": [rows.num_rows]})


def _read_folder(fs: pafs.FileSystem, folder: str, empty: pa.Schema) -> pa.Table:
    infos = [i for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)) if i.type == pafs.FileType.File]
    tables = []
    for info in infos:
        with fs.open_input_file(info.path) as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables, promote_options="permissive") if tables else empty.empty_table()


def plan_bucket(bucket: int, *, scratch: Location, fs: pafs.FileSystem, settings: plan.RowSettings, compare_content: bool,
                input_uri: str | None, overwrite: bool) -> pa.Table:
    """Plan one bucket; writes its ``todo`` and ``deleted`` files and returns its counts."""
    listing = _read_folder(fs, _folder(scratch, LISTING, bucket), TODO_SCHEMA.remove(TODO_SCHEMA.get_field_index(schema.ROUTE)))
    listing = plan.dedupe_listing(listing)
    state_schema = pa.schema([schema.TABLE_SCHEMA.field(c) for c in plan.STATE_COLUMNS])
    state = state_schema.empty_table() if overwrite else _read_folder(fs, _folder(scratch, STATE, bucket), state_schema)
    result = plan.plan_run(listing, state, settings, compare_content=compare_content, input_uri=input_uri)
    todo = pa.concat_tables([
        result.fresh.append_column(schema.ROUTE, pa.array([schema.ROUTE_APPEND] * result.new, pa.string())),
        result.replace.append_column(schema.ROUTE, pa.array([schema.ROUTE_STAGE] * result.changed, pa.string())),
    ]).sort_by("path")
    staged = _read_folder(fs, _folder(scratch, STAGED, bucket), schema.TABLE_SCHEMA)
    reused = plan.trusted_staged(staged, todo, settings) if staged.num_rows else staged.slice(0, 0)
    if reused.num_rows:  # rows an interrupted run staged: committed by this run's merge instead of processed again
        todo = todo.filter(pc.invert(pc.is_in(todo.column(schema.FIGURE_ID), value_set=reused.column(schema.FIGURE_ID))))
    outputs = ((TODO, todo.cast(TODO_SCHEMA)), (DELETED, pa.table({schema.FIGURE_ID: result.deleted_ids})), (REUSED, reused))
    for side, table in outputs:
        if table.num_rows:
            fs.create_dir(_folder(scratch, side), recursive=True)
            with fs.open_output_stream(f"{_folder(scratch, side)}/b={bucket:05d}.parquet") as out:
                pq.write_table(table, out)
    return pa.table({"listed": [listing.num_rows], "new": [result.new], "changed": [result.changed], "skipped": [result.skipped],
                     "deleted": [len(result.deleted_ids)], "reused": [reused.num_rows]})


def state_rows(path: str, fs: pafs.FileSystem) -> pa.Table:
    """The :data:`plan.STATE_COLUMNS` of one table data file (columns it predates are null)."""
    with fs.open_input_file(path) as fh:
        parquet = pq.ParquetFile(fh)
        present = set(parquet.schema_arrow.names)
        table = parquet.read(columns=[c for c in plan.STATE_COLUMNS if c in present])
    columns = {}
    for name in plan.STATE_COLUMNS:
        kind = schema.TABLE_SCHEMA.field(name).type
        columns[name] = table.column(name).cast(kind) if name in table.column_names else pa.nulls(table.num_rows, kind)
    return pa.table(columns)


def files(scratch: Location, fs: pafs.FileSystem, side: str) -> list[str]:
    """The files of one side (``todo``, ``reused``, ...) the bucket tasks wrote, in bucket order."""
    folder = _folder(scratch, side)
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)) if i.type == pafs.FileType.File)


def deleted_ids(scratch: Location, fs: pafs.FileSystem) -> Iterator[pa.Array]:
    """The figure_ids to mark deleted, a bucket file at a time (never all in memory)."""
    folder = _folder(scratch, DELETED)
    for info in sorted(fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)), key=lambda i: i.path):
        if info.type == pafs.FileType.File:
            with fs.open_input_file(info.path) as fh:
                yield pq.read_table(fh).column(schema.FIGURE_ID).combine_chunks()


UNIT_SCHEMA = pa.schema([(name, pa.string()) for name in ("kind", "path", "format", "columns")])
BUCKET_ROWS = 100_000  # listing rows gathered before a task writes them into the buckets


# Ray Data stages of the plan (``map_batches`` functions, one unit, file or bucket per call; they
# yield small count tables, never rows).


def expand_units(units: pa.Table, *, location: Location, settings: S3Settings) -> Any:
    for unit in units.to_pylist():
        for page in listing.expand({k: v for k, v in unit.items() if v is not None}, location, settings):
            yield pa.Table.from_pylist(page, schema=UNIT_SCHEMA)


def list_units(units: pa.Table, *, location: Location, settings: S3Settings, scratch: Location, buckets: int) -> Any:
    fs = make_filesystem(scratch, settings)
    for unit in units.to_pylist():
        pages: list[pa.Table] = []
        for page in listing.unit_rows({k: v for k, v in unit.items() if v is not None}, location, settings):
            pages.append(listing.with_ids(page))
            if sum(p.num_rows for p in pages) >= BUCKET_ROWS:
                yield write_buckets(pa.concat_tables(pages), uri_column="uri", buckets=buckets, scratch=scratch, side=LISTING, fs=fs)
                pages = []
        if pages:
            yield write_buckets(pa.concat_tables(pages), uri_column="uri", buckets=buckets, scratch=scratch, side=LISTING, fs=fs)


def bucket_files(paths: pa.Table, *, side: str, settings: S3Settings, scratch: Location, buckets: int, staged: bool) -> Any:
    """Table data files (``state``) or interrupted runs' staged files (``staged``) into buckets."""
    fs = make_filesystem(scratch, settings)
    for path in paths.column("path").to_pylist():
        if staged:
            try:
                with fs.open_input_file(path) as fh:
                    rows = sink.conform(pq.read_table(fh))
            except (OSError, pa.ArrowInvalid) as exc:  # a write cut off by a crash: its figures are processed again
                log.warning("staged file %s cannot be read (%s)", path, exc)
                continue
        else:
            rows = state_rows(path, fs)
        yield write_buckets(rows, uri_column=schema.SOURCE_URI, buckets=buckets, scratch=scratch, side=side, fs=fs)


def plan_buckets(items: pa.Table, *, scratch: Location, settings: S3Settings, row_settings: plan.RowSettings, compare_content: bool,
                input_uri: str | None, overwrite: bool) -> Any:
    fs = make_filesystem(scratch, settings)
    for bucket in items.column("bucket").to_pylist():
        yield plan_bucket(int(bucket), scratch=scratch, fs=fs, settings=row_settings, compare_content=compare_content,
                                        input_uri=input_uri, overwrite=overwrite)
