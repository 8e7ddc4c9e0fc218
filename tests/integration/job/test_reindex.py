"""Incremental reindexing against S3 (moto): only what changed is processed, deletions are
marked, one commit per run, earlier versions stay readable; manifests instead of listing."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_model_file
from xai_pipeline.config import IndexConfig, ReindexConfig
from xai_pipeline.job.listing import list_objects
from xai_pipeline.job.pipeline import run_index, run_reindex
from xai_pipeline.store.source import S3Settings, parse_location

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N = 100


def _png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _options(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}


def test_reindex_appends_new_figures_and_merges_changes(s3, s3_endpoint: str, ray_session: None, tmp_path: Path) -> None:
    from deltalake import DeltaTable

    s3.create_bucket(Bucket="lit")
    for i in range(N):
        s3.put_object(Bucket="lit", Key=f"pmc/PMC{i % 4}/fig{i:03d}.png", Body=_png(i))
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    common = {"input": "s3://lit/pmc", "output": "s3://lit/table", "model": model, "batch_size": 16}
    first = run_index(IndexConfig(**common))
    assert (first.processed, first.table_version) == (N, 0)

    s3.put_object(Bucket="lit", Key="pmc/PMC1/fig001.png", Body=_png(1000))  # changed content
    s3.delete_object(Bucket="lit", Key="pmc/PMC2/fig002.png")  # deleted
    s3.put_object(Bucket="lit", Key="pmc/PMC9/new.png", Body=_png(2000))  # new
    s3.put_object(Bucket="lit", Key="pmc-old/other.png", Body=_png(3000))  # outside the collection

    summary = run_reindex(ReindexConfig(**common))
    assert (summary.processed, summary.new, summary.changed, summary.deleted, summary.skipped) == (2, 1, 1, 1, N - 2)
    assert summary.table_version == 2 and summary.commits == 2  # the new figure appended, the rest in one merge

    table = DeltaTable("s3://lit/table", storage_options=_options(s3_endpoint))
    history = table.history()
    assert [h["operation"] for h in history][:3] == ["MERGE", "WRITE", "CREATE TABLE"]
    rows = {r["source_uri"]: r for r in table.to_pyarrow_table(columns=["source_uri", "deleted_at", "run_id", "etag"]).to_pylist()}
    assert len(rows) == N + 1
    assert rows["s3://lit/pmc/PMC2/fig002.png"]["deleted_at"] is not None
    assert rows["s3://lit/pmc/PMC1/fig001.png"]["run_id"] == summary.run_id
    assert sum(r["deleted_at"] is not None for r in rows.values()) == 1
    # Time travel: the previous version is still readable and unchanged.
    before = DeltaTable("s3://lit/table", version=0, storage_options=_options(s3_endpoint)).to_pyarrow_table(columns=["source_uri", "deleted_at"])
    assert before.num_rows == N and before.column("deleted_at").null_count == N

    again = run_reindex(ReindexConfig(**common))
    assert (again.processed, again.deleted, again.commits, again.table_version) == (0, 0, 0, 2)

    v2 = tiny_model_file(tmp_path / "tiny-v2.safetensors", version="test-2")  # a new model version reprocesses everything
    full = run_reindex(ReindexConfig(**{**common, "model": str(v2)}))
    assert full.processed == N and full.skipped == 0


def test_manifests_list_the_same_objects(s3, s3_endpoint: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    s3.create_bucket(Bucket="inv")
    keys = [f"figs/a/{i}.png" for i in range(5)] + ["figs/b/x y+z.png", "elsewhere/no.png"]
    for key in keys:
        s3.put_object(Bucket="inv", Key=key, Body=b"data" + key.encode())
    settings = S3Settings(endpoint_url=s3_endpoint)
    location = parse_location("s3://inv/figs", "--input")
    listed = list_objects(location, settings, page_size=2)
    assert listed.num_rows == 6

    heads = {k: s3.head_object(Bucket="inv", Key=k) for k in keys}
    from urllib.parse import quote_plus
    rows = io.StringIO()
    csv.writer(rows).writerows([["inv", quote_plus(k), str(h["ContentLength"]), h["ETag"].strip('"')] for k, h in heads.items()])
    s3.put_object(Bucket="inv", Key="inventory/data/part-0.csv.gz", Body=gzip.compress(rows.getvalue().encode()))
    manifest = {"sourceBucket": "inv", "destinationBucket": "arn:aws:s3:::inv", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, ETag", "files": [{"key": "inventory/data/part-0.csv.gz"}]}
    s3.put_object(Bucket="inv", Key="inventory/manifest.json", Body=json.dumps(manifest).encode())
    from xai_pipeline.job.listing import read_manifest
    from_inventory = read_manifest("s3://inv/inventory/manifest.json", location, settings)
    assert from_inventory.column("uri").to_pylist() == listed.column("uri").to_pylist()
    assert from_inventory.column("size").to_pylist() == listed.column("size").to_pylist()

    buf = io.BytesIO()
    pq.write_table(pa.table({"key": keys}), buf)
    s3.put_object(Bucket="inv", Key="inventory/keys.parquet", Body=buf.getvalue())
    from_parquet = read_manifest("s3://inv/inventory/keys.parquet", location, settings)
    assert from_parquet.column("uri").to_pylist() == listed.column("uri").to_pylist()
