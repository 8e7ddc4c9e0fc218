"""Runs side by side and across nodes (real local Ray and moto_server): the table's lease on S3,
two index runs on one table (one refuses, no duplicate figure ids), a nightly run with only new
figures makes an append commit, and an index and a reindex on a two-node Ray cluster with S3 in
and out and no CPU on the driver's node (so no stage can rely on the driver's local files)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.services import free_port
from helpers import tiny_model_file
from xai_pipeline.config import IndexConfig, ReindexConfig
from xai_pipeline.store.lease import LeaseHeld, TableLease
from xai_pipeline.job.pipeline import run_index, run_reindex
from xai_pipeline.store.source import S3Settings, parse_location

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _upload(s3, bucket: str, n: int, start: int = 0) -> list[str]:
    if start == 0:
        s3.create_bucket(Bucket=bucket)
    keys = [f"in/PMC{i // 4}/fig{i:03d}.png" for i in range(start, start + n)]
    for i, key in enumerate(keys, start):
        s3.put_object(Bucket=bucket, Key=key, Body=_png(i))
    return keys


def _table(bucket: str, endpoint: str, version: int | None = None):  # type: ignore[no-untyped-def]
    from deltalake import DeltaTable

    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    return DeltaTable(f"s3://{bucket}/table", storage_options=options, version=version)


def test_the_lease_on_s3_is_exclusive(s3, s3_endpoint: str) -> None:
    s3.create_bucket(Bucket="lease")
    location = parse_location("s3://lease/table", "--output")
    settings = S3Settings(endpoint_url=s3_endpoint)
    with TableLease(location, settings, "one"):
        with pytest.raises(LeaseHeld, match="run one"):
            TableLease(location, settings, "two").acquire()
    with TableLease(location, settings, "two"):
        pass
    assert "Contents" not in s3.list_objects_v2(Bucket="lease")  # released


def test_two_index_runs_on_one_table_one_refuses(s3, s3_endpoint: str, ray_session: None, tmp_path: Path) -> None:
    keys = _upload(s3, "twice", 40)
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    cfg = IndexConfig(input="s3://twice/in", output="s3://twice/table", model=model, batch_size=8)
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(first=run_index(cfg)))
    first.start()
    deadline = time.time() + 120
    while time.time() < deadline and "Contents" not in s3.list_objects_v2(Bucket="twice", Prefix="table/_xai_pipeline/lease.json"):
        time.sleep(0.05)
    with pytest.raises(LeaseHeld):
        run_index(cfg)
    first.join()
    second = run_index(IndexConfig(**{**cfg.__dict__, "lease_wait": 60.0}))
    assert results["first"].processed == len(keys) and second.processed == 0 and second.skipped == len(keys)  # type: ignore[attr-defined]
    ids = Counter(r["figure_id"] for r in _table("twice", s3_endpoint).to_pyarrow_table(columns=["figure_id"]).to_pylist())
    assert len(ids) == len(keys) and set(ids.values()) == {1}


def test_a_nightly_run_with_only_new_figures_appends(s3, s3_endpoint: str, ray_session: None, tmp_path: Path) -> None:
    keys = _upload(s3, "nightly", 12)
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    common = {"input": "s3://nightly/in", "output": "s3://nightly/table", "model": model, "batch_size": 8}
    run_index(IndexConfig(**common))
    before = set(_table("nightly", s3_endpoint).file_uris())
    new = _upload(s3, "nightly", 3, start=100)
    summary = run_reindex(ReindexConfig(**common))
    assert (summary.new, summary.changed, summary.deleted, summary.processed) == (3, 0, 0, 3)
    table = _table("nightly", s3_endpoint)
    assert [h["operation"] for h in table.history()][0] == "WRITE"  # an append, no MERGE
    assert before <= set(table.file_uris())  # no file removed or rewritten
    assert table.to_pyarrow_table(columns=["figure_id"]).num_rows == len(keys) + len(new)


def _ray_node(args: list[str], temp_dir: str, env: dict[str, str]) -> None:
    ray = str(Path(sys.executable).parent / "ray")
    ports = [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")]
    out = subprocess.run([ray, "start", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--disable-usage-stats", *ports, *args],
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]


def test_index_and_reindex_on_a_two_node_cluster(s3, s3_endpoint: str, tmp_path: Path) -> None:
    keys = _upload(s3, "nodes", 16)
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    head_tmp, worker_tmp = (tempfile.mkdtemp(prefix=p, dir="/tmp") for p in ("xh", "xw"))
    port = free_port()
    # One explicit auth setting for both nodes and the driver. Left to Ray 2.60's defaults, it
    # depends on the test order: an earlier ray.init() in this process sets RAY_AUTH_MODE=token and
    # writes ~/.ray/auth_token, and `ray start` takes token mode from that file only when the
    # variable is unset, so one node could run with a token and the other without.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    try:
        # The head (where the driver runs) has no CPU: every task and actor runs on the other node.
        _ray_node(["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false",
                   f"--ray-client-server-port={free_port()}"], head_tmp, env)
        _ray_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "2"], worker_tmp, env)
        common = ["--input", "s3://nodes/in", "--output", "s3://nodes/table", "--model", model, "--batch-size", "8",
                  "--ray-address", f"127.0.0.1:{port}"]

        def run(command: str) -> dict[str, object]:
            out = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", command, *common], env=env, capture_output=True, text=True,
                                 timeout=600, cwd=tmp_path)
            assert out.returncode == 0, out.stderr[-3000:]
            return json.loads(out.stdout.strip().splitlines()[-1])

        first = run("index")
        assert (first["processed"], first["missing"]) == (len(keys), 0)
        s3.put_object(Bucket="nodes", Key=keys[0], Body=_png(500))
        s3.delete_object(Bucket="nodes", Key=keys[1])
        _upload(s3, "nodes", 2, start=200)
        again = run("reindex")
        assert (again["new"], again["changed"], again["deleted"], again["processed"], again["missing"]) == (2, 1, 1, 3, 0)
        rows = _table("nodes", s3_endpoint).to_pyarrow_table(columns=["figure_id", "deleted_at"]).to_pylist()
        assert len(rows) == len(keys) + 2 and sum(r["deleted_at"] is not None for r in rows) == 1
    finally:
        for temp in (head_tmp, worker_tmp):
            subprocess.run(["pkill", "-9", "-f", temp], check=False)
