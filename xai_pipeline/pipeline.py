"""Chains the stages and sets Ray resources: source → decode → classify (+CRM) → encode → sink.

The only module that imports ``ray.data``. Each stage is a plain function or callable class from
its own module; this file decides batch sizes, CPUs, GPUs and actor-pool sizes, and the order of
listing, planning, processing and committing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from xai_pipeline import codec, decode, plan, records, schema, sink
from xai_pipeline import source as source_stage
from xai_pipeline.classify import FigureClassifier
from xai_pipeline.config import DemoConfig, IndexConfig, JobConfig, ReindexConfig
from xai_pipeline.decode import DecodeLimits
from xai_pipeline.listing import list_objects, read_manifest
from xai_pipeline.model import DEFAULT_MODEL_PATH, ModelFileError, ModelSpec, read_spec
from xai_pipeline.schema import Status
from xai_pipeline.source import Location, S3Settings, check_output, make_filesystem, parse_location, preflight_s3
from xai_pipeline.summary import RunSummary, new_run_id

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).parent / "samples" / "figures"
DECODE_BATCH_SIZE = 16
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 256, 32  # default --batch-size
READ_BLOCK_ROWS = 64  # least listing rows per input block (the unit of fetch + decode tasks); at least a batch
# Memory reserved per fetch/decode task. Besides bounding memory, it keeps Ray from fusing decode
# into the classifier actors (fusion needs equal remote args), so decode runs in its own CPU
# tasks, in parallel with inference, as many as the CPUs allow.
DECODE_TASK_MEMORY = 512 * 1024 * 1024


def _fetch_stage(batch: dict[str, np.ndarray], *, location: Location, settings: S3Settings, max_bytes: int) -> dict[str, np.ndarray]:
    return source_stage.fetch_batch(batch, location, settings, max_bytes)


def _decode_stage(batch: dict[str, np.ndarray], *, size: int, limits: DecodeLimits, defer_jpeg: bool) -> dict[str, np.ndarray]:
    return decode.decode_batch(batch, size, limits, defer_jpeg)


def _encode_stage(batch: dict[str, np.ndarray], *, run_id: str, roi_threshold: float) -> pa.Table:
    return codec.encode_batch(batch, run_id=run_id, roi_threshold=roi_threshold)


@dataclass(frozen=True)
class _Job:
    """A checked configuration: locations, model, filesystems, and the collection's listing."""

    cfg: JobConfig
    source: Location
    target: Location
    settings: S3Settings
    out_fs: Any
    options: dict[str, str] | None
    spec: ModelSpec
    listing: pa.Table  # path, uri, size, etag, figure_id


def _prepare(cfg: JobConfig, manifest: str | None = None) -> _Job:
    """Every check that can fail on configuration, then the listing; no Ray work yet."""
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
    listing = read_manifest(manifest, source, settings) if manifest else list_objects(source, settings)
    return _Job(cfg, source, target, settings, make_filesystem(target, settings), sink.storage_options(target, settings), spec, listing)


def _init_ray(address: str | None) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def _actor_pool(concurrency: int | None, batches: int, num_gpus: float, resources: dict[str, float], torch_threads: int = 1) -> tuple[int, float]:
    """Classifier actors and the CPUs each reserves.

    A fixed pool (no slow autoscaling ramp), no larger than the work. ``concurrency=None``: one
    actor per GPU when actors take GPUs, else one per ``torch_threads`` CPUs (on 2 cores, two
    one-thread actors outrun one two-thread actor: ``bench/pipeline_vs_script.py``). An explicit
    count is not capped by the GPUs up now: an autoscaling cluster adds GPU nodes for the pending
    actors, and on a fixed cluster they stay pending while the others work.

    Actors must leave at least one CPU free, or fetch and decode tasks never get scheduled and
    the job hangs (seen with two actors on a 2-CPU machine): past that, each actor reserves less
    than a CPU (it still runs its torch threads).
    """
    cpus = resources.get("CPU", 1.0)
    if concurrency is None:
        if num_gpus > 0:
            concurrency = max(1, int(resources.get("GPU", 0) // num_gpus))
        else:
            concurrency = max(1, int(cpus // torch_threads))
    elif num_gpus > 0 and concurrency * num_gpus > resources.get("GPU", 0):
        log.warning("%d classifier actors × %g GPUs, %g GPUs up now: the rest start when the cluster scales up",
                    concurrency, num_gpus, resources.get("GPU", 0))
    pool = max(1, min(concurrency, batches))
    actor_cpus = 1.0
    if pool * actor_cpus > cpus - 1:
        actor_cpus = max(0.0, (cpus - 1) / pool)
        log.info("%d classifier actors on %g CPUs: each reserves %.2f CPU so that fetch and decode can run", pool, cpus, actor_cpus)
    return pool, actor_cpus


def _rows(job: _Job, part: pa.Table, run_id: str) -> Any:
    """The Ray dataset of table rows for listing rows ``part``: fetch → decode → classify → encode."""
    ray = _init_ray(job.cfg.ray_address)
    from ray.data import ActorPoolStrategy

    cfg = job.cfg
    resources = ray.cluster_resources()
    num_gpus = cfg.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    batch_size = cfg.batch_size or (GPU_BATCH_SIZE if num_gpus > 0 else CPU_BATCH_SIZE)
    pool, actor_cpus = _actor_pool(cfg.concurrency, max(1, part.num_rows // batch_size), num_gpus, resources, cfg.torch_threads)
    rows = max(READ_BLOCK_ROWS, batch_size)  # fewer, fuller blocks: less per-task state in the driver
    blocks = [part.slice(i, rows) for i in range(0, part.num_rows, rows)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(_fetch_stage, fn_kwargs={"location": job.source, "settings": job.settings, "max_bytes": cfg.max_bytes},
                        batch_size=DECODE_BATCH_SIZE, batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
    ds = ds.map_batches(_decode_stage, fn_kwargs={"size": job.spec.input_size, "limits": cfg.limits, "defer_jpeg": cfg.jpeg_decoder == "classifier"},
                        batch_size=DECODE_BATCH_SIZE, batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
    ds = ds.map_batches(
        FigureClassifier,
        fn_constructor_kwargs={"model_path": str(cfg.model) if cfg.model else None, "device": "cuda" if num_gpus > 0 else "cpu",
                               "crm_score": cfg.crm_score, "torch_threads": cfg.torch_threads, "precision": cfg.precision,
                               "compile_model": cfg.compile, "limits": cfg.limits, "memory_share": num_gpus},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=pool),
        num_gpus=num_gpus,
        num_cpus=actor_cpus,
    )
    return ds.map_batches(_encode_stage, fn_kwargs={"run_id": run_id, "roi_threshold": cfg.roi_threshold}, batch_format="numpy", num_cpus=1)


def _finish(job: _Job, run_id: str, kind: str, started: float, started_at: str, **counts: Any) -> RunSummary:
    """Count this run's rows in the table, build the summary, store it beside the table."""
    version, statuses = sink.status_counts(job.target, job.options, run_id)
    seconds = time.perf_counter() - started
    processed = sum(statuses.values())
    ok = statuses.get(Status.OK.value, 0)
    process_seconds = counts.get("durations", {}).get("process", 0.0)
    summary = RunSummary(
        run_id=run_id, kind=kind, inputs=job.listing.num_rows, processed=processed, ok=ok, errors=processed - ok,
        seconds=round(seconds, 3), figures_per_second=round(processed / seconds, 3) if seconds > 0 else 0.0,
        process_figures_per_second=round(processed / process_seconds, 3) if process_seconds > 0 else 0.0,
        table_version=version, output=job.target.uri, model_name=job.spec.name, model_version=job.spec.version,
        started_at=started_at, errors_by_kind={k: v for k, v in sorted(statuses.items()) if k != Status.OK.value}, **counts,
    )
    records.write_run(job.target, job.out_fs, summary.to_dict())
    if job.cfg.summary_json:
        path = Path(job.cfg.summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(summary.to_json() + "\n")
    return summary


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_index(cfg: IndexConfig) -> RunSummary:
    """Index a collection. Figures this model name and version already committed are skipped, so
    rerunning a command (after a crash, say) finishes the work without duplicates. The rest is
    written in chunks of ``--commit-every`` figures, each one atomic Delta commit."""
    started, started_at = time.perf_counter(), _now()
    job = _prepare(cfg)
    run_id = cfg.run_id or new_run_id()
    overwrite = cfg.mode == sink.WriteMode.OVERWRITE.value
    todo = job.listing
    if not overwrite:
        todo = plan.not_in(todo, sink.committed_ids(job.target, job.options, job.spec.name, job.spec.version))
    leftovers = records.read_inflight(job.target, job.out_fs)
    redone = plan.count_in(todo, pa.array(sorted({i for ids in leftovers.values() for i in ids}), pa.string()))
    log.info("run %s: %d objects under %s, %d to process → %s", run_id, job.listing.num_rows, job.source.uri, todo.num_rows, job.target.uri)
    timings = {"prepare": time.perf_counter() - started, "ray_start": 0.0, "process": 0.0}
    if todo.num_rows:
        mark = time.perf_counter()
        _init_ray(cfg.ray_address)
        timings["ray_start"] = time.perf_counter() - mark
    commits = 0
    for chunk, start in enumerate(range(0, todo.num_rows, cfg.commit_every)):
        mark = time.perf_counter()
        part = todo.slice(start, cfg.commit_every)
        marker = records.mark_inflight(job.target, job.out_fs, run_id, chunk, part.column(schema.FIGURE_ID).to_pylist())
        mode = sink.WriteMode.OVERWRITE if overwrite and chunk == 0 else sink.WriteMode.APPEND
        sink.write_dataset(_rows(job, part, run_id), job.target, mode, job.options, job.out_fs)
        records.clear_inflight(job.target, job.out_fs, [marker])
        commits += 1
        timings["process"] += time.perf_counter() - mark
    records.clear_inflight(job.target, job.out_fs, list(leftovers))
    summary = _finish(job, run_id, "index", started, started_at, skipped=job.listing.num_rows - todo.num_rows,
                      redone=redone, commits=commits, mode=cfg.mode, durations={k: round(v, 3) for k, v in timings.items()})
    if summary.processed != todo.num_rows:
        log.error("run %s wrote %d rows for %d objects to process", run_id, summary.processed, todo.num_rows)
    return summary


def run_reindex(cfg: ReindexConfig) -> RunSummary:
    """Process new and changed figures and mark deleted ones, in one atomic Delta merge.

    Rows are first written as Parquet to the run's staging folder beside the table; the merge
    then upserts them by figure_id and sets ``deleted_at`` on figures gone from the collection.
    Readers see the previous version until the merge commits. A new model version reprocesses
    everything.
    """
    started, started_at = time.perf_counter(), _now()
    job = _prepare(cfg, cfg.manifest)
    run_id = cfg.run_id or new_run_id()
    state = sink.table_state(job.target, job.options, plan.STATE_COLUMNS)
    todo = plan.reindex_plan(job.listing, state, job.spec.name, job.spec.version, job.source.uri)
    timings = {"plan": round(time.perf_counter() - started, 3)}
    log.info("reindex %s: %d listed, %d new, %d changed, %d unchanged, %d deleted", run_id, job.listing.num_rows,
             todo.new, todo.changed, todo.skipped, len(todo.deleted_ids))
    staging = records.staging_location(job.target, run_id)
    if todo.todo.num_rows:
        sink.write_staging(_rows(job, todo.todo, run_id), staging, job.out_fs)
    timings["process"] = round(time.perf_counter() - started - timings["plan"], 3)
    upserts = sink.read_staging(staging, job.out_fs)
    deleted_at = dt.datetime.now(dt.timezone.utc)
    merged = sink.merge_run(job.target, job.options, upserts, todo.deleted_ids, deleted_at, run_id)
    records.remove_staging(job.target, job.out_fs, run_id)
    timings["commit"] = round(time.perf_counter() - started - timings["plan"] - timings["process"], 3)
    return _finish(job, run_id, "reindex", started, started_at, skipped=todo.skipped,
                   new=todo.new, changed=todo.changed, deleted=len(todo.deleted_ids), commits=int(merged is not None), durations=timings)


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
