"""Collection scale: a nightly reindex of a table of 100k and of 1M figures.

    python -m bench.collection_scale [--smoke] [--sizes 100000,1000000]

For each size N a synthetic table in the real schema (N rows, about 5 figures per article, made
by the bundled model's name and version with the default settings, so all of them are current) is
written locally and laid out by ``xai-pipeline table optimize`` (sorted by source_uri, 128 KiB
files). The night's S3 Inventory-like Parquet manifest (key, size, ETag) on a local moto_server
lists the collection with 0.02% new figures and 0.04% changed or deleted, both as whole
articles; the new and changed objects are real figures uploaded to moto (the rest exist only in
the manifest: unchanged figures are never read). ``xai-pipeline reindex --manifest`` then runs as
its own process, its driver's resident memory sampled every 0.2 s.

Reported per size: the driver's peak RSS (goal: 1M / 100k ≤ 1.25), plan seconds, the reindex's
seconds, and the bytes the night rewrote as a share of the table's bytes before it (goal: ≤ 10% at
1M). Once: an ``index`` run of 300 real figures with ``--commit-every 50`` (6 commits) counts the
classifier actors it started (goal: no restarts; the pool is started once, not per commit).
Results go to ``bench/results/collection_scale.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import DEFAULT_DATASET, REPO, print_table, write_results
from bench.scale import _rss, tiny_model
from bench.services import MOTO_ENV, moto_server, ray_tmpdir
from xai_pipeline import schema
from xai_pipeline.model.net import DEFAULT_MODEL_PATH, read_spec

PER_ARTICLE = 5
NEW, CHANGED_OR_DELETED = 0.0002, 0.0004


def synthetic_rows(start: int, stop: int, spec_name: str, spec_version: str, bucket: str) -> pa.Table:
    """Rows ``start:stop`` of the synthetic table (deterministic: row i is the same at any size)."""
    rng = np.random.default_rng(start)
    n = stop - start
    index = np.arange(start, stop)
    uris = [f"s3://{bucket}/in/PMC{i // PER_ARTICLE:07d}/fig{i % PER_ARTICLE}.jpg" for i in index]
    probs = rng.dirichlet(np.ones(6), n).astype(np.float32)
    when = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    columns = {
        schema.FIGURE_ID: [schema.figure_id(u) for u in uris],
        schema.SOURCE_URI: uris,
        schema.ETAG: [hashlib.md5(str(i).encode()).hexdigest() for i in index],
        schema.SIZE: (20_000 + index % 5000).astype(np.int64),
        schema.WIDTH: np.full(n, 640, np.int32), schema.HEIGHT: np.full(n, 480, np.int32),
        schema.MODALITY: np.array(["chest_xray", "ct", "mri", "ultrasound", "fundus", "histology"])[probs.argmax(1)],
        schema.CONFIDENCE: probs.max(1),
        schema.PROBABILITIES: list(probs),
        schema.CRM: [rng.integers(0, 255, 49, dtype=np.uint8).tobytes() for _ in range(n)],
        schema.CRM_SHAPE: [[7, 7]] * n,
        schema.CRM_SCALE: rng.random(n).astype(np.float32),
        schema.ROI_BOXES: [[{"x0": 0, "y0": 0, "x1": 320, "y1": 240, "score": 1.0}]] * n,
        schema.MODEL_NAME: [spec_name] * n, schema.MODEL_VERSION: [spec_version] * n,
        schema.CRM_SCORE: ["logit"] * n, schema.ROI_THRESHOLD: np.full(n, 0.2, np.float32),
        schema.DELETED_AT: [None] * n, schema.RUN_ID: ["synthetic"] * n, schema.PROCESSED_AT: [when] * n,
        schema.STATUS: ["ok"] * n, schema.ERROR: [None] * n, schema.SCHEMA_VERSION_COL: np.full(n, schema.SCHEMA_VERSION, np.int32),
        schema.FIGURE_TYPE: [schema.MEDICAL_IMAGE] * n, schema.PANEL_COUNT: np.ones(n, np.int32),
    }
    columns[schema.MODALITIES] = [[m] for m in columns[schema.MODALITY]]
    columns[schema.PANELS] = [None] * n  # single-panel figures
    return pa.table(columns, schema=schema.TABLE_SCHEMA)


def cli(args: list[str], env: dict[str, str] | None = None, sample: bool = False) -> tuple[dict[str, Any], int, float, str]:
    """Run an ``xai-pipeline`` command; returns its summary, the driver's peak RSS, seconds, stderr."""
    with ray_tmpdir() as ray_tmp, tempfile.NamedTemporaryFile(suffix=".json") as summary, tempfile.TemporaryFile("w+") as err:
        cmd = [sys.executable, "-m", "xai_pipeline.cli", *args]
        job = next(a for a in args if not a.startswith("-")) in ("index", "reindex")
        if job:
            cmd += ["--summary-json", summary.name]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {}), "RAY_TMPDIR": ray_tmp}, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while proc.poll() is None:
            if sample:
                peak = max(peak, _rss(proc.pid))
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        err.seek(0)
        stderr = err.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed ({proc.returncode}):\n{stderr[-3000:]}")
        text = Path(summary.name).read_text() if job else "{}"
        return json.loads(text or "{}"), peak, seconds, stderr


def _env(endpoint: str) -> dict[str, str]:
    return {**MOTO_ENV, "AWS_ENDPOINT_URL": endpoint}


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


def _table_bytes(table: str, version: int | None = None) -> dict[str, int]:
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(table, version=version).get_add_actions(flatten=True))
    return dict(zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()))


def night(size: int, work: Path, endpoint: str, dataset: Path) -> dict[str, Any]:
    """Build the table and the night's manifest for ``size`` figures, run the reindex, measure."""
    spec = read_spec(DEFAULT_MODEL_PATH)
    bucket = f"coll-{size}"
    table = str(work / f"table-{size}")
    from deltalake import write_deltalake

    for start in range(0, size, 100_000):
        write_deltalake(table, synthetic_rows(start, min(size, start + 100_000), spec.name, spec.version, bucket), mode="append")
    cli(["table", "optimize", "--table", table])
    before = _table_bytes(table)
    articles = size // PER_ARTICLE
    rng = np.random.default_rng(size)
    touched = rng.choice(articles, max(2, int(size * CHANGED_OR_DELETED / PER_ARTICLE)), replace=False)
    changed, deleted = set(touched[: len(touched) // 2].tolist()), set(touched[len(touched) // 2:].tolist())
    new_articles = range(articles, articles + max(1, int(size * NEW / PER_ARTICLE)))
    s3 = _s3(endpoint)
    s3.create_bucket(Bucket=bucket)
    figures = sorted(p for p in dataset.rglob("*.jpg"))[:64] or sorted(p for p in dataset.rglob("*.png"))[:64]
    etags: dict[str, str] = {}
    for k, article in enumerate([*sorted(changed), *new_articles]):
        for j in range(PER_ARTICLE):
            key = f"in/PMC{article:07d}/fig{j}.jpg"
            etags[key] = s3.put_object(Bucket=bucket, Key=key, Body=figures[(k * PER_ARTICLE + j) % len(figures)].read_bytes())["ETag"].strip('"')
    keys, sizes, tags = [], [], []
    for i in range(size + len(new_articles) * PER_ARTICLE):
        if i // PER_ARTICLE in deleted:
            continue
        key = f"in/PMC{i // PER_ARTICLE:07d}/fig{i % PER_ARTICLE}.jpg"
        keys.append(key)
        sizes.append(20_000 + i % 5000 if key not in etags else None)
        tags.append(etags.get(key) or hashlib.md5(str(i).encode()).hexdigest())
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": keys, "size": pa.array(sizes, pa.int64()), "etag": tags}), buf, row_group_size=100_000)
    s3.put_object(Bucket=bucket, Key="inventory/manifest.parquet", Body=buf.getvalue())
    summary, peak, seconds, _ = cli(["reindex", "--input", f"s3://{bucket}/in", "--output", table, "--manifest",
                                     f"s3://{bucket}/inventory/manifest.parquet"], _env(endpoint), sample=True)
    after = _table_bytes(table)
    rewritten = sum(b for path, b in before.items() if path not in after)
    return {"figures": size, "driver_peak_rss_mb": round(peak / 2**20, 1), "plan_seconds": summary["durations"]["plan"],
            "reindex_seconds": round(seconds, 1), "new": summary["new"], "changed": summary["changed"], "deleted": summary["deleted"],
            "missing": summary["missing"], "table_files_before": len(before), "table_mb_before": round(sum(before.values()) / 2**20, 1),
            "files_rewritten": sum(1 for p in before if p not in after), "rewritten_share": round(rewritten / sum(before.values()), 4)}


def actor_starts(work: Path, endpoint: str, dataset: Path) -> dict[str, Any]:
    """An index of 300 real figures in 6 commits: how many classifier actors it started."""
    s3 = _s3(endpoint)
    s3.create_bucket(Bucket="actors")
    figures = sorted(p for p in dataset.rglob("*.jpg"))[:300] or sorted(p for p in dataset.rglob("*.png"))[:300]
    for i in range(300):
        s3.put_object(Bucket="actors", Key=f"in/PMC{i // 5:04d}/fig{i % 5}.jpg", Body=figures[i % len(figures)].read_bytes())
    model = tiny_model(work / "tiny.safetensors")
    summary, _, seconds, _ = cli(["index", "--input", "s3://actors/in", "--output", str(work / "actors-table"), "--model", str(model),
                                       "--commit-every", "50", "--batch-size", "16", "--concurrency", "2"], _env(endpoint))
    started = summary["classifier_actors"]
    return {"figures": 300, "commits": summary["commits"], "actor_pool": 2, "actors_started": started,
            "actor_restarts": max(0, started - 2), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="1k and 10k figures (CI scale)")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    args = parser.parse_args(argv)
    sizes = [1000, 10_000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="xai-collection-") as tmp, moto_server(Path(tmp) / "logs") as endpoint:
        nights = []
        for size in sizes:
            nights.append(night(size, Path(tmp), endpoint, Path(args.dataset)))
            print(json.dumps(nights[-1]), flush=True)
        actors = actor_starts(Path(tmp), endpoint, Path(args.dataset))
    small, large = nights[0], nights[-1]
    result = {"nights": nights, "driver_rss_ratio": round(large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3),
              "index": actors}
    headers = list(nights[0])
    print_table(headers, [[n[h] for h in headers] for n in nights])
    print(f"driver peak RSS {large['figures']} / {small['figures']}: {result['driver_rss_ratio']} (goal <= 1.25); "
          f"rewritten share at {large['figures']}: {large['rewritten_share']:.2%} (goal <= 10%); "
          f"index actor restarts: {actors['actor_restarts']} over {actors['commits']} commits (goal 0)")
    write_results("collection_scale", args.smoke, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
