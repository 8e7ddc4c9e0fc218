"""Reading object bodies through faults: resets and stalls in the middle of a body, truncated
bodies under the right Content-Length and 503 SlowDown bursts are retried with backoff; a figure
whose faults outlast the retries becomes a read_error row; a GET is conditional on the listed
ETag. moto_server behind ``bench/fault_proxy.py``, no Ray (the fetch stage is called directly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.services import fault_proxy
from xai_pipeline.job.listing import list_objects
from xai_pipeline.job.fetch import ReadPolicy, fetch_batch
from xai_pipeline.store.source import S3Settings, parse_location

FAST = ReadPolicy(retries=8, timeout=1.0, deadline=60.0, backoff_base=0.02, backoff_cap=0.2)


def _upload(s3, bucket: str, n: int = 8) -> dict[str, bytes]:
    s3.create_bucket(Bucket=bucket)
    bodies = {}
    for i in range(n):
        body = np.random.default_rng(i).integers(0, 255, 30_000 + i, dtype=np.uint8).tobytes()
        s3.put_object(Bucket=bucket, Key=f"in/{i}.bin", Body=body)
        bodies[f"{bucket}/in/{i}.bin"] = body
    return bodies


def _fetch(bucket: str, endpoint: str, policy: ReadPolicy) -> dict[str, np.ndarray]:
    settings = S3Settings(endpoint_url=endpoint)
    location = parse_location(f"s3://{bucket}/in", "--input")
    listing = list_objects(location, settings)
    batch = {name: np.array(listing.column(name).to_pylist(), dtype=object) for name in ("path", "uri", "etag")}
    batch["size"] = np.array(listing.column("size").to_pylist(), dtype=np.int64)
    return fetch_batch(batch, location, settings, max_bytes=10**8, policy=policy)


def _counts(log_dir: Path) -> str:
    return "".join(p.read_text() for p in log_dir.glob("fault-proxy-*.log"))


@pytest.mark.parametrize("kind", ["reset", "truncate", "stall", "burst"])
def test_body_faults_are_retried_until_the_bytes_are_whole(kind: str, s3, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"body-{kind}"
    bodies = _upload(s3, bucket)
    with fault_proxy(s3_endpoint, tmp_path, rate=0.5, seed=3, kinds=kind, only_prefix=f"/{bucket}/in/", stall_seconds=3) as proxy:
        out = _fetch(bucket, proxy, FAST)
    assert list(out["read_status"]) == [""] * len(bodies), list(out["read_error"])
    assert {p: bytes(b) for p, b in zip(out["path"], out["bytes"])} == bodies
    assert f"'{kind}'" in _counts(tmp_path)  # the proxy did inject this fault


def test_a_figure_whose_faults_outlast_the_retries_is_a_read_error(s3, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = "body-always"
    bodies = _upload(s3, bucket, n=3)
    with fault_proxy(s3_endpoint, tmp_path, rate=1.0, kinds="reset,truncate", only_prefix=f"/{bucket}/in/") as proxy:
        out = _fetch(bucket, proxy, ReadPolicy(retries=2, timeout=1.0, deadline=30.0, backoff_base=0.01))
    assert list(out["read_status"]) == ["read_error"] * len(bodies)
    assert all("read failed after 3 attempts" in e for e in out["read_error"]), list(out["read_error"])
    assert list(out["size"]) == [len(bodies[p]) for p in out["path"]]  # the listed sizes stay


def test_an_object_replaced_after_listing_is_read_with_its_new_etag(s3, s3_endpoint: str) -> None:
    s3.create_bucket(Bucket="replaced")
    s3.put_object(Bucket="replaced", Key="in/a.bin", Body=b"first version")
    settings = S3Settings(endpoint_url=s3_endpoint)
    location = parse_location("s3://replaced/in", "--input")
    listing = list_objects(location, settings)
    listed_etag = listing.column("etag")[0].as_py()
    assert '"' not in listed_etag
    s3.put_object(Bucket="replaced", Key="in/a.bin", Body=b"the second version")
    batch = {"path": np.array(["replaced/in/a.bin"], dtype=object), "size": np.array([13]), "etag": np.array([listed_etag], dtype=object)}
    out = fetch_batch(batch, location, settings, max_bytes=1000, policy=FAST)
    new_etag = s3.head_object(Bucket="replaced", Key="in/a.bin")["ETag"].strip('"')
    assert bytes(out["bytes"][0]) == b"the second version" and out["etag"][0] == new_etag != listed_etag
    assert out["size"][0] == len(b"the second version")
