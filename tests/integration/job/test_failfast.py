"""Configuration and storage errors stop the job before any work, with the fix in the message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.services import MOTO_ENV, free_port, moto_server

pytestmark = pytest.mark.integration


def _index(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "index", *args], capture_output=True, text=True,
                          env={**os.environ, **MOTO_ENV, **env}, timeout=120)
    return proc, time.time() - started


def test_missing_bucket_names_the_flag_and_the_fix(s3, s3_endpoint: str, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="present")
    s3.put_object(Bucket="present", Key="in/a.png", Body=b"x")
    proc, _ = _index("--input", "s3://absent-bucket/in/", "--output", str(tmp_path / "t"), env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert proc.returncode == 2 and "--input" in proc.stderr and "does not exist" in proc.stderr
    proc, _ = _index("--input", "s3://present/in/", "--output", "s3://no-such-output/t", env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert proc.returncode == 2 and "--output" in proc.stderr and "no-such-output" in proc.stderr
    assert not (tmp_path / "t").exists()


def test_wrong_endpoint_fails_fast(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    proc, seconds = _index("--input", "s3://figures/in/", "--output", str(tmp_path / "t"), "--endpoint-url", closed, env={})
    assert proc.returncode == 2 and "cannot connect" in proc.stderr and "--endpoint-url" in proc.stderr
    assert seconds < 60


def test_bad_credentials_are_rejected_before_work(tmp_path: Path) -> None:
    with moto_server(tmp_path / "logs", auth=True) as endpoint:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        proc, _ = _index("--input", "s3://figures/in/", "--output", str(tmp_path / "t"), env=env)
    assert proc.returncode == 2 and "credentials" in proc.stderr
    assert "not-the-secret" not in proc.stderr + proc.stdout
