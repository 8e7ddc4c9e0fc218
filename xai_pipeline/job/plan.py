"""What a run must do: compare the collection's listing with the table (pure Arrow, no Ray).

A figure is **current** when the table holds exactly one row for it, made by this model name
and version with these settings (``crm_score``, ``roi_threshold``; rows written before schema 4
count as the defaults of the time), not marked deleted, and not of a status a later run retries
(:data:`schema.RETRY_STATUSES`). ``reindex`` also compares content: an ETag or size that differs
from the row's (both known; ETags compared without quotes) makes the figure stale.

Every listed figure that is not current is processed: ``fresh`` when the table has no row for it
(its new row is appended), ``replace`` when it has one or more stale rows (its new row replaces
all of them in a merge), so the table keeps one row per figure_id. Figures of the collection that
the listing no longer has are marked deleted (reindex only).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from xai_pipeline import schema

STATE_COLUMNS = [schema.FIGURE_ID, schema.SOURCE_URI, schema.ETAG, schema.SIZE, schema.MODEL_NAME, schema.MODEL_VERSION,
                 schema.CRM_SCORE, schema.ROI_THRESHOLD, schema.STATUS, schema.DELETED_AT]


@dataclass(frozen=True)
class RowSettings:
    """What makes a row current besides its content."""

    model_name: str
    model_version: str
    crm_score: str = schema.LEGACY_CRM_SCORE
    roi_threshold: float = schema.LEGACY_ROI_THRESHOLD


@dataclass(frozen=True)
class RunPlan:
    fresh: pa.Table  # listing rows the table has no row for: appended
    replace: pa.Table  # listing rows whose table rows are stale: merged, replacing every row of the figure
    skipped: int  # current
    deleted_ids: pa.Array  # figure_ids to mark deleted

    @property
    def new(self) -> int:
        return self.fresh.num_rows

    @property
    def changed(self) -> int:  # content, model or settings changed, duplicates, retried errors, back after deletion
        return self.replace.num_rows

    @property
    def todo(self) -> pa.Table:
        return pa.concat_tables([self.fresh, self.replace]).sort_by("path")


def _column(state: pa.Table, name: str) -> pa.ChunkedArray:
    """A state column; null when the table predates it."""
    if name in state.column_names:
        return state.column(name).cast(schema.TABLE_SCHEMA.field(name).type)
    return pa.chunked_array([pa.nulls(state.num_rows, schema.TABLE_SCHEMA.field(name).type)])


def normalized_etags(etags: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """:func:`schema.normalize_etag` in Arrow: no quotes, empty → null (tables written before
    schema 4 stored S3 listing ETags with quotes)."""
    trimmed = pc.utf8_trim(pc.utf8_trim_whitespace(etags), '"')
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where both are known and differ (an unknown side, e.g. a key-only manifest, never differs)."""
    return pc.fill_null(pc.not_equal(a, b), False)


def _single_rows(state: pa.Table) -> tuple[pa.Table, pa.Array]:
    """The state of figures with exactly one row, and the ids of figures with several."""
    counts = state.group_by(schema.FIGURE_ID).aggregate([(schema.FIGURE_ID, "count")])
    several = counts.filter(pc.greater(counts.column(f"{schema.FIGURE_ID}_count"), 1)).column(schema.FIGURE_ID).combine_chunks()
    single = state.filter(pc.invert(pc.is_in(state.column(schema.FIGURE_ID), value_set=several))) if len(several) else state
    return single, several


def _stale(joined: pa.Table, settings: RowSettings, compare_content: bool) -> pa.ChunkedArray:
    """True where a listed figure's single row is not current (false where there is no row)."""
    def t(name: str) -> pa.ChunkedArray:
        return joined.column(f"t_{name}")

    score = pc.fill_null(t(schema.CRM_SCORE), schema.LEGACY_CRM_SCORE)
    threshold = pc.fill_null(t(schema.ROI_THRESHOLD).cast(pa.float64()), schema.LEGACY_ROI_THRESHOLD)
    conditions = [
        _differs(t(schema.MODEL_NAME), pa.scalar(settings.model_name)),
        _differs(t(schema.MODEL_VERSION), pa.scalar(settings.model_version)),
        pc.not_equal(score, settings.crm_score),
        pc.greater(pc.abs(pc.subtract(threshold, settings.roi_threshold)), 1e-6),
        pc.is_valid(t(schema.DELETED_AT)),
        pc.is_in(t(schema.STATUS), value_set=pa.array(sorted(schema.RETRY_STATUSES), pa.string())),
    ]
    if compare_content:
        conditions += [_differs(joined.column(schema.ETAG), normalized_etags(t(schema.ETAG))),
                       _differs(joined.column(schema.SIZE), t(schema.SIZE))]
    stale = conditions[0]
    for condition in conditions[1:]:
        stale = pc.or_(stale, pc.fill_null(condition, False))
    return pc.and_(pc.is_valid(t(schema.SOURCE_URI)), pc.fill_null(stale, False))


def plan_run(listing: pa.Table, state: pa.Table, settings: RowSettings, *, compare_content: bool,
             input_uri: str | None = None) -> RunPlan:
    """Compare ``listing`` (from :mod:`xai_pipeline.job.listing`; one row per figure) with the
    table's ``state`` (:data:`STATE_COLUMNS`, any number of rows per figure).

    ``compare_content``: ETag and size changes make a figure stale (``reindex``). ``input_uri``:
    mark figures deleted that lie under it (``s3://b/in`` covers ``s3://b/in/…``; a table may hold
    several collections) and that the listing no longer has; ``None`` marks none (``index``).
    """
    state = pa.table({name: _column(state, name) for name in STATE_COLUMNS})
    single, several = _single_rows(state)
    right = single.rename_columns([f"t_{c}" if c != schema.FIGURE_ID else c for c in STATE_COLUMNS])
    joined = listing.join(right, keys=schema.FIGURE_ID, join_type="left outer")
    in_table = pc.or_(pc.is_valid(joined.column(f"t_{schema.SOURCE_URI}")), pc.is_in(joined.column(schema.FIGURE_ID), value_set=several))
    duplicated = pc.is_in(joined.column(schema.FIGURE_ID), value_set=several)
    replace = pc.or_(duplicated, _stale(joined, settings, compare_content))
    fresh = pc.invert(in_table)
    columns = listing.column_names
    fresh_rows = joined.filter(fresh).select(columns).sort_by("path")
    replace_rows = joined.filter(replace).select(columns).sort_by("path")
    deleted = pa.array([], pa.string())
    if input_uri is not None:
        prefix = input_uri.rstrip("/") + "/"
        uris = state.column(schema.SOURCE_URI)
        in_collection = pc.or_(pc.starts_with(uris, prefix), pc.equal(uris, input_uri))
        alive = pc.is_null(state.column(schema.DELETED_AT))
        gone = pc.invert(pc.is_in(state.column(schema.FIGURE_ID), value_set=listing.column(schema.FIGURE_ID)))
        deleted = pc.unique(state.filter(pc.and_(pc.and_(in_collection, alive), gone)).column(schema.FIGURE_ID).combine_chunks())
    skipped = listing.num_rows - fresh_rows.num_rows - replace_rows.num_rows
    return RunPlan(fresh_rows, replace_rows, skipped, deleted)


def reindex_plan(listing: pa.Table, state: pa.Table, model_name: str, model_version: str, input_uri: str,
                 crm_score: str = schema.LEGACY_CRM_SCORE, roi_threshold: float = schema.LEGACY_ROI_THRESHOLD) -> RunPlan:
    """The reindex plan: content compared, deletions under ``input_uri`` marked."""
    settings = RowSettings(model_name, model_version, crm_score, roi_threshold)
    return plan_run(listing, state, settings, compare_content=True, input_uri=input_uri)


def index_plan(listing: pa.Table, state: pa.Table, settings: RowSettings) -> RunPlan:
    """The index plan: figures not current under ``settings``; content and deletions not compared."""
    return plan_run(listing, state, settings, compare_content=False)


def first_per_key(table: pa.Table, key: str, order: list[tuple[str, str]]) -> pa.Table:
    """One row per ``key``: the first in ``order`` (e.g. the newest by ``processed_at``)."""
    if table.num_rows < 2:
        return table
    table = table.sort_by([(key, "ascending"), *order])
    keys = table.column(key).combine_chunks()
    first = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
    return table.filter(pa.concat_arrays([pa.array([True]), pc.fill_null(first, True)]))


def dedupe_listing(listing: pa.Table) -> pa.Table:
    """One listing row per path (a manifest may name a key twice, an inventory several versions):
    the one with the most known fields (size, ETag), then the least ETag and size, so the choice
    does not depend on the order rows arrive in; sorted by path."""
    known = pc.add(pc.is_valid(listing.column("size")).cast(pa.int8()), pc.is_valid(listing.column("etag")).cast(pa.int8()))
    order = [("_known", "descending"), ("etag", "ascending"), ("size", "ascending")]
    return first_per_key(listing.append_column("_known", known), "path", order).drop_columns(["_known"])


def trusted_staged(staged: pa.Table, todo: pa.Table, settings: RowSettings) -> pa.Table:
    """Rows an interrupted run staged that this run can commit instead of processing again.

    A staged row is trusted when its figure is still to do, it was made by this model name and
    version with these settings, its ETag and size match the listing's (where both are known),
    and its status is not one a run retries; one row per figure (the newest) is kept.
    """
    if staged.num_rows == 0 or todo.num_rows == 0:
        return staged.slice(0, 0)
    # Arrow joins carry no list columns (probabilities, boxes): look the listing up by index instead.
    position = pc.index_in(staged.column(schema.FIGURE_ID), value_set=todo.column(schema.FIGURE_ID).combine_chunks())
    listed_etag = pc.take(todo.column(schema.ETAG), position)
    listed_size = pc.take(todo.column(schema.SIZE), position)
    ok = pc.and_(pc.is_valid(position), pc.equal(staged.column(schema.MODEL_NAME), settings.model_name))
    ok = pc.and_(ok, pc.equal(staged.column(schema.MODEL_VERSION), settings.model_version))
    ok = pc.and_(ok, pc.equal(pc.fill_null(staged.column(schema.CRM_SCORE), schema.LEGACY_CRM_SCORE), settings.crm_score))
    threshold = pc.fill_null(staged.column(schema.ROI_THRESHOLD).cast(pa.float64()), schema.LEGACY_ROI_THRESHOLD)
    ok = pc.and_(ok, pc.less_equal(pc.abs(pc.subtract(threshold, settings.roi_threshold)), 1e-6))
    ok = pc.and_(ok, pc.invert(_differs(listed_etag, normalized_etags(staged.column(schema.ETAG)))))
    ok = pc.and_(ok, pc.invert(_differs(listed_size, staged.column(schema.SIZE))))
    ok = pc.and_(ok, pc.invert(pc.is_in(staged.column(schema.STATUS), value_set=pa.array(sorted(schema.RETRY_STATUSES), pa.string()))))
    kept = staged.filter(pc.fill_null(ok, False))
    return first_per_key(kept, schema.FIGURE_ID, [(schema.PROCESSED_AT, "descending")])
