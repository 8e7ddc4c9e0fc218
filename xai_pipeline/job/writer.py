"""The table side of the streaming pipeline: workers write rows as Parquet files, the driver commits
the finished files to the Delta log as they stream out.

Workers (:func:`write_files`) write each batch of table rows as one Parquet file, sorted by
``source_uri`` so that a file holds the figures of few articles, with Delta column statistics
(``minValues`` / ``maxValues`` / ``nullCount``) that let readers and merges skip files. Rows to
append go beside the Delta log (``xai-<run_id>-<uuid>.parquet``, invisible to readers until
committed); rows that replace existing rows go to the run's staging folder, for one merge at the
end. Each worker returns one small row per file — never the rows themselves.

The driver (:class:`Committer`) gathers those file records and commits them as ``add`` actions
every ``--commit-every`` figures or ``--commit-seconds``, whichever comes first, without draining
the pipeline. Each commit carries a Delta application transaction ``(app_id = run_id, version =
commit number)``, so a commit retried after an ambiguous failure is not applied twice. A crash
loses at most the files not yet committed; they are removed by the next run (or by vacuum).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xai_pipeline import schema
from xai_pipeline.job import faults
from xai_pipeline.store import sink
from xai_pipeline.store.source import Location, S3Settings, make_filesystem

log = logging.getLogger(__name__)

FILE_COLUMNS = pa.schema([("path", pa.string()), ("size", pa.int64()), ("rows", pa.int64()), ("stats", pa.string()),
                          ("kind", pa.string()), ("actors", pa.string())])
APPEND, STAGE = schema.ROUTE_APPEND, schema.ROUTE_STAGE
# Columns with Delta statistics: what readers filter and merges match on.
STATS_COLUMNS = (schema.FIGURE_ID, schema.SOURCE_URI, schema.SIZE, schema.MODALITY, schema.CONFIDENCE, schema.MODEL_VERSION,
                 schema.RUN_ID, schema.STATUS, schema.PROCESSED_AT)
_FILESYSTEMS: dict[tuple[str, S3Settings], pafs.FileSystem] = {}


def file_prefix(run_id: str) -> str:
    return f"xai-{run_id}-"


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def delta_stats(table: pa.Table) -> str:
    """Delta's per-file statistics JSON for :data:`STATS_COLUMNS`."""
    mins, maxs, nulls = {}, {}, {}
    for name in STATS_COLUMNS:
        column = table.column(name)
        nulls[name] = column.null_count
        if column.null_count < len(column):
            bounds = pc.min_max(column)
            mins[name], maxs[name] = _json_value(bounds["min"].as_py()), _json_value(bounds["max"].as_py())
    return json.dumps({"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def _filesystem(location: Location, settings: S3Settings) -> pafs.FileSystem:
    key = (location.uri, settings)
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = make_filesystem(location, settings)
    return _FILESYSTEMS[key]


def write_files(rows: pa.Table, *, table: Location, staging: Location, settings: S3Settings, run_id: str) -> pa.Table:
    """The write stage: rows of :data:`schema.TABLE_SCHEMA` plus :data:`schema.ROUTE` → one
    Parquet file per route (``append`` beside the Delta log, ``stage`` in ``staging``); returns
    one :data:`FILE_COLUMNS` row per file (paths relative to the table, or to the staging folder)."""
    records = []
    routes = rows.column(schema.ROUTE) if schema.ROUTE in rows.column_names else pa.chunked_array([pa.array([APPEND] * rows.num_rows)])
    for kind, root in ((APPEND, table), (STAGE, staging)):
        part = rows.filter(pc.equal(routes, kind))
        if part.num_rows == 0:
            continue
        actors = sorted(set(part.column(schema.ACTOR).to_pylist())) if schema.ACTOR in part.column_names else []
        part = part.drop_columns([c for c in (schema.ROUTE, schema.ACTOR) if c in part.column_names])
        part = part.cast(schema.TABLE_SCHEMA).sort_by(schema.SOURCE_URI)
        name = f"{file_prefix(run_id)}{uuid.uuid4().hex}.parquet"
        fs = _filesystem(root, settings)
        if root.scheme == "file":
            fs.create_dir(root.path, recursive=True)
        with fs.open_output_stream(f"{root.path.rstrip('/')}/{name}") as out:
            pq.write_table(part, out, compression="zstd", write_statistics=True)
        size = fs.get_file_info(f"{root.path.rstrip('/')}/{name}").size
        records.append({"path": name, "size": int(size), "rows": part.num_rows, "stats": delta_stats(part), "kind": kind,
                        "actors": json.dumps(actors)})
    return pa.Table.from_pylist(records, schema=FILE_COLUMNS)


@dataclass
class Committer:
    """Commits appended files to the Delta log in batches (driver side).

    ``overwrite``: the first commit replaces the table's rows (``--mode overwrite``).
    ``check``: called before each commit (the table lease's :meth:`check`).
    """

    table_uri: str
    options: dict[str, str] | None
    run_id: str
    every_figures: int
    every_seconds: float
    overwrite: bool = False
    check: Any = None  # () -> None, raises to stop a commit (the lease)
    on_commit: Any = None  # (Committer) -> None, after each commit (the run record)
    commits: int = 0
    committed_rows: int = 0
    staged: list[dict[str, Any]] = field(default_factory=list)
    actors: set[str] = field(default_factory=set)  # classifier actors whose rows were written
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _since: float = field(default_factory=time.monotonic)

    pending_rows: int = 0  # rows of the pending files (a running count)

    def add(self, files: pa.Table) -> None:
        """Take the file records of one write task; commit when a threshold is reached."""
        for record in files.to_pylist():
            if record["kind"] == APPEND:
                self._pending.append(record)
                self.pending_rows += int(record["rows"])
            else:
                self.staged.append(record)
            self.actors.update(json.loads(record.get("actors") or "[]"))
            if self.pending_rows >= self.every_figures or (self._pending and time.monotonic() - self._since >= self.every_seconds):
                self.commit()

    def commit(self) -> None:
        """Commit the pending files as one Delta version (idempotent per run and commit number)."""
        if not self._pending:
            return
        if self.check is not None:
            self.check()
        version = self.commits + 1
        sink.commit_files(self.table_uri, self.options, self._pending, self.run_id, version,
                          overwrite=self.overwrite and self.commits == 0)
        self.commits += 1
        self.committed_rows += self.pending_rows
        log.info("run %s: commit %d, %d files, %d rows", self.run_id, version, len(self._pending), self.pending_rows)
        self._pending = []
        self.pending_rows = 0
        self._since = time.monotonic()
        if self.on_commit is not None:
            self.on_commit(self)
        faults.maybe_delay("commit", f"[commit {version}]")
