"""Which figures reindex processes, skips and marks deleted."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from xai_pipeline import schema
from xai_pipeline.job.listing import LISTING_SCHEMA
from xai_pipeline.job.plan import STATE_COLUMNS, RowSettings, index_plan, reindex_plan, trusted_staged


def _listing(rows: list[tuple[str, int, str | None]]) -> pa.Table:
    paths = [f"b/in/{k}" for k, _, _ in rows]
    table = pa.table([paths, [f"s3://{p}" for p in paths], [r[1] for r in rows], [schema.normalize_etag(r[2]) for r in rows]],
                     schema=LISTING_SCHEMA)
    return table.append_column(schema.FIGURE_ID, pa.array([schema.figure_id(u) for u in table.column("uri").to_pylist()]))


def _state(rows: list[tuple[str, int, str | None, str, bool]], **extra: list[object]) -> pa.Table:
    uris = [k if k.startswith("s3://") else f"s3://b/in/{k}" for k, *_ in rows]
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    n = len(rows)
    data = {
        schema.FIGURE_ID: [schema.figure_id(u) for u in uris],
        schema.SOURCE_URI: uris,
        schema.ETAG: [r[2] for r in rows],
        schema.SIZE: [r[1] for r in rows],
        schema.MODEL_NAME: ["m"] * n,
        schema.MODEL_VERSION: [r[3] for r in rows],
        schema.CRM_SCORE: extra.get(schema.CRM_SCORE, [None] * n),
        schema.ROI_THRESHOLD: extra.get(schema.ROI_THRESHOLD, [None] * n),
        schema.STATUS: extra.get(schema.STATUS, ["ok"] * n),
        schema.DELETED_AT: [when if r[4] else None for r in rows],
    }
    return pa.table(data, schema=pa.schema([schema.TABLE_SCHEMA.field(c) for c in STATE_COLUMNS]))


def test_new_changed_unchanged_deleted_and_reappeared() -> None:
    listing = _listing([("same", 10, '"e1"'), ("etag", 10, '"new"'), ("size", 11, None), ("model", 10, '"e4"'),
                        ("back", 10, '"e5"'), ("new", 10, '"e6"')])
    state = _state([("same", 10, '"e1"', "1", False), ("etag", 10, '"old"', "1", False), ("size", 10, None, "1", False),
                    ("model", 10, '"e4"', "0", False), ("back", 10, '"e5"', "1", True), ("gone", 10, '"e7"', "1", False),
                    ("gone-before", 10, '"e8"', "1", True), ("s3://b/other/x", 10, '"e9"', "1", False)])
    plan = reindex_plan(listing, state, "m", "1", "s3://b/in")
    todo = {u.rsplit("/", 1)[1] for u in plan.todo.column("uri").to_pylist()}
    assert todo == {"etag", "size", "model", "back", "new"}
    assert (plan.new, plan.changed, plan.skipped) == (1, 4, 1)
    # Only rows of this collection that are still alive are marked; other prefixes are untouched.
    assert plan.deleted_ids.to_pylist() == [schema.figure_id("s3://b/in/gone")]


def test_a_new_model_version_reprocesses_everything() -> None:
    listing = _listing([("a", 1, '"x"'), ("b", 2, '"y"')])
    state = _state([("a", 1, '"x"', "1", False), ("b", 2, '"y"', "1", False)])
    plan = reindex_plan(listing, state, "m", "2", "s3://b/in")
    assert plan.todo.num_rows == 2 and plan.skipped == 0 and len(plan.deleted_ids) == 0


def test_empty_table_processes_all_and_index_helpers() -> None:
    listing = _listing([("a", 1, None), ("b", 2, None)])
    empty = pa.schema([schema.TABLE_SCHEMA.field(c) for c in STATE_COLUMNS]).empty_table()
    plan = reindex_plan(listing, empty, "m", "1", "s3://b/in")
    assert plan.new == 2 and plan.todo.num_rows == 2


def _names(table: pa.Table) -> set[str]:
    return {u.rsplit("/", 1)[1] for u in table.column("uri").to_pylist()}


def test_quoted_and_unquoted_etags_agree_and_unknown_sides_never_differ() -> None:
    # Listing ETags are normalised; tables written before schema 4 kept the listing's quotes.
    listing = _listing([("a", 1, "e1"), ("b", 2, None), ("c", 3, "e3")])
    state = _state([("a", 1, '"e1"', "1", False), ("b", 2, '"e2"', "1", False), ("c", None, None, "1", False)])
    plan = reindex_plan(listing, state, "m", "1", "s3://b/in")
    assert (plan.new, plan.changed, plan.skipped) == (0, 0, 3)


def test_settings_duplicates_retry_statuses_and_index_skip_rules() -> None:
    listing = _listing([(k, 1, "e") for k in ("legacy", "soft", "thresh", "dup", "readerr", "trunc", "new", "gone-back")])
    state = _state(
        [("legacy", 1, "e", "1", False), ("soft", 1, "e", "1", False), ("thresh", 1, "e", "1", False), ("dup", 1, "e", "1", False),
         ("dup", 1, "e", "0", False), ("readerr", 1, "e", "1", False), ("trunc", 1, "e", "1", False), ("gone-back", 1, "e", "1", True)],
        **{schema.CRM_SCORE: [None, "softmax", "logit", "logit", "logit", "logit", "logit", "logit"],
           schema.ROI_THRESHOLD: [None, 0.2, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2],
           schema.STATUS: ["ok", "ok", "ok", "ok", "ok", "read_error", "truncated", "ok"]})
    settings = RowSettings("m", "1", "logit", 0.2)
    plan = index_plan(listing, state, settings)
    # Rows before schema 4 count as logit / 0.2; a second row of a figure makes it stale; read
    # errors are retried, truncated figures are not; index re-processes a figure marked deleted.
    assert _names(plan.replace) == {"soft", "thresh", "dup", "readerr", "gone-back"}
    assert _names(plan.fresh) == {"new"} and plan.skipped == 2
    assert len(plan.deleted_ids) == 0  # index never marks deletions
    again = index_plan(listing, state, RowSettings("m", "1", "softmax", 0.2))
    assert "soft" not in _names(again.replace) and "legacy" in _names(again.replace)


def test_duplicates_in_state_give_one_plan_row_per_figure() -> None:
    listing = _listing([("a", 1, "e"), ("b", 1, "e")])
    state = _state([("a", 1, "e", "0", False), ("a", 1, "e", "1", False), ("b", 1, "e", "1", False), ("b", 1, "e", "1", False),
                    ("gone", 1, "e", "0", False), ("gone", 1, "e", "1", False)])
    plan = reindex_plan(listing, state, "m", "1", "s3://b/in")
    assert plan.todo.column("uri").to_pylist() == ["s3://b/in/a", "s3://b/in/b"]
    assert (plan.new, plan.changed) == (0, 2)
    assert plan.deleted_ids.to_pylist() == [schema.figure_id("s3://b/in/gone")]


def test_trusted_staged_rows_match_content_model_and_settings() -> None:
    listing = _listing([("a", 10, "e1"), ("b", 10, "e2"), ("c", 10, "e3"), ("d", 10, None)])
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

    def staged(key: str, size: int, etag: str, version: str = "1", status: str = "ok", at: int = 0) -> dict[str, object]:
        row = {f.name: None for f in schema.TABLE_SCHEMA}
        uri = f"s3://b/in/{key}"
        row.update({schema.FIGURE_ID: schema.figure_id(uri), schema.SOURCE_URI: uri, schema.ETAG: etag, schema.SIZE: size,
                    schema.MODEL_NAME: "m", schema.MODEL_VERSION: version, schema.CRM_SCORE: "logit", schema.ROI_THRESHOLD: 0.2,
                    schema.STATUS: status, schema.RUN_ID: "old", schema.PROCESSED_AT: when + dt.timedelta(seconds=at)})
        return row

    rows = [staged("a", 10, "e1"), staged("a", 10, "e1", at=5), staged("b", 10, "other"), staged("c", 10, "e3", version="0"),
            staged("d", 10, "anything", status="read_error"), staged("x", 1, "e")]
    kept = trusted_staged(pa.Table.from_pylist(rows, schema=schema.TABLE_SCHEMA), listing, RowSettings("m", "1"))
    assert kept.column(schema.SOURCE_URI).to_pylist() == ["s3://b/in/a"]
    assert kept.column(schema.PROCESSED_AT)[0].as_py() == when + dt.timedelta(seconds=5)


def test_actor_pool_always_leaves_a_cpu_for_fetch_and_decode() -> None:
    from xai_pipeline.job.sizing import actor_pool as _actor_pool

    assert _actor_pool(1, 100, 0.0, {"CPU": 2.0}) == (1, 1.0)
    pool, cpus = _actor_pool(2, 100, 0.0, {"CPU": 2.0})  # two actors on two CPUs used to hang
    assert pool == 2 and pool * cpus <= 1.0
    assert _actor_pool(8, 3, 0.0, {"CPU": 16.0}) == (3, 1.0)  # no more actors than batches
    assert _actor_pool(1, 10, 0.0, {"CPU": 1.0}) == (1, 0.0)  # a 1-CPU machine: the actor reserves none


def test_actor_pool_size_by_default_and_on_autoscaling_clusters() -> None:
    from xai_pipeline.job.sizing import actor_pool as _actor_pool

    assert _actor_pool(None, 100, 1.0, {"CPU": 32.0, "GPU": 4.0}) == (4, 1.0)  # one per GPU
    assert _actor_pool(None, 100, 0.5, {"CPU": 32.0, "GPU": 4.0}) == (8, 1.0)  # half a GPU each
    assert _actor_pool(None, 100, 0.0, {"CPU": 16.0}, torch_threads=4)[0] == 4  # one per torch_threads CPUs
    assert _actor_pool(None, 100, 0.0, {"CPU": 2.0}, torch_threads=1)[0] == 2
    assert _actor_pool(None, 2, 0.0, {"CPU": 16.0})[0] == 2  # still no more actors than batches
    # An explicit count is kept though only 0 GPUs are up: the autoscaler adds nodes for the actors.
    assert _actor_pool(8, 100, 1.0, {"CPU": 4.0, "GPU": 0.0}) == (8, 3 / 8)
