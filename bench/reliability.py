"""Reliability report: every figure accounted for under bad input, crashes, restarts and faults.

    python -m bench.reliability [--smoke] [--dataset DIR]

Scenarios (each runs the real ``xai-pipeline index`` command in its own process and Ray):

* ``bad_inputs``      real figures plus the generated corpus of bad and unusual files, via S3
* ``driver_sigkill``  SIGKILL the driver after its first commit (the driver of that run waits after
                      the commit, test hook), then run the same command again
* ``actor_kill``      a classification actor dies mid-batch (test hook); Ray restarts it
* ``storage_faults``  10% of S3 requests answered 503 SlowDown, 500 or a dropped connection
* ``body_faults``     ≥ 1,000 figures, 5% of the object GETs faulted in the body: resets after
                      part of the body, stalls longer than the read timeout, truncated bodies
                      under the right Content-Length, 503 SlowDown bursts; against the same
                      collection read without faults (seconds of both)

One line per scenario: inputs, rows, ok, errors by kind, duplicates, lost. Duplicates and lost
must be 0. Results go to ``bench/results/reliability.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import bad_inputs
from bench.services import MOTO_ENV, fault_proxy, moto_server, ray_tmpdir
from xai_pipeline.job.classify import KILL_ONCE_ENV
from xai_pipeline.job.faults import FAULTS_ENV
from xai_pipeline.schema import figure_id

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CLASSES = ("chest_xray", "ct", "mri", "ultrasound", "fundus", "histology")


@dataclass
class Outcome:
    scenario: str
    inputs: int
    rows: int
    ok: int
    errors_by_kind: dict[str, int]
    duplicates: int
    lost: int
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        errors = ",".join(f"{k}={v}" for k, v in sorted(self.errors_by_kind.items())) or "-"
        seconds = f" seconds={self.details['seconds']}" if "seconds" in self.details else ""
        return (f"{self.scenario:<15} inputs={self.inputs:<4} rows={self.rows:<4} ok={self.ok:<4} errors[{errors}] "
                f"duplicates={self.duplicates} lost={self.lost}{seconds}")


def real_figures(dataset: Path, count: int) -> list[Path]:
    per_class = max(1, -(-count // len(CLASSES)))
    chosen = [p for label in CLASSES for p in sorted((dataset / label).iterdir())[:per_class]]
    return chosen[:count]


def run_cli(args: list[str], env: dict[str, str], *, wait: bool = True, timeout: float = 900) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    """``xai-pipeline index ARGS`` in a new process group with its own Ray temp dir; the summary
    goes to ``$RAY_TMPDIR/summary.json``."""
    command = [sys.executable, "-m", "xai_pipeline.cli", "index", *args, "--summary-json", str(Path(env["RAY_TMPDIR"]) / "summary.json")]
    full_env = {**os.environ, **env}
    if not wait:
        # Output to a file, not a pipe nobody reads: a full pipe would block the driver.
        with open(Path(env["RAY_TMPDIR"]) / "index.log", "w") as log:  # the child keeps its own descriptor
            return subprocess.Popen(command, env=full_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(command, env=full_env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def index(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``xai-pipeline index ARGS`` to completion with its own Ray; returns its summary."""
    with ray_tmpdir() as ray_tmp:
        proc = run_cli(args, {"RAY_TMPDIR": ray_tmp, **(env or {})})
        if proc.returncode != 0:
            raise RuntimeError(f"index failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads((Path(ray_tmp) / "summary.json").read_text())


def account(name: str, table: str, options: dict[str, str] | None, expected: dict[str, str], **details: Any) -> Outcome:
    """Compare the table with the expected ``figure_id → source_uri``."""
    from deltalake import DeltaTable

    rows = DeltaTable(table, storage_options=options).to_pyarrow_table(columns=["figure_id", "status"]).to_pylist()
    ids = Counter(r["figure_id"] for r in rows)
    statuses = Counter(r["status"] for r in rows)
    return Outcome(
        scenario=name,
        inputs=len(expected),
        rows=len(rows),
        ok=statuses.pop("ok", 0),
        errors_by_kind=dict(statuses),
        duplicates=sum(n - 1 for n in ids.values() if n > 1),
        lost=len(set(expected) - set(ids)),
        details=details,
    )


def _s3_env(endpoint: str) -> dict[str, str]:
    return {**MOTO_ENV, "AWS_ENDPOINT_URL": endpoint}


def _upload(endpoint: str, bucket: str, files: dict[str, bytes]) -> dict[str, str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    expected = {}
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        expected[figure_id(f"s3://{bucket}/{key}")] = f"s3://{bucket}/{key}"
    return expected


def _s3_options(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def scenario_bad_inputs(work: Path, dataset: Path, n_real: int, endpoint: str) -> Outcome:
    cases = bad_inputs()
    files = {f"in/real/{p.name}": p.read_bytes() for p in real_figures(dataset, n_real)}
    files.update({f"in/bad/{c.name}": c.data for c in cases})
    expected = _upload(endpoint, "bad-inputs", files)
    summary = index(["--input", "s3://bad-inputs/in/", "--output", "s3://bad-inputs/table", "--batch-size", "8"], _s3_env(endpoint))
    from deltalake import DeltaTable

    got = {r["source_uri"]: r["status"] for r in DeltaTable("s3://bad-inputs/table", storage_options=_s3_options(endpoint)).to_pyarrow_table(columns=["source_uri", "status"]).to_pylist()}
    wrong = {c.name: got.get(f"s3://bad-inputs/in/bad/{c.name}") for c in cases if got.get(f"s3://bad-inputs/in/bad/{c.name}") != c.status}
    return account("bad_inputs", "s3://bad-inputs/table", _s3_options(endpoint), expected, wrong_status=wrong, seconds=summary["seconds"])


def _local_collection(folder: Path, dataset: Path, n_real: int) -> dict[str, str]:
    """Copy real figures into ``folder``; returns the expected figure_id → path."""
    folder.mkdir(parents=True)
    for path in real_figures(dataset, n_real):
        (folder / path.name).write_bytes(path.read_bytes())
    return {figure_id(f"file://{p}"): str(p) for p in folder.iterdir()}


def scenario_driver_sigkill(work: Path, dataset: Path, n_real: int) -> Outcome:
    folder = work / "sigkill" / "in"
    expected = _local_collection(folder, dataset, n_real)
    table = work / "sigkill" / "table"
    args = ["--input", str(folder), "--output", str(table), "--commit-every", "2", "--batch-size", "2"]
    # The killed run's driver sleeps right after its first commit (test hook), so the kill lands
    # between two commits with rows still in flight, however fast the machine: without it, small
    # runs reach the driver as one block and every commit can land inside one polling interval.
    rules = work / "sigkill" / "hold.json"
    rules.write_text(json.dumps({"delay:commit": ["[commit 1]"], "delay_seconds": 300}))
    with ray_tmpdir() as ray_tmp:  # its Ray is killed with the driver
        proc = run_cli(args, {"RAY_TMPDIR": ray_tmp, FAULTS_ENV: str(rules)}, wait=False)
        # Kill after the first commit, while the pipeline streams on.
        first_commit = table / "_delta_log" / "00000000000000000000.json"
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if first_commit.exists():
                break
            time.sleep(0.05)
        killed = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    from deltalake import DeltaTable

    after_kill = DeltaTable(str(table)).to_pyarrow_table(columns=["figure_id"]).num_rows
    summary = index(args)
    return account("driver_sigkill", str(table), None, expected, killed_mid_run=killed, rows_after_kill=after_kill,
                   skipped=summary["skipped"], processed=summary["processed"], redone=summary["redone"])


def scenario_actor_kill(work: Path, dataset: Path, n_real: int) -> Outcome:
    folder = work / "actor" / "in"
    expected = _local_collection(folder, dataset, n_real)
    marker = work / "actor" / "killed"
    summary = index(["--input", str(folder), "--output", str(work / "actor" / "table"), "--batch-size", "4"], {KILL_ONCE_ENV: str(marker)})
    return account("actor_kill", str(work / "actor" / "table"), None, expected, actor_killed=marker.exists(), seconds=summary["seconds"])


def scenario_storage_faults(work: Path, dataset: Path, n_real: int, endpoint: str, rate: float = 0.1) -> Outcome:
    files = {f"in/{p.name}": p.read_bytes() for p in real_figures(dataset, n_real)}
    expected = _upload(endpoint, "faults", files)
    with fault_proxy(endpoint, work / "logs", rate=rate, seed=7) as proxy:
        summary = index(["--input", "s3://faults/in/", "--output", "s3://faults/table", "--batch-size", "4",
                         "--commit-every", str(max(2, n_real // 3)), "--endpoint-url", proxy], _s3_env(proxy))
    return account("storage_faults", "s3://faults/table", _s3_options(endpoint), expected, fault_rate=rate, commits=summary["commits"])


BODY_FAULTS = "reset,truncate,stall,burst"


def _proxy_counts(log_dir: Path) -> dict[str, int]:
    """The fault proxy's counts, from the line it writes to its log on exit."""
    for path in sorted(log_dir.glob("fault-proxy-*.log"), key=lambda p: p.stat().st_mtime, reverse=True):
        for line in path.read_text().splitlines():
            if line.startswith("fault proxy counts:"):
                return json.loads(line.split(":", 1)[1].strip().replace("'", '"'))
    return {}


def scenario_body_faults(work: Path, dataset: Path, n_figures: int, endpoint: str, rate: float = 0.05) -> list[Outcome]:
    """``n_figures`` objects (real figures, repeated under new keys) indexed twice: straight from
    moto_server, then through the fault proxy faulting ``rate`` of the object GETs in the body."""
    reals = [p.read_bytes() for p in real_figures(dataset, min(n_figures, 120))]
    suffix = [".png" if data.startswith(b"\x89PNG") else ".jpg" for data in reals]
    files = {f"in/PMC{i // 10:04d}/fig{i:05d}{suffix[i % len(reals)]}": reals[i % len(reals)] for i in range(n_figures)}
    expected = _upload(endpoint, "body-faults", files)
    # One object's read: up to 8 retries, a stalled body cut after 2 s (the proxy stalls 4 s).
    reads = ["--read-retries", "8", "--read-timeout", "2", "--batch-size", "32"]
    clean = index(["--input", "s3://body-faults/in/", "--output", "s3://body-faults/clean", *reads], _s3_env(endpoint))
    logs = work / "logs" / "body"
    with fault_proxy(endpoint, logs, rate=rate, seed=11, kinds=BODY_FAULTS, only_prefix="/body-faults/in/", stall_seconds=4) as proxy:
        faulted = index(["--input", "s3://body-faults/in/", "--output", "s3://body-faults/table", *reads, "--endpoint-url", proxy],
                        _s3_env(proxy))
    counts = _proxy_counts(logs)
    injected = sum(v for k, v in counts.items() if k != "forwarded")
    options = _s3_options(endpoint)
    return [
        account("body_clean", "s3://body-faults/clean", options, expected, seconds=clean["seconds"], missing=clean["missing"]),
        account("body_faults", "s3://body-faults/table", options, expected, seconds=faulted["seconds"], missing=faulted["missing"],
                fault_rate=rate, faults_injected=counts, faults=injected,
                slowdown_vs_clean=round(faulted["seconds"] / clean["seconds"], 3) if clean["seconds"] else None),
    ]


def run_all(work: Path, dataset: Path, n_real: int, n_body: int) -> list[Outcome]:
    outcomes = []
    with moto_server(work / "logs") as endpoint:
        outcomes.append(scenario_bad_inputs(work, dataset, n_real, endpoint))
        outcomes.append(scenario_storage_faults(work, dataset, n_real, endpoint))
        outcomes.extend(scenario_body_faults(work, dataset, n_body, endpoint))
    outcomes.append(scenario_driver_sigkill(work, dataset, n_real))
    outcomes.append(scenario_actor_kill(work, dataset, n_real))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a dozen figures per scenario (CI scale)")
    parser.add_argument("--figures", type=int, default=120, help="real figures per scenario without --smoke")
    parser.add_argument("--body-figures", type=int, default=1000, help="objects of the body_faults scenario without --smoke")
    parser.add_argument("--dataset", default=os.environ.get("XAI_DATASET_DIR", str(REPO.parent / "shared" / "datasets" / "modality-v1")))
    args = parser.parse_args(argv)
    n_real = 12 if args.smoke else args.figures
    n_body = 60 if args.smoke else args.body_figures
    with tempfile.TemporaryDirectory(prefix="xai-reliability-") as tmp:
        outcomes = run_all(Path(tmp), Path(args.dataset), n_real, n_body)
    for outcome in outcomes:
        print(outcome.line(), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "reliability-smoke.json" if args.smoke else "reliability.json"
    (RESULTS / name).write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n")
    return 0 if all(o.duplicates == 0 and o.lost == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
