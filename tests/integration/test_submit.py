"""`xai-pipeline submit` against a real Ray head started with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.services import free_port
from conftest import real_figures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_submit_index_job_to_a_ray_head(tmp_path: Path, dataset_dir: Path) -> None:
    from deltalake import DeltaTable

    figures = tmp_path / "figures"
    figures.mkdir()
    for _, path in real_figures(dataset_dir, per_class=1):
        (figures / path.name).write_bytes(path.read_bytes())
    ray_tmp = tempfile.mkdtemp(prefix="xh", dir="/tmp")
    port, dashboard = free_port(), free_port()
    ray = str(Path(sys.executable).parent / "ray")
    # Token authentication, as a production cluster should run it; the client uses the same token.
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the job's `python` is this venv's, as on a cluster image
    env.pop("RAY_ADDRESS", None)
    # Every port of its own: the test session's Ray may already hold the default agent ports.
    ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                                                   "runtime-env-agent-port", "ray-client-server-port")]
    start = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                            "--disable-usage-stats", *ports], env=env, capture_output=True, text=True, timeout=180)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(address + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 without Ray's auth token, which the job client sends)
            except OSError:
                assert time.time() < deadline, "dashboard did not come up"
                time.sleep(1)
        out = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "submit", "--address", address, "--",
                              "index", "--input", str(figures), "--output", str(tmp_path / "table"), "--batch-size", "4"],
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "SUCCEEDED" in out.stdout
        assert DeltaTable(str(tmp_path / "table")).to_pyarrow_table().num_rows == 6
        bad = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "submit", "--address", address, "--", "index", "--bogus"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "not valid" in bad.stderr
    finally:
        # Not `ray stop`: it would also stop the test session's own Ray. Every process of this
        # head has its temp dir on its command line.
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
