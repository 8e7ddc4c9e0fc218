"""Integration fixtures: a moto_server process on 127.0.0.1 and one local Ray for the session.

moto runs as a separate process (Ray workers are other processes and cannot see an in-process
mock). Its address and dummy credentials are put in the environment before Ray starts, and
passed to workers in the runtime_env.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_session(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    env_vars = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env_vars},
             _temp_dir=str(tmp_path_factory.mktemp("ray")), logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture()
def s3(s3_endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def real_figures(dataset_dir: Path, per_class: int) -> list[tuple[str, Path]]:
    """``(label, path)`` of the first figures of each class."""
    chosen = []
    for label in ("chest_xray", "ct", "mri", "ultrasound", "fundus", "histology"):
        for path in sorted((dataset_dir / label).iterdir())[:per_class]:
            chosen.append((label, path))
    return chosen
