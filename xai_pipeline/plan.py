"""What a run must do: compare the collection's listing with the table (pure Arrow, no Ray).

``index`` processes what this model name and version has not committed. ``reindex`` also
compares content: a figure is processed when it is new, its ETag or size changed, it was marked
deleted and is back, or the table holds it from another model or version; figures of the
collection that the listing no longer has are marked deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from xai_pipeline import schema

STATE_COLUMNS = [schema.FIGURE_ID, schema.SOURCE_URI, schema.ETAG, schema.SIZE, schema.MODEL_NAME, schema.MODEL_VERSION, schema.DELETED_AT]


def not_in(listing: pa.Table, ids: pa.Array) -> pa.Table:
    """Listing rows whose figure_id is not among ``ids``."""
    return listing.filter(pc.invert(pc.is_in(listing.column(schema.FIGURE_ID), value_set=ids)))


def count_in(listing: pa.Table, ids: pa.Array) -> int:
    return int(pc.sum(pc.is_in(listing.column(schema.FIGURE_ID), value_set=ids)).as_py() or 0)


@dataclass(frozen=True)
class ReindexPlan:
    todo: pa.Table  # listing rows to process
    new: int
    changed: int  # content changed, model changed, or back after deletion
    skipped: int  # unchanged
    deleted_ids: pa.Array  # figure_ids to mark deleted


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where both are known and differ (an unknown side, e.g. no ETag locally, never differs)."""
    return pc.fill_null(pc.not_equal(a, b), False)


def reindex_plan(listing: pa.Table, state: pa.Table, model_name: str, model_version: str, input_uri: str) -> ReindexPlan:
    """Compare ``listing`` (from :mod:`xai_pipeline.listing`) with the table's current ``state``.

    Deletions are limited to rows whose ``source_uri`` lies under ``input_uri``: a table may hold
    several collections.
    """
    state = state.select(STATE_COLUMNS)
    right = state.rename_columns([f"t_{c}" if c != schema.FIGURE_ID else c for c in STATE_COLUMNS])
    joined = listing.join(right, keys=schema.FIGURE_ID, join_type="left outer")
    missing = pc.is_null(joined.column(f"t_{schema.SOURCE_URI}"))
    changed = pc.or_(
        pc.or_(_differs(joined.column(schema.ETAG), joined.column(f"t_{schema.ETAG}")),
               _differs(joined.column(schema.SIZE), joined.column(f"t_{schema.SIZE}"))),
        pc.or_(pc.or_(_differs(joined.column(f"t_{schema.MODEL_NAME}"), pa.scalar(model_name)),
                      _differs(joined.column(f"t_{schema.MODEL_VERSION}"), pa.scalar(model_version))),
               pc.is_valid(joined.column(f"t_{schema.DELETED_AT}"))),
    )
    changed = pc.and_(pc.invert(missing), changed)
    todo = joined.filter(pc.or_(missing, changed)).select(listing.column_names).sort_by("path")
    prefix = input_uri.rstrip("/") + "/"
    uris = state.column(schema.SOURCE_URI)
    in_collection = pc.or_(pc.starts_with(uris, prefix), pc.equal(uris, input_uri))
    alive = pc.is_null(state.column(schema.DELETED_AT))
    gone = pc.invert(pc.is_in(state.column(schema.FIGURE_ID), value_set=listing.column(schema.FIGURE_ID)))
    deleted = state.filter(pc.and_(pc.and_(in_collection, alive), gone)).column(schema.FIGURE_ID).combine_chunks()
    n_missing = int(pc.sum(missing).as_py() or 0)
    n_changed = int(pc.sum(changed).as_py() or 0)
    return ReindexPlan(todo, n_missing, n_changed, listing.num_rows - n_missing - n_changed, deleted)
