"""Integration fixtures: a moto_server process on 127.0.0.1 and one local Ray for the session.

moto runs as a separate process (Ray workers are other processes and cannot see an in-process
mock). Its address and dummy credentials are put in the environment before Ray starts, and
passed to workers in the runtime_env.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import MOTO_ENV, moto_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        env = {**MOTO_ENV, "AWS_ENDPOINT_URL": endpoint}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield endpoint
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def fault_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file the stages read their injected faults from (:mod:`xai_pipeline.job.faults`); ``{}``
    (none) unless a test writes rules with :func:`inject`."""
    path = tmp_path_factory.mktemp("faults") / "rules.json"
    path.write_text("{}")
    return path


def inject(rules_file: Path, rules: dict[str, list[str]]) -> None:
    """Set the injected faults for the next runs (workers re-read the file at most once a second)."""
    import json
    import time

    rules_file.write_text(json.dumps(rules))
    time.sleep(1.2)


@pytest.fixture(scope="session")
def ray_session(s3_endpoint: str, fault_rules: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    from xai_pipeline.job.faults import FAULTS_ENV

    env_vars = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env_vars[FAULTS_ENV] = str(fault_rules)
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
