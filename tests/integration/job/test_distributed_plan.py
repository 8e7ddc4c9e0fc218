"""The plan made in Ray tasks (listing and table state bucketed, one task a bucket) equals the
in-memory plan (the oracle) on an S3 collection read through a Parquet manifest with duplicate
keys, null sizes and ETags, against a table with stale model versions and settings, duplicate
rows, retried statuses, tombstones and rows of another collection (real local Ray, moto_server)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import tiny_model_file
from xai_pipeline.job import buckets, plan
from xai_pipeline import schema
from xai_pipeline.store import sink
from xai_pipeline.config import ReindexConfig
from xai_pipeline.job.lifecycle import prepare
from xai_pipeline.job.listing import read_manifest
from xai_pipeline.job.pipeline import _plan
from xai_pipeline.store.source import make_filesystem

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _state_rows(keys: list[str], rng: np.random.Generator, spec_name: str, spec_version: str) -> pa.Table:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for key in keys:
        uri = f"s3://dplan/{key}"
        rows.append({
            schema.FIGURE_ID: schema.figure_id(uri), schema.SOURCE_URI: uri, schema.ETAG: str(rng.choice(["e0", "e1", None])),
            schema.SIZE: int(rng.integers(1, 4)), schema.MODEL_NAME: spec_name,
            schema.MODEL_VERSION: str(rng.choice([spec_version, spec_version, "old"])),
            schema.CRM_SCORE: rng.choice(["logit", "logit", "softmax", None]), schema.ROI_THRESHOLD: rng.choice([0.2, 0.2, 0.4]),
            schema.STATUS: str(rng.choice(["ok", "ok", "ok", "model_error", "empty"])), schema.RUN_ID: "old",
            schema.PROCESSED_AT: when, schema.DELETED_AT: when if rng.random() < 0.1 else None, schema.SCHEMA_VERSION_COL: 4,
        })
    return sink.conform(pa.Table.from_pylist(rows)).cast(schema.TABLE_SCHEMA)


@pytest.mark.parametrize("reindex", [True, False])
def test_the_plan_made_in_ray_tasks_equals_the_in_memory_plan(reindex: bool, s3, s3_endpoint: str, ray_session: None, tmp_path: Path) -> None:
    from deltalake import write_deltalake

    bucket = f"dplan-{int(reindex)}"
    s3.create_bucket(Bucket=bucket)
    rng = np.random.default_rng(int(reindex))
    keys = [f"in/PMC{i // 4}/f{i}.png" for i in range(80)]
    listed = keys[:64] + keys[:8]  # keys named twice
    manifest = pa.table({"key": listed, "size": [None if rng.random() < 0.2 else int(rng.integers(1, 4)) for _ in listed],
                         "etag": [None if rng.random() < 0.2 else str(rng.choice(["e0", "e1"])) for _ in listed]})
    buf = pa.BufferOutputStream()
    pq.write_table(manifest, buf)
    s3.put_object(Bucket=bucket, Key="inventory/keys.parquet", Body=buf.getvalue().to_pybytes())
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    cfg = ReindexConfig(input=f"s3://{bucket}/in", output=f"s3://{bucket}/table", model=model, manifest=f"s3://{bucket}/inventory/keys.parquet")
    job = prepare(cfg)
    state_keys = keys[16:] + keys[20:26] + ["other/x.png"]  # rows for gone figures, figures with two rows, another collection
    state = _state_rows(state_keys, rng, job.spec.name, job.spec.version)
    state = state.set_column(1, schema.SOURCE_URI, pa.array([u.replace("s3://dplan/", f"s3://{bucket}/") for u in state.column(1).to_pylist()]))
    state = state.set_column(0, schema.FIGURE_ID, pa.array([schema.figure_id(u) for u in state.column(1).to_pylist()]))
    for start in range(0, state.num_rows, 25):  # several data files
        write_deltalake(f"s3://{bucket}/table", state.slice(start, 25), mode="append", storage_options=job.options)

    planned = _plan(job, "plan-test", cfg.manifest, reindex, False, [])
    fs = make_filesystem(planned.scratch, job.settings)
    todo = pa.concat_tables([pq.read_table(p, filesystem=fs) for p in buckets.files(planned.scratch, fs, buckets.TODO)])
    deleted = sorted(i for ids in buckets.deleted_ids(planned.scratch, fs) for i in ids.to_pylist())

    listing = read_manifest(cfg.manifest, job.source, job.settings)
    oracle = plan.plan_run(listing, sink.table_state(job.target, job.options, plan.STATE_COLUMNS), job.row_settings,
                           compare_content=reindex, input_uri=job.source.uri if reindex else None)
    expected = {p: "append" for p in oracle.fresh.column("path").to_pylist()} | {p: "stage" for p in oracle.replace.column("path").to_pylist()}
    assert dict(zip(todo.column("path").to_pylist(), todo.column(schema.ROUTE).to_pylist())) == expected
    assert deleted == sorted(oracle.deleted_ids.to_pylist())
    assert planned.counts == {"listed": listing.num_rows, "new": oracle.new, "changed": oracle.changed, "skipped": oracle.skipped,
                              "deleted": len(oracle.deleted_ids), "reused": 0}
    assert oracle.new and oracle.changed and oracle.skipped and (oracle.deleted_ids.to_pylist() or not reindex)
