"""Chains the stages and sets Ray resources: source → decode → classify (+CRM) → encode → sink.

The only module that imports ``ray.data``. Each stage is a plain function or callable class from
its own module; this file decides batch sizes, CPUs, GPUs and actor-pool sizes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from xai_pipeline import codec, decode, sink
from xai_pipeline.classify import FigureClassifier
from xai_pipeline.config import DemoConfig, IndexConfig
from xai_pipeline.decode import DecodeLimits
from xai_pipeline.model import DEFAULT_MODEL_PATH, ModelFileError, read_spec
from xai_pipeline.schema import Status
from xai_pipeline.source import Location, S3Settings, check_output, list_files, make_filesystem, parse_location

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).parent / "samples" / "figures"
DECODE_BATCH_SIZE = 16
# Memory reserved per decode task. Besides bounding memory, it keeps Ray from fusing decode into
# the classifier actors (fusion needs equal remote args), so decode runs in its own CPU tasks,
# in parallel with inference, as many as the CPUs allow.
DECODE_TASK_MEMORY = 512 * 1024 * 1024


@dataclass
class RunSummary:
    """What one run did; printed as one JSON line and stored by ``--summary-json``."""

    run_id: str
    inputs: int
    ok: int
    errors: int
    seconds: float
    figures_per_second: float
    table_version: int
    output: str
    model_name: str
    model_version: str
    mode: str
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def _decode_stage(batch: dict[str, np.ndarray], *, location: Location, size: int, limits: DecodeLimits) -> dict[str, np.ndarray]:
    uris = [location.to_uri(str(p)) for p in batch["path"]]
    return decode.decode_batch(list(batch["bytes"]), uris, [""] * len(uris), size, limits)


def _encode_stage(batch: dict[str, np.ndarray], *, run_id: str) -> pa.Table:
    return codec.encode_batch(batch, run_id=run_id)


def _init_ray(address: str | None) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def run_index(cfg: IndexConfig) -> RunSummary:
    """Run the index job; configuration errors are raised before any Ray work starts."""
    started = time.perf_counter()
    settings = S3Settings(cfg.endpoint_url, cfg.region)
    source = parse_location(cfg.input, "--input")
    target = parse_location(cfg.output, "--output")
    check_output(target)
    try:
        spec = read_spec(cfg.model or DEFAULT_MODEL_PATH)
    except ModelFileError as exc:
        raise ModelFileError(f"--model: {exc}") from exc
    in_fs = make_filesystem(source, settings)
    files = list_files(source, in_fs)
    out_fs = make_filesystem(target, settings)
    options = sink.storage_options(target, settings)
    run_id = cfg.run_id or new_run_id()
    log.info("run %s: %d objects under %s → %s", run_id, len(files), source.uri, target.uri)

    ray = _init_ray(cfg.ray_address)
    from ray.data import ActorPoolStrategy

    num_gpus = cfg.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    ds = ray.data.read_binary_files([path for path, _ in files], include_paths=True, filesystem=in_fs)
    ds = ds.map_batches(
        _decode_stage,
        fn_kwargs={"location": source, "size": spec.input_size, "limits": cfg.limits},
        batch_size=DECODE_BATCH_SIZE,
        batch_format="numpy",
        num_cpus=1,
        memory=DECODE_TASK_MEMORY,
    )
    ds = ds.map_batches(
        FigureClassifier,
        fn_constructor_kwargs={
            "model_path": str(cfg.model) if cfg.model else None,
            "device": "cuda" if num_gpus > 0 else "cpu",
            "crm_score": cfg.crm_score,
            "torch_threads": cfg.torch_threads,
        },
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=cfg.concurrency),
        num_gpus=num_gpus,
        num_cpus=1,
    )
    ds = ds.map_batches(_encode_stage, fn_kwargs={"run_id": run_id}, batch_format="numpy", num_cpus=1)
    sink.write_dataset(ds, target, sink.WriteMode(cfg.mode), options, out_fs)

    version, counts = sink.status_counts(target, options, run_id)
    seconds = time.perf_counter() - started
    ok = counts.get(Status.OK.value, 0)
    rows = sum(counts.values())
    if rows != len(files):
        log.error("run %s wrote %d rows for %d input objects", run_id, rows, len(files))
    summary = RunSummary(
        run_id=run_id,
        inputs=len(files),
        ok=ok,
        errors=rows - ok,
        seconds=round(seconds, 3),
        figures_per_second=round(len(files) / seconds, 3) if seconds > 0 else 0.0,
        table_version=version,
        output=target.uri,
        model_name=spec.name,
        model_version=spec.version,
        mode=cfg.mode,
        errors_by_kind={k: v for k, v in sorted(counts.items()) if k != Status.OK.value},
    )
    if cfg.summary_json:
        path = Path(cfg.summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(summary.to_json() + "\n")
    return summary


def run_demo(cfg: DemoConfig) -> tuple[RunSummary, dict[str, int]]:
    """Index the bundled samples with the bundled model into ``cfg.output`` (overwritten).

    Returns the summary and the number of figures per predicted modality (errors by status).
    """
    index_cfg = IndexConfig(input=str(SAMPLES_DIR), output=cfg.output, batch_size=cfg.batch_size, mode=sink.WriteMode.OVERWRITE.value)
    summary = run_index(index_cfg)
    target = parse_location(cfg.output, "--output")
    rows = sink.read_rows(target, None, columns=["modality", "status"], run_id=summary.run_id).to_pylist()
    modalities: dict[str, int] = {}
    for row in rows:
        key = row["modality"] if row["status"] == Status.OK.value else f"({row['status']})"
        modalities[key] = modalities.get(key, 0) + 1
    return summary, modalities
