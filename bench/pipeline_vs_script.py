"""The Ray job against a plain single-process PyTorch script doing the same work.

    python -m bench.pipeline_vs_script [--smoke] [--figures N] [--small N] [--model PATH] [--arms A,B]

Both read the same figures from moto_server (S3 protocol), decode, classify with the bundled
model, compute CRM, encode rows (ROI boxes included) and write Parquet (the job: a Delta table),
on this machine. The script is the obvious alternative: list, then for each batch of 32 get →
decode → predict → encode, one process, two torch threads. The job is ``xai-pipeline index``
with 1 classifier actor (2 torch threads) and with 2 actors (1 thread each). ``--model`` runs every
arm with that model file instead of the bundled one (a seed ensemble, say; the results file is then
``pipeline_vs_script-<file stem>``), ``--arms`` only the arms named (the file name then lists them).

Each arm runs as its own command and is timed from outside, interpreter start to exit, at two
collection sizes, ``small`` and ``figures``. Reported per arm: figures/s end to end at each size,
and from the difference of the two runs the **marginal rate** (figures/s once running, what a
collection of millions sees) and the **fixed cost** in seconds (Python, imports, Ray start,
actor start, commit). moto answers ~50–80 requests/s per client, which bounds every arm.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import DEFAULT_DATASET, REPO, print_table, write_results
from bench.services import MOTO_ENV, moto_server, ray_tmpdir
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.job.codec import encode_batch
from xai_pipeline.job.decode import decode_batch
from xai_pipeline.job.listing import list_objects
from xai_pipeline.job.fetch import fetch_batch
from xai_pipeline.store.source import S3Settings, parse_location

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block only: callers (tests) may share this process."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def plain_script(input_uri: str, out: Path, settings: S3Settings, batch: int = 32, model: str | None = None) -> float:
    """The obvious single-process loop; returns figures/s end to end (model load included)."""
    started = time.perf_counter()
    classifier = FigureClassifier(model_path=model, device="cpu", torch_threads=2)
    location = parse_location(input_uri, "--input")
    listing = list_objects(location, settings)
    tables = []
    for start in range(0, listing.num_rows, batch):
        part = listing.slice(start, batch).to_pydict()
        fetched = fetch_batch({k: np.array(v, dtype=object) for k, v in part.items()}, location, settings, 64 << 20)
        decoded = decode_batch(fetched, classifier.spec.input_size)
        tables.append(encode_batch(classifier(decoded), run_id="script"))
    pq.write_table(pa.concat_tables(tables), out)
    return listing.num_rows / (time.perf_counter() - started)


ARMS = {
    "script": [],
    "job_1_actor": ["--concurrency", "1", "--torch-threads", "2"],
    "job_2_actors": ["--concurrency", "2", "--torch-threads", "1"],
}


def run_arm(arm: str, input_uri: str, out: Path, endpoint: str, model: str | None = None) -> float:
    """Seconds from starting the arm's command to its exit."""
    with_model = ["--model", model] if model else []
    if arm == "script":
        command = [sys.executable, "-m", "bench.pipeline_vs_script", "--script", input_uri, str(out), *with_model]
    else:
        command = [sys.executable, "-m", "xai_pipeline.cli", "index", "--input", input_uri, "--output", str(out), "--batch-size", "32",
                   *ARMS[arm], *with_model]
    with ray_tmpdir() as ray_tmp:
        env = {**os.environ, **MOTO_ENV, "AWS_ENDPOINT_URL": endpoint, "RAY_TMPDIR": ray_tmp}
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=3600)
        return time.perf_counter() - started


def rates(small: int, large: int, t_small: float, t_large: float) -> dict[str, float]:
    """End-to-end figures/s at both sizes; marginal figures/s and fixed seconds from the two."""
    marginal = (large - small) / (t_large - t_small) if t_large > t_small else float("inf")
    return {"seconds_small": t_small, "seconds_large": t_large, "fig_s_small": small / t_small, "fig_s_large": large / t_large,
            "marginal_fig_s": marginal, "fixed_seconds": t_large - large / marginal}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="12 and 24 figures")
    parser.add_argument("--figures", type=int, default=1200, help="the larger collection")
    parser.add_argument("--small", type=int, default=300, help="the smaller collection")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--model", help="model file for every arm (default: the bundled model)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"arms to run, comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--script", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)  # the script arm's command
    args = parser.parse_args(argv)
    if args.script:
        torch.set_num_threads(2)
        plain_script(args.script[0], Path(args.script[1]), S3Settings(), model=args.model)
        return 0
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        parser.error(f"--arms: choose from {', '.join(ARMS)}, got {args.arms!r}")
    if args.model and not Path(args.model).is_file():
        parser.error(f"--model: no such file {args.model}")
    small, large = (12, 24) if args.smoke else (args.small, args.figures)
    with tempfile.TemporaryDirectory(prefix="xai-pvs-") as tmp:
        work = Path(tmp)
        with moto_server(work / "logs") as endpoint, _environment({**MOTO_ENV, "AWS_ENDPOINT_URL": endpoint}):
            import boto3

            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket="bench")
            files = sorted(Path(args.dataset).glob("*/*.jpg"))
            if len(files) < large:
                raise SystemExit(f"--figures {large}: the data set has {len(files)} JPEGs")
            chosen = files[:: max(1, len(files) // large)][:large]
            for i, f in enumerate(chosen):
                body = f.read_bytes()
                s3.put_object(Bucket="bench", Key=f"large/{f.name}", Body=body)
                if i < small:
                    s3.put_object(Bucket="bench", Key=f"small/{f.name}", Body=body)
            results: dict[str, object] = {"small": small, "large": large}
            for arm in arms:
                seconds = [run_arm(arm, f"s3://bench/{size}", work / f"{arm}-{size}", endpoint, args.model) for size in ("small", "large")]
                results[arm] = rates(small, large, *seconds)
                log.info("%s: %s", arm, results[arm])
    print_table(["arm", f"fig/s at {small}", f"fig/s at {large}", "marginal fig/s", "fixed s"],
                [[arm, r["fig_s_small"], r["fig_s_large"], r["marginal_fig_s"], r["fixed_seconds"]]  # type: ignore[index]
                 for arm, r in results.items() if arm in ARMS])
    print("each arm is a command timed from start to exit; marginal = (large - small) / (t_large - t_small)")
    name = "pipeline_vs_script" + (f"-{Path(args.model).stem}" if args.model else "") + ("" if arms == list(ARMS) else "-" + "-".join(arms))
    write_results(name, args.smoke, {"results": results, "model": args.model or "bundled",
                                     "goal": "job >= script on one machine; faster with more workers"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
