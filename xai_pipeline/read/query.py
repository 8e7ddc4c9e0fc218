"""Query the current snapshot of a figure table: SQL, or filters turned into SQL.

Runs on delta-rs' own SQL engine (DataFusion, through ``deltalake.QueryBuilder``) over one
snapshot of the Delta log, so a query never sees files that a later commit replaced or removed,
and only the columns and files it needs are read. The table is registered as ``figures``.

    from xai_pipeline.read.query import query
    query("s3://tables/figures", modality=["ct"], min_confidence=0.9).to_pandas()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from xai_pipeline import schema
from xai_pipeline.store import sink
from xai_pipeline.store.source import S3Settings, parse_location

if TYPE_CHECKING:  # pragma: no cover
    from deltalake import DeltaTable

TABLE_NAME = "figures"
DEFAULT_COLUMNS = (schema.FIGURE_ID, schema.SOURCE_URI, schema.MODALITY, schema.CONFIDENCE, schema.STATUS, schema.WIDTH, schema.HEIGHT)


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class Filters:
    """Row filters; all given ones must hold. Deleted figures are left out unless asked for."""

    modality: tuple[str, ...] = ()
    min_confidence: float | None = None
    status: tuple[str, ...] = ()
    model_version: str | None = None
    run_id: str | None = None
    source_prefix: str | None = None
    include_deleted: bool = False
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    limit: int | None = None
    order_by: tuple[str, ...] = field(default=(schema.CONFIDENCE + " DESC", schema.FIGURE_ID))

    def to_sql(self, panels: bool = True) -> str:
        """The filters as SQL; ``panels=False`` for tables written before schema 5 (no ``modalities``)."""
        unknown = [c for c in self.columns if c not in schema.TABLE_SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the table has {schema.TABLE_SCHEMA.names}")
        where = []
        if self.modality:
            wanted = ", ".join(_literal(m) for m in self.modality)
            clause = f"{schema.MODALITY} IN ({wanted})"
            if panels:  # or a compound figure with a panel of that modality
                clause = f"({clause} OR array_has_any({schema.MODALITIES}, make_array({wanted})))"
            where.append(clause)
        if self.min_confidence is not None:
            where.append(f"{schema.CONFIDENCE} >= {float(self.min_confidence)!r}")
        if self.status:
            where.append(f"{schema.STATUS} IN ({', '.join(_literal(s) for s in self.status)})")
        if self.model_version:
            where.append(f"{schema.MODEL_VERSION} = {_literal(self.model_version)}")
        if self.run_id:
            where.append(f"{schema.RUN_ID} = {_literal(self.run_id)}")
        if self.source_prefix:
            where.append(f"starts_with({schema.SOURCE_URI}, {_literal(self.source_prefix)})")
        if not self.include_deleted:
            where.append(f"{schema.DELETED_AT} IS NULL")
        sql = f"SELECT {', '.join(self.columns)} FROM {TABLE_NAME}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if self.order_by:
            sql += " ORDER BY " + ", ".join(self.order_by)
        if self.limit is not None:
            sql += f" LIMIT {int(self.limit)}"
        return sql


def run_sql(table_uri: str, sql: str, *, version: int | None = None, settings: S3Settings = S3Settings()) -> pa.Table:
    """Run ``sql`` (the table is ``figures``) on the current snapshot, or on ``version``.

    Columns come back with plain types (``string``, not ``string_view``) for every consumer.
    """
    return _execute(_open(table_uri, version, settings), sql)


def _open(table_uri: str, version: int | None, settings: S3Settings) -> "DeltaTable":
    location = parse_location(table_uri, "--table")
    return sink.open_table(location, sink.storage_options(location, settings), version)


def _execute(table: "DeltaTable", sql: str) -> pa.Table:
    from deltalake import QueryBuilder

    result = pa.table(QueryBuilder().register(TABLE_NAME, table).execute(sql).read_all())
    return result.cast(pa.schema([pa.field(f.name, _plain(f.type), f.nullable) for f in result.schema]))


def _plain(kind: pa.DataType) -> pa.DataType:
    """``string_view`` / ``binary_view`` (what DataFusion returns) as ``string`` / ``binary``, nested too."""
    if kind == pa.string_view():
        return pa.string()
    if kind == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(_plain(kind.value_type))
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _plain(f.type), f.nullable) for f in kind])
    return kind


def query(
    table_uri: str, sql: str | None = None, *, version: int | None = None, settings: S3Settings = S3Settings(), **filters: object
) -> pa.Table:
    """SQL, or keyword filters (see :class:`Filters`), as an Arrow table (``.to_pandas()`` for pandas)."""
    if sql and filters:
        raise ValueError("give SQL or filters, not both")
    if not sql:
        normalised = {k: tuple(v) if isinstance(v, list) else v for k, v in filters.items()}
    table = _open(table_uri, version, settings)
    if not sql:
        names = table.schema().to_arrow().names
        sql = Filters(**normalised).to_sql(panels=schema.MODALITIES in names)  # type: ignore[arg-type]
    return _execute(table, sql)


def _printable(table: pa.Table) -> pa.Table:
    """Binary columns (maps) as their length in bytes, for text output."""
    import pyarrow.compute as pc

    for i, f in enumerate(table.schema):
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            table = table.set_column(i, f.name, pc.binary_length(table.column(i)))
    return table


def write_result(result: pa.Table, format: str, out: str | None) -> None:
    """Write a query's rows as ``table`` (aligned text), ``csv``, ``json`` (lines) or ``parquet``
    to ``out`` or standard output; maps appear as their length in bytes in the text formats."""
    import sys

    if format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result, out)
        return
    handle = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        if format == "csv":
            import io

            import pyarrow.csv as pacsv

            buf = io.BytesIO()
            pacsv.write_csv(_printable(result), buf)
            handle.write(buf.getvalue().decode())
        elif format == "json":
            import json

            for row in _printable(result).to_pylist():
                handle.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        else:
            import pandas as pd

            with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200, "display.max_colwidth", 60):
                handle.write(_printable(result).to_pandas().to_string(index=False) + f"\n({result.num_rows} rows)\n")
    finally:
        if out:
            handle.close()
