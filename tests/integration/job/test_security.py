"""Credentials never leak; odd object keys round-trip; nothing is written outside the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.services import MOTO_ENV
from conftest import real_figures

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "xaiCANARYsecret0123456789abcdefGHIJKLMNOP"
ODD_KEYS = ["odd/a b.jpg", "odd/ünïcødé ✓.jpg", "odd/x/../y.jpg", "odd/./dot.jpg", "odd//double.jpg", "odd/100%.jpg",
            "odd/%20literal.jpg", "odd/q?x#y.jpg", "odd/_under.jpg", "odd/.hidden.jpg"]


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_secret_never_appears_and_odd_keys_round_trip(s3, s3_endpoint: str, tmp_path: Path, dataset_dir: Path) -> None:
    from deltalake import DeltaTable

    s3.create_bucket(Bucket="secure")
    figures = real_figures(dataset_dir, per_class=2)
    for key, (_, path) in zip(ODD_KEYS, figures):
        s3.put_object(Bucket="secure", Key=key, Body=path.read_bytes())
    ray_tmp = Path("/tmp") / f"xs{os.getpid()}"
    env = {**os.environ, **MOTO_ENV, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_TMPDIR": str(ray_tmp)}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        ok = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "-v", "index", "--input", "s3://secure/odd/", "--output",
                             str(out_dir / "table"), "--summary-json", str(out_dir / "summary.json")],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        bad = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "index", "--input", "s3://no-such-bucket/x", "--output",
                              str(out_dir / "t2")], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert bad.returncode == 2
        outputs = (ok.stdout + ok.stderr + bad.stdout + bad.stderr).encode() + _all_bytes(out_dir)
        assert SECRET.encode() not in outputs
        ray_logs = _all_bytes(ray_tmp) if ray_tmp.exists() else b""
        assert SECRET.encode() not in ray_logs
    finally:
        subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)

    rows = DeltaTable(str(out_dir / "table")).to_pyarrow_table(columns=["source_uri", "status"]).to_pylist()
    assert sorted(r["source_uri"] for r in rows) == sorted(f"s3://secure/{k}" for k in ODD_KEYS)
    assert {r["status"] for r in rows} == {"ok"}
    # Everything the run wrote is inside the output folder (here: the table and the summary).
    assert {p.name for p in out_dir.iterdir()} == {"table", "summary.json"}
    assert not list(tmp_path.glob("*.parquet")) and not (tmp_path / "odd").exists()
