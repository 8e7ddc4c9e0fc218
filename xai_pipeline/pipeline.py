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
import pyarrow.compute as pc

from xai_pipeline import codec, decode, schema, sink
from xai_pipeline import source as source_stage
from xai_pipeline.classify import FigureClassifier
from xai_pipeline.config import DemoConfig, IndexConfig
from xai_pipeline.decode import DecodeLimits
from xai_pipeline.model import DEFAULT_MODEL_PATH, ModelFileError, read_spec
from xai_pipeline.schema import Status
from xai_pipeline.source import Location, S3Settings, check_output, make_filesystem, parse_location, preflight_s3

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).parent / "samples" / "figures"
DECODE_BATCH_SIZE = 16
READ_BLOCK_ROWS = 64  # listing rows per input block: the unit of parallel fetch + decode tasks
# Memory reserved per decode task. Besides bounding memory, it keeps Ray from fusing decode into
# the classifier actors (fusion needs equal remote args), so decode runs in its own CPU tasks,
# in parallel with inference, as many as the CPUs allow.
DECODE_TASK_MEMORY = 512 * 1024 * 1024


@dataclass
class RunSummary:
    """What one run did; printed as one JSON line and stored by ``--summary-json``.

    ``inputs``: objects listed. ``skipped``: already committed by this model version, not
    processed again. ``processed``: rows written by this run (``ok`` + ``errors``). ``redone``:
    processed figures that an interrupted earlier run had in flight but never committed.
    """

    run_id: str
    inputs: int
    skipped: int
    processed: int
    ok: int
    errors: int
    redone: int
    commits: int
    seconds: float
    figures_per_second: float
    table_version: int | None
    output: str
    model_name: str
    model_version: str
    mode: str
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def _fetch_stage(batch: dict[str, np.ndarray], *, location: Location, settings: S3Settings, max_bytes: int) -> dict[str, np.ndarray]:
    return source_stage.fetch_batch(batch, location, settings, max_bytes)


def _decode_stage(batch: dict[str, np.ndarray], *, size: int, limits: DecodeLimits) -> dict[str, np.ndarray]:
    return decode.decode_batch(batch, size, limits)


def _encode_stage(batch: dict[str, np.ndarray], *, run_id: str) -> pa.Table:
    return codec.encode_batch(batch, run_id=run_id)


def _init_ray(address: str | None) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return ray


@dataclass(frozen=True)
class _Plan:
    source: Location
    target: Location
    settings: S3Settings
    out_fs: Any
    options: dict[str, str] | None
    spec: Any
    listing: pa.Table  # path, uri, size, etag, figure_id of every listed object


def _plan(cfg: IndexConfig) -> _Plan:
    """Every check that can fail on configuration, before any Ray work."""
    settings = S3Settings(cfg.endpoint_url, cfg.region)
    source = parse_location(cfg.input, "--input")
    target = parse_location(cfg.output, "--output")
    check_output(target)
    try:
        spec = read_spec(cfg.model or DEFAULT_MODEL_PATH)
    except ModelFileError as exc:
        raise ModelFileError(f"--model: {exc}") from exc
    preflight_s3(source, settings, "--input")
    preflight_s3(target, settings, "--output")
    listing = source_stage.list_objects(source, settings)
    ids = pa.array([schema.figure_id(u) for u in listing.column("uri").to_pylist()], pa.string())
    listing = listing.append_column(schema.FIGURE_ID, ids)
    return _Plan(source, target, settings, make_filesystem(target, settings), sink.storage_options(target, settings), spec, listing)


def _write_chunk(ray: Any, plan: _Plan, cfg: IndexConfig, part: pa.Table, run_id: str, mode: sink.WriteMode, num_gpus: float) -> None:
    """source → decode → classify (+CRM) → encode → sink for one chunk: one Delta commit."""
    from ray.data import ActorPoolStrategy

    blocks = [part.slice(i, READ_BLOCK_ROWS) for i in range(0, part.num_rows, READ_BLOCK_ROWS)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        _fetch_stage,
        fn_kwargs={"location": plan.source, "settings": plan.settings, "max_bytes": cfg.max_bytes},
        batch_size=DECODE_BATCH_SIZE,
        batch_format="numpy",
        num_cpus=1,
        memory=DECODE_TASK_MEMORY,
    )
    ds = ds.map_batches(
        _decode_stage,
        fn_kwargs={"size": plan.spec.input_size, "limits": cfg.limits},
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
        compute=ActorPoolStrategy(size=min(cfg.concurrency, max(1, part.num_rows // cfg.batch_size))),
        num_gpus=num_gpus,
        num_cpus=1,
    )
    ds = ds.map_batches(_encode_stage, fn_kwargs={"run_id": run_id}, batch_format="numpy", num_cpus=1)
    sink.write_dataset(ds, plan.target, mode, plan.options, plan.out_fs)


def run_index(cfg: IndexConfig) -> RunSummary:
    """Run the index job; configuration errors are raised before any Ray work starts.

    Figures already committed by the same model name and version are skipped, so rerunning a
    command (after a crash, say) finishes the work without duplicates. The rest is written in
    chunks of ``--commit-every`` figures, each one atomic Delta commit.
    """
    started = time.perf_counter()
    plan = _plan(cfg)
    run_id = cfg.run_id or new_run_id()
    overwrite = cfg.mode == sink.WriteMode.OVERWRITE.value
    listing = plan.listing
    if not overwrite:
        done = sink.committed_ids(plan.target, plan.options, plan.spec.name, plan.spec.version)
        listing = listing.filter(pc.invert(pc.is_in(listing.column(schema.FIGURE_ID), value_set=done)))
    leftovers = sink.read_inflight(plan.target, plan.out_fs)
    interrupted = pa.array(sorted({i for ids in leftovers.values() for i in ids}), pa.string())
    redone = int(pc.sum(pc.is_in(listing.column(schema.FIGURE_ID), value_set=interrupted)).as_py() or 0)
    log.info("run %s: %d objects under %s, %d to process → %s", run_id, plan.listing.num_rows, plan.source.uri, listing.num_rows, plan.target.uri)

    commits = 0
    if listing.num_rows:
        ray = _init_ray(cfg.ray_address)
        num_gpus = cfg.num_gpus
        if num_gpus is None:
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        for chunk, start in enumerate(range(0, listing.num_rows, cfg.commit_every)):
            part = listing.slice(start, cfg.commit_every)
            marker = sink.mark_inflight(plan.target, plan.out_fs, run_id, chunk, part.column(schema.FIGURE_ID).to_pylist())
            mode = sink.WriteMode.OVERWRITE if overwrite and chunk == 0 else sink.WriteMode.APPEND
            _write_chunk(ray, plan, cfg, part, run_id, mode, num_gpus)
            sink.clear_inflight(plan.target, plan.out_fs, [marker])
            commits += 1
    sink.clear_inflight(plan.target, plan.out_fs, list(leftovers))

    version, counts = sink.status_counts(plan.target, plan.options, run_id)
    seconds = time.perf_counter() - started
    ok = counts.get(Status.OK.value, 0)
    processed = sum(counts.values())
    if processed != listing.num_rows:
        log.error("run %s wrote %d rows for %d objects to process", run_id, processed, listing.num_rows)
    summary = RunSummary(
        run_id=run_id,
        inputs=plan.listing.num_rows,
        skipped=plan.listing.num_rows - listing.num_rows,
        processed=processed,
        ok=ok,
        errors=processed - ok,
        redone=redone,
        commits=commits,
        seconds=round(seconds, 3),
        figures_per_second=round(processed / seconds, 3) if seconds > 0 else 0.0,
        table_version=version,
        output=plan.target.uri,
        model_name=plan.spec.name,
        model_version=plan.spec.version,
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
    rows = sink.read_rows(target, None, columns=[schema.MODALITY, schema.STATUS], run_id=summary.run_id).to_pylist()
    modalities: dict[str, int] = {}
    for row in rows:
        key = row[schema.MODALITY] if row[schema.STATUS] == Status.OK.value else f"({row[schema.STATUS]})"
        modalities[key] = modalities.get(key, 0) + 1
    return summary, modalities
