"""``xai-pipeline submit``: run an xai-pipeline command as a Ray job through the job API.

    xai-pipeline submit --address http://head:8265 -- index --input s3://figures/pmc/ --output s3://tables/figures

The command is checked locally first (a bad flag fails here, not on the cluster). The job runs
``python -m xai_pipeline.cli COMMAND ...`` on the cluster, whose image has the package installed
(or ``--working-dir`` ships a folder). Non-secret AWS settings (region, endpoint) travel in the
runtime_env; credentials never do: the cluster uses its own role or secrets.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import time
from collections.abc import Callable

from xai_pipeline.config import ConfigError, SubmitConfig

log = logging.getLogger(__name__)

JOB_COMMANDS = ("index", "reindex", "train", "evaluate", "table")
FORWARDED_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP",
                 "AWS_EC2_METADATA_DISABLED")
WORKING_DIR_EXCLUDES = [".venv", ".git", "build", "demo-output", "bench/results", "**/__pycache__"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def job_command(job_args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command after ``--``, validated with the CLI's own parser."""
    args = job_args[1:] if job_args[:1] == ["--"] else job_args
    if not args or args[0] not in JOB_COMMANDS:
        raise ConfigError(f"submit: put the command after --, one of {', '.join(JOB_COMMANDS)} (e.g. -- index --input ...)")
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise ConfigError(f"submit: the job's command line is not valid: {shlex.join(args)}") from exc
    return args


def runtime_env(cfg: SubmitConfig) -> dict[str, object]:
    env: dict[str, object] = {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    if cfg.working_dir:
        env["working_dir"] = cfg.working_dir
        env["excludes"] = WORKING_DIR_EXCLUDES
    return env


def _submit_when_ready(client: object, entrypoint: str, env: dict[str, object], wait_s: float = 120) -> str:
    """Submit, retrying while a freshly started head has no job agent yet."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env)  # type: ignore[attr-defined]
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            log.info("the cluster's job agent is not up yet; retrying")
            time.sleep(2)


def submit(cfg: SubmitConfig, args: list[str], echo: Callable[[str], None] = print) -> int:
    """Submit; with ``cfg.wait``, follow the job to the end and return 0 only if it SUCCEEDED."""
    from ray.job_submission import JobSubmissionClient

    from ray.exceptions import AuthenticationError

    entrypoint = "python -m xai_pipeline.cli " + shlex.join(args)
    try:
        client = JobSubmissionClient(cfg.address)
        job_id = _submit_when_ready(client, entrypoint, runtime_env(cfg))
    except AuthenticationError as exc:
        raise ConfigError(
            f"--address {cfg.address}: the cluster wants Ray's auth token; set RAY_AUTH_MODE=token and the cluster's "
            "token in RAY_AUTH_TOKEN (or the file ~/.ray/auth_token)"
        ) from exc
    except ConnectionError as exc:
        raise ConfigError(f"--address {cfg.address}: no Ray dashboard answers there ({type(exc).__name__})") from exc
    echo(f"submitted {job_id}: {entrypoint}")
    if not cfg.wait:
        return 0
    deadline = time.time() + cfg.timeout
    status = str(client.get_job_status(job_id).value)
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(2)
        status = str(client.get_job_status(job_id).value)
    logs = client.get_job_logs(job_id)
    echo("\n".join(logs.rstrip().splitlines()[-20:]))
    echo(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1
