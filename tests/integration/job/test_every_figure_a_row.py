"""Every run finishes and every figure has exactly one row that says what made it (real local Ray
and moto_server): an exception in any stage for one figure, a batch lost after its retries (exit
code 3, then a rerun), key-only manifests, a listing → inventory switch, a new model version or
other settings, and a reindex that crashed before its merge."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import inject
from helpers import tiny_model_file
from xai_pipeline.store import records
from xai_pipeline.cli import EXIT_MISSING_ROWS, exit_code
from xai_pipeline.config import IndexConfig, ReindexConfig
from xai_pipeline.job.pipeline import run_index, run_reindex
from xai_pipeline.store.source import make_filesystem, parse_location

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _collection(s3, bucket: str, n: int) -> list[str]:
    s3.create_bucket(Bucket=bucket)
    keys = [f"in/PMC{i % 3}/fig{i:02d}.png" for i in range(n)]  # fig01.png names one figure at n <= 100
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=_png(i))
    return keys


def _rows(bucket: str, endpoint: str, columns: list[str]) -> list[dict[str, object]]:
    from deltalake import DeltaTable

    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    return DeltaTable(f"s3://{bucket}/table", storage_options=options).to_pyarrow_table(columns=columns).to_pylist()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors"))


def test_an_exception_in_each_stage_is_one_figures_row(s3, s3_endpoint: str, ray_session: None, fault_rules: Path, model: str) -> None:
    keys = _collection(s3, "stages", 12)
    inject(fault_rules, {"fetch": ["fig01.png"], "decode": ["fig04.png"], "classify": ["fig07.png"], "encode": ["fig10.png"]})
    try:
        summary = run_index(IndexConfig(input="s3://stages/in", output="s3://stages/table", model=model, batch_size=6))
    finally:
        inject(fault_rules, {})
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in _rows("stages", s3_endpoint, ["source_uri", "status", "error"])}
    assert len(rows) == len(keys) and summary.missing == 0 and exit_code(summary.missing) == 0
    expected = {"fig01.png": "read_error", "fig04.png": "decode_error", "fig07.png": "model_error", "fig10.png": "encode_error"}
    for name, status in expected.items():
        assert rows[name]["status"] == status and "injected" in rows[name]["error"], rows[name]
    assert Counter(r["status"] for r in rows.values())["ok"] == len(keys) - 4
    # The four error kinds are retried by the next run; with the faults gone they come out ok.
    again = run_index(IndexConfig(input="s3://stages/in", output="s3://stages/table", model=model, batch_size=6))
    assert (again.processed, again.changed, again.ok) == (4, 4, 4)
    rows = _rows("stages", s3_endpoint, ["figure_id", "status"])
    assert len(rows) == len(keys) and {r["status"] for r in rows} == {"ok"}


def test_a_batch_lost_after_its_retries_exits_3_and_the_rerun_completes(s3, s3_endpoint: str, ray_session: None,
                                                                       fault_rules: Path, model: str) -> None:
    keys = _collection(s3, "lost", 80)  # two blocks of figures (64 rows each at most)
    inject(fault_rules, {"task:encode": ["fig01.png"]})
    try:
        summary = run_index(IndexConfig(input="s3://lost/in", output="s3://lost/table", model=model, batch_size=16, commit_every=10))
    finally:
        inject(fault_rules, {})
    assert 0 < summary.missing < len(keys) and summary.processed + summary.missing == len(keys)
    assert exit_code(summary.missing) == EXIT_MISSING_ROWS == 3 and summary.state == "incomplete"
    assert "fig01.png" not in {r["source_uri"].rsplit("/", 1)[1] for r in _rows("lost", s3_endpoint, ["source_uri"])}
    again = run_index(IndexConfig(input="s3://lost/in", output="s3://lost/table", model=model, batch_size=16))
    assert again.missing == 0 and again.processed == summary.missing and again.state == "finished"
    ids = Counter(r["figure_id"] for r in _rows("lost", s3_endpoint, ["figure_id"]))
    assert len(ids) == len(keys) and set(ids.values()) == {1}


def test_key_only_manifest_and_listing_to_inventory_switch(s3, s3_endpoint: str, ray_session: None, model: str) -> None:
    keys = _collection(s3, "manifests", 6)
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": keys + [keys[0]]}), buf)  # a key named twice
    s3.put_object(Bucket="manifests", Key="inventory/keys.parquet", Body=buf.getvalue())
    common = {"input": "s3://manifests/in", "output": "s3://manifests/table", "model": model, "batch_size": 4}
    first = run_reindex(ReindexConfig(**common, manifest="s3://manifests/inventory/keys.parquet"))
    assert (first.processed, first.new, first.missing) == (len(keys), len(keys), 0)
    rows = _rows("manifests", s3_endpoint, ["source_uri", "size", "etag"])
    heads = {f"s3://manifests/{k}": s3.head_object(Bucket="manifests", Key=k) for k in keys}
    for row in rows:  # sizes and ETags of the bytes read, ETags without quotes
        assert row["size"] == heads[row["source_uri"]]["ContentLength"] and row["etag"] == heads[row["source_uri"]]["ETag"].strip('"')
    assert run_reindex(ReindexConfig(**common, manifest="s3://manifests/inventory/keys.parquet")).processed == 0
    assert run_reindex(ReindexConfig(**common)).processed == 0  # listing: quoted ETags, same rows

    # An inventory with versions: old versions and delete markers of live keys do not count.
    lines = []
    for k in keys:
        etag = heads[f"s3://manifests/{k}"]["ETag"].strip('"')
        lines.append(["manifests", k, "v2", "true", "false", str(heads[f"s3://manifests/{k}"]["ContentLength"]), etag])
        lines.append(["manifests", k, "v1", "false", "false", "5", "oldetag"])
    lines.append(["manifests", "in/PMC0/deleted.png", "v3", "true", "true", "", ""])
    text = io.StringIO()
    csv.writer(text).writerows(lines)
    s3.put_object(Bucket="manifests", Key="inventory/data/part-0.csv.gz", Body=gzip.compress(text.getvalue().encode()))
    manifest = {"sourceBucket": "manifests", "destinationBucket": "arn:aws:s3:::manifests", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag",
                "files": [{"key": "inventory/data/part-0.csv.gz"}]}
    s3.put_object(Bucket="manifests", Key="inventory/manifest.json", Body=json.dumps(manifest).encode())
    switched = run_reindex(ReindexConfig(**common, manifest="s3://manifests/inventory/manifest.json"))
    assert (switched.inputs, switched.processed, switched.deleted, switched.skipped) == (len(keys), 0, 0, len(keys))


def test_new_model_version_and_settings_leave_one_row_per_figure(s3, s3_endpoint: str, ray_session: None, model: str,
                                                                 tmp_path: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    keys = _collection(s3, "versions", 6)
    common = {"input": "s3://versions/in", "output": "s3://versions/table", "batch_size": 4}
    run_index(IndexConfig(**common, model=model))
    v2 = str(tiny_model_file(tmp_path / "v2.safetensors", version="test-2"))
    second = run_index(IndexConfig(**common, model=v2))
    assert (second.new, second.changed, second.processed) == (0, len(keys), len(keys))
    rows = _rows("versions", s3_endpoint, ["figure_id", "model_version", "roi_threshold", "crm_score"])
    assert len(rows) == len(keys) and {r["model_version"] for r in rows} == {"test-2"}
    assert {(r["crm_score"], round(r["roi_threshold"], 3)) for r in rows} == {("logit", 0.2)}

    # Other settings make the rows stale; the rerun replaces them (a same-settings rerun skips).
    third = run_index(IndexConfig(**common, model=v2, roi_threshold=0.5))
    assert third.processed == len(keys)
    assert run_index(IndexConfig(**common, model=v2, roi_threshold=0.5)).processed == 0

    # A table that an older version of the code left with two rows for a figure is mended.
    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    table = DeltaTable("s3://versions/table", storage_options=options)
    extra = table.to_pyarrow_table().slice(0, 1)
    write_deltalake(table, extra, mode="append")
    assert len(_rows("versions", s3_endpoint, ["figure_id"])) == len(keys) + 1
    mended = run_reindex(ReindexConfig(**common, model=v2, roi_threshold=0.5))
    assert (mended.changed, mended.processed) == (1, 1)
    ids = Counter(r["figure_id"] for r in _rows("versions", s3_endpoint, ["figure_id"]))
    assert len(ids) == len(keys) and set(ids.values()) == {1}


def test_a_reindex_that_crashed_before_its_merge_resumes_from_its_staged_rows(s3, s3_endpoint: str, ray_session: None, model: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _collection(s3, "resume", 8)
    common = {"input": "s3://resume/in", "output": "s3://resume/table", "model": model, "batch_size": 4}
    run_index(IndexConfig(**common))
    from xai_pipeline.job import pipeline, table_tasks

    real_remote = pipeline._remote

    def crash_before_merge(fn: object, **options: object) -> object:
        if fn is table_tasks.merge_task:
            raise SystemExit("simulated crash before the merge")
        return real_remote(fn, **options)

    monkeypatch.setattr(pipeline, "_remote", crash_before_merge)
    with pytest.raises(SystemExit):  # other settings: every figure is restaged for the merge
        run_reindex(ReindexConfig(**common, roi_threshold=0.5, run_id="crashed-run"))
    monkeypatch.setattr(pipeline, "_remote", real_remote)
    target = parse_location("s3://resume/table", "--output")
    fs = make_filesystem(target)
    assert records.staged_runs(target, fs) == ["crashed-run"]
    assert sorted(r.get("state") for r in records.list_runs(target, fs)) == ["finished", "running"]

    s3.put_object(Bucket="resume", Key=keys[0], Body=_png(999))  # changed since it was staged: not trusted
    resumed = run_reindex(ReindexConfig(**common, roi_threshold=0.5))
    assert (resumed.changed, resumed.reused, resumed.processed, resumed.missing) == (len(keys), len(keys) - 1, len(keys), 0)
    assert records.staged_runs(target, fs) == [] and records.plan_runs(target, fs) == []  # orphans cleaned
    states = {r["run_id"]: r for r in records.list_runs(target, fs)}
    assert states["crashed-run"]["state"] == "interrupted" and states["crashed-run"]["cleaned_up_by"] == resumed.run_id
    assert states[resumed.run_id]["state"] == "finished"
    rows = _rows("resume", s3_endpoint, ["source_uri", "etag", "run_id", "roi_threshold"])
    assert len(rows) == len(keys) and {r["run_id"] for r in rows} == {resumed.run_id}
    assert {round(r["roi_threshold"], 3) for r in rows} == {0.5}
    changed = next(r for r in rows if r["source_uri"].endswith(keys[0]))
    assert changed["etag"] == s3.head_object(Bucket="resume", Key=keys[0])["ETag"].strip('"')


def test_a_crash_between_commits_leaves_each_committed_row_once_after_a_rerun(s3, s3_endpoint: str, ray_session: None, model: str,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from xai_pipeline.job import writer

    keys = _collection(s3, "between", 70)
    common = {"input": "s3://between/in", "output": "s3://between/table", "model": model, "batch_size": 16, "commit_every": 10}
    real_commit = writer.Committer.commit

    def commit_then_crash(self: writer.Committer) -> None:
        if self.commits >= 1 and self.pending_rows:
            raise SystemExit("simulated crash after the first commit")
        real_commit(self)

    from xai_pipeline.job import pipeline

    monkeypatch.setattr(pipeline, "FILE_ROWS", 16)  # several files, so several commits
    monkeypatch.setattr(writer.Committer, "commit", commit_then_crash)
    with pytest.raises(SystemExit):
        run_index(IndexConfig(**common, run_id="killed-run"))
    monkeypatch.setattr(writer.Committer, "commit", real_commit)
    first = len(_rows("between", s3_endpoint, ["figure_id"]))
    assert 0 < first < len(keys)
    again = run_index(IndexConfig(**common))
    assert (again.skipped, again.processed, again.missing) == (first, len(keys) - first, 0)
    assert 1 <= again.classifier_actors <= 2 < again.commits  # one actor pool for all the run's commits
    ids = Counter(r["figure_id"] for r in _rows("between", s3_endpoint, ["figure_id"]))
    assert len(ids) == len(keys) and set(ids.values()) == {1}
    target = parse_location("s3://between/table", "--output")
    assert {r["run_id"]: r["state"] for r in records.list_runs(target, make_filesystem(target))}["killed-run"] == "interrupted"
