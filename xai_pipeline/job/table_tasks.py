"""Work on the table that runs in Ray tasks, off the driver, whose memory must not grow with the
collection: the run's merge and the count of the run's rows (:mod:`xai_pipeline.job.pipeline`
submits them)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from xai_pipeline.job import buckets as buckets_stage
from xai_pipeline.store import sink
from xai_pipeline.store.source import Location, S3Settings, make_filesystem


def merge_task(target: Location, options: dict[str, str] | None, settings: S3Settings, staging: Location, staged: list[str],
                scratch: Location, reused: list[str], run_id: str, deleted_at: dt.datetime) -> dict[str, Any] | None:
    """The run's merge, in a Ray task: delta-rs scans the whole table to find the matches, which
    would make the driver's memory grow with the collection. Its source is streamed from the
    staged files, the reused rows and the deletions, never held whole."""
    fs = make_filesystem(target, settings)
    rows = itertools.chain(sink.staged_tables(staging, fs, staged, root=False), sink.staged_tables(scratch, fs, reused, root=True, run_id=run_id))
    return sink.merge_run(target, options, rows, buckets_stage.deleted_ids(scratch, fs), deleted_at, run_id)


def count_task(target: Location, options: dict[str, str] | None, run_id: str) -> tuple[int | None, dict[str, int]]:
    """This run's rows in the table, by status, in a Ray task (a scan of the table's run_id and
    status columns: off the driver)."""
    if not sink.table_exists(target, options):
        return None, {}
    version, statuses = sink.status_counts(target, options, run_id)
    return version, dict(statuses)
