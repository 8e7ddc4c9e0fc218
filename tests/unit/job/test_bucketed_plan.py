"""The bucketed plan (what Ray tasks run, one bucket per task) equals the in-memory plan over the
whole collection (the oracle), on random listings and tables with duplicate keys, null sizes and
ETags, stale model versions and settings, duplicate rows, retried statuses and tombstones."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from xai_pipeline.job import buckets, plan
from xai_pipeline import schema
from xai_pipeline.job.listing import LISTING_SCHEMA, with_ids
from xai_pipeline.store.source import Location

SETTINGS = plan.RowSettings("m", "2", "logit", 0.2)


def _random_collection(seed: int, n: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    keys = [f"b/in/PMC{rng.integers(0, n // 3 + 1)}/f{i}.png" for i in range(n)]
    listed = [k for k in keys if rng.random() < 0.85]
    listed += [listed[int(i)] for i in rng.integers(0, len(listed), n // 20)]  # keys named twice (a manifest)
    sizes = [None if rng.random() < 0.1 else int(rng.integers(1, 5)) for _ in listed]
    etags = [None if rng.random() < 0.1 else f'"e{rng.integers(0, 3)}"' for _ in listed]
    listing = with_ids(pa.table([listed, [f"s3://{p}" for p in listed], sizes, [schema.normalize_etag(e) for e in etags]],
                                schema=LISTING_SCHEMA))
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    state_keys = [k for k in keys if rng.random() < 0.7] + [f"b/other/{i}.png" for i in range(5)]
    state_keys += [state_keys[int(i)] for i in rng.integers(0, len(state_keys), n // 25)]  # figures with two rows
    m = len(state_keys)
    uris = [f"s3://{k}" for k in state_keys]
    state = pa.table({
        schema.FIGURE_ID: [schema.figure_id(u) for u in uris],
        schema.SOURCE_URI: uris,
        schema.ETAG: [None if rng.random() < 0.1 else f'"e{rng.integers(0, 3)}"' for _ in range(m)],
        schema.SIZE: [None if rng.random() < 0.1 else int(rng.integers(1, 5)) for _ in range(m)],
        schema.MODEL_NAME: ["m"] * m,
        schema.MODEL_VERSION: [str(rng.choice(["1", "2", "2", "2"])) for _ in range(m)],
        schema.CRM_SCORE: [rng.choice([None, "logit", "logit", "softmax"]) for _ in range(m)],
        schema.ROI_THRESHOLD: [rng.choice([None, 0.2, 0.2, 0.3]) for _ in range(m)],
        schema.STATUS: [str(rng.choice(["ok", "ok", "ok", "read_error", "truncated"])) for _ in range(m)],
        schema.DELETED_AT: [when if rng.random() < 0.1 else None for _ in range(m)],
    }, schema=pa.schema([schema.TABLE_SCHEMA.field(c) for c in plan.STATE_COLUMNS]))
    return listing, state


def _bucketed(tmp_path: Path, listing: pa.Table, state: pa.Table, n: int, reindex: bool) -> dict[str, object]:
    fs = pafs.LocalFileSystem()
    scratch = Location("file", str(tmp_path / f"scratch-{n}-{reindex}"))
    for start in range(0, listing.num_rows, 97):  # pages, as listing tasks write them
        buckets.write_buckets(listing.slice(start, 97), uri_column="uri", buckets=n, scratch=scratch, side=buckets.LISTING, fs=fs)
    buckets.write_buckets(state, uri_column=schema.SOURCE_URI, buckets=n, scratch=scratch, side=buckets.STATE, fs=fs)
    counts = [buckets.plan_bucket(i, scratch=scratch, fs=fs, settings=SETTINGS, compare_content=reindex,
                                  input_uri="s3://b/in" if reindex else None, overwrite=False).to_pylist()[0] for i in range(n)]
    todo = pa.concat_tables([pq.read_table(p) for p in buckets.files(scratch, fs, buckets.TODO)])
    deleted = [i for ids in buckets.deleted_ids(scratch, fs) for i in ids.to_pylist()]
    return {"counts": {k: sum(c[k] for c in counts) for k in buckets.COUNT_COLUMNS}, "todo": todo, "deleted": deleted}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reindex", [True, False])
def test_bucketed_plan_equals_the_in_memory_plan(tmp_path: Path, seed: int, reindex: bool) -> None:
    listing, state = _random_collection(seed, 600)
    deduped = plan.dedupe_listing(listing)
    oracle = plan.plan_run(deduped, state, SETTINGS, compare_content=reindex, input_uri="s3://b/in" if reindex else None)
    for n in (1, 8):
        got = _bucketed(tmp_path, listing, state, n, reindex)
        routes = dict(zip(got["todo"].column("path").to_pylist(), got["todo"].column(schema.ROUTE).to_pylist()))
        assert {p: "append" for p in oracle.fresh.column("path").to_pylist()} | {p: "stage" for p in oracle.replace.column("path").to_pylist()} == routes
        assert sorted(got["deleted"]) == sorted(oracle.deleted_ids.to_pylist())
        assert got["counts"] == {"listed": deduped.num_rows, "new": oracle.new, "changed": oracle.changed, "skipped": oracle.skipped,
                                 "deleted": len(oracle.deleted_ids), "reused": 0}
    assert oracle.new and oracle.changed and oracle.skipped and (len(oracle.deleted_ids) or not reindex)


def test_buckets_keep_an_articles_figures_together() -> None:
    uris = pa.array([f"s3://b/in/PMC{a}/fig{i}.png" for a in range(50) for i in range(4)])
    index = buckets.bucket_of(uris, 16)
    assert all(len(set(index[a * 4:(a + 1) * 4])) == 1 for a in range(50))
    assert len(set(index)) > 8
    assert buckets.bucket_count(0) == 8 and buckets.bucket_count(25_000_000) == 128
