"""Local services for tests and benchmarks: a moto_server process and the fault proxy, each a
separate process on 127.0.0.1 (Ray workers are other processes and cannot see in-process mocks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"service at {url} did not start") from None
            time.sleep(0.2)


@contextlib.contextmanager
def moto_server(log_dir: Path, *, auth: bool = False) -> Iterator[str]:
    """A moto_server on a free port of 127.0.0.1; yields its endpoint URL.

    ``auth=True`` makes moto check credentials (unknown keys are rejected with 403).
    """
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"moto-{port}.log").open("w") as log:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_http(endpoint + "/moto-api/", proc)
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.contextmanager
def fault_proxy(target: str, log_dir: Path, rate: float = 0.1, seed: int = 0, kinds: str | None = None,
                only_prefix: str = "", stall_seconds: float = 5.0) -> Iterator[str]:
    """The fault-injecting proxy (:mod:`bench.fault_proxy`) in front of ``target``; ``kinds``,
    ``only_prefix`` and ``stall_seconds`` as its flags (default: its pre-forward faults)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    extra = (["--kinds", kinds] if kinds else []) + (["--only-prefix", only_prefix] if only_prefix else [])
    with (log_dir / f"fault-proxy-{port}.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fault_proxy", "--target", target, "--port", str(port), "--rate", str(rate), "--seed", str(seed),
             "--stall-seconds", str(stall_seconds), *extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(Path(__file__).parent.parent),
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 20
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("fault proxy did not start")
                time.sleep(0.1)
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def kill_ray(ray_tmp: str) -> None:
    """Kill every process of a Ray started under ``ray_tmp`` (left behind by a SIGKILLed driver)."""
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)


@contextlib.contextmanager
def ray_tmpdir() -> Iterator[str]:
    """A temp dir for a command's own ``RAY_TMPDIR``, short because Ray's socket paths have a
    length limit; on exit every process of the Ray started under it is killed."""
    path = tempfile.mkdtemp(prefix="xr", dir="/tmp")
    try:
        yield path
    finally:
        kill_ray(path)
