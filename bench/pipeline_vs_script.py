"""The Ray job against a plain single-process PyTorch script doing the same work.

    python -m bench.pipeline_vs_script [--smoke] [--figures N]

Both read the same figures from moto_server (S3 protocol), decode, classify with the bundled
model, compute CRM, encode rows and write Parquet, on this machine. The script is the obvious
alternative: list, then for each batch of 32 get → decode → predict → encode, one process, two
torch threads. The job runs ``xai-pipeline index`` (its own process and local Ray) with 1 and 2
classifier actors. Reported: figures/s end to end (the job's include starting Ray, ~10 s here) and
the job's processing rate (its ``process_figures_per_second``). moto answers ~50–80 requests/s,
which bounds every arm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from bench.services import MOTO_ENV, moto_server
from xai_pipeline.classify import FigureClassifier
from xai_pipeline.codec import encode_batch
from xai_pipeline.decode import decode_batch
from xai_pipeline.listing import list_objects
from xai_pipeline.source import S3Settings, fetch_batch, parse_location


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


def plain_script(input_uri: str, out: Path, settings: S3Settings, batch: int = 32) -> float:
    """The obvious single-process loop; returns figures/s end to end (model load included)."""
    started = time.perf_counter()
    classifier = FigureClassifier(device="cpu", torch_threads=2)
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


def ray_job(input_uri: str, out: Path, endpoint: str, concurrency: int, work: Path) -> tuple[float, float]:
    ray_tmp = tempfile.mkdtemp(prefix="xp", dir="/tmp")
    summary = work / f"job-{concurrency}.json"
    env = {**os.environ, **MOTO_ENV, "AWS_ENDPOINT_URL": endpoint, "RAY_TMPDIR": ray_tmp}
    try:
        subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "index", "--input", input_uri, "--output", str(out), "--batch-size", "32",
                        "--concurrency", str(concurrency), "--summary-json", str(summary)],
                       cwd=REPO, env=env, check=True, capture_output=True, timeout=3600)
    finally:
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    result = json.loads(summary.read_text())
    return float(result["figures_per_second"]), float(result["process_figures_per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="24 figures")
    parser.add_argument("--figures", type=int, default=600)
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    args = parser.parse_args(argv)
    count = 24 if args.smoke else args.figures
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="xai-pvs-") as tmp:
        work = Path(tmp)
        with moto_server(work / "logs") as endpoint, _environment({**MOTO_ENV, "AWS_ENDPOINT_URL": endpoint}):
            import boto3

            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket="bench")
            files = sorted(Path(args.dataset).glob("*/*.jpg"))
            for f in files[:: max(1, len(files) // count)][:count]:
                s3.put_object(Bucket="bench", Key=f"figs/{f.name}", Body=f.read_bytes())
            settings = S3Settings(endpoint_url=endpoint)
            results = {"figures": count, "script": plain_script("s3://bench/figs", work / "script.parquet", settings)}
            for concurrency in (1, 2):
                end_to_end, processing = ray_job("s3://bench/figs", work / f"table{concurrency}", endpoint, concurrency, work)
                results[f"job_{concurrency}_actor"] = end_to_end
                results[f"job_{concurrency}_actor_processing"] = processing
    print_table(["figures", "script", "job 1 actor", "(processing)", "job 2 actors", "(processing)"],
                [[results["figures"], results["script"], results["job_1_actor"], results["job_1_actor_processing"],
                  results["job_2_actor"], results["job_2_actor_processing"]]])
    print("figures/s; a job's end-to-end rate includes listing and starting Ray, its processing rate does not")
    write_results("pipeline_vs_script", args.smoke, {"results": results, "goal": "job >= script on one machine; faster with more workers"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
