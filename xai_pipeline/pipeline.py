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
import pyarrow.compute as pc

from xai_pipeline import codec, decode, plan, records, schema, sink
from xai_pipeline import source as source_stage
from xai_pipeline.classify import FigureClassifier
from xai_pipeline.config import DemoConfig, IndexConfig, JobConfig, ReindexConfig
from xai_pipeline.decode import DecodeLimits
from xai_pipeline.listing import list_objects, read_manifest
from xai_pipeline.model import DEFAULT_MODEL_PATH, ModelFileError, ModelSpec, read_spec
from xai_pipeline.schema import Status
from xai_pipeline.source import Location, ReadPolicy, S3Settings, check_output, make_filesystem, parse_location, preflight_s3
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
# Task-level failures (a worker dying, an error outside any one figure's handling) are retried
# this many times; a block that still fails is dropped (its figures have no row: the summary
# counts them as missing, the exit code is 3, and the next run processes them). Rows reach the
# table only through the commit at the end of a chunk, so a retried task duplicates nothing.
TASK_RETRIES = 3


def _fetch_stage(batch: dict[str, np.ndarray], *, location: Location, settings: S3Settings, max_bytes: int,
                 policy: ReadPolicy) -> dict[str, np.ndarray]:
    return source_stage.fetch_batch(batch, location, settings, max_bytes, policy)


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
    context = ray.data.DataContext.get_current()
    context.retried_map_errors = True  # an error outside any one figure's handling: retry the task ...
    context.max_map_retries = TASK_RETRIES
    context.max_errored_blocks = -1  # ... and drop the block, not the run, if it persists
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
    ds = ds.map_batches(_fetch_stage, fn_kwargs={"location": job.source, "settings": job.settings, "max_bytes": cfg.max_bytes,
                                                 "policy": cfg.read_policy},
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
    )  # Ray Data restarts a dead actor (device fault, OOM kill) and retries its batch
    return ds.map_batches(_encode_stage, fn_kwargs={"run_id": run_id, "roi_threshold": cfg.roi_threshold}, batch_format="numpy", num_cpus=1)


def _finish(job: _Job, run_id: str, kind: str, started: float, started_at: str, to_process: int, **counts: Any) -> RunSummary:
    """Count this run's rows in the table, build the summary, store it beside the table.

    ``to_process``: listed objects this run had to give a row; ``missing`` is how many of them
    have none (a block lost after its retries), which makes the exit code 3."""
    version, statuses = sink.status_counts(job.target, job.options, run_id) if sink.table_exists(job.target, job.options) else (None, {})
    seconds = time.perf_counter() - started
    processed = sum(statuses.values())
    ok = statuses.get(Status.OK.value, 0)
    process_seconds = counts.get("durations", {}).get("process", 0.0)
    missing = max(0, to_process - processed)
    summary = RunSummary(
        run_id=run_id, kind=kind, inputs=job.listing.num_rows, processed=processed, ok=ok, errors=processed - ok,
        seconds=round(seconds, 3), figures_per_second=round(processed / seconds, 3) if seconds > 0 else 0.0,
        process_figures_per_second=round(processed / process_seconds, 3) if process_seconds > 0 else 0.0,
        table_version=version, output=job.target.uri, model_name=job.spec.name, model_version=job.spec.version,
        started_at=started_at, errors_by_kind={k: v for k, v in sorted(statuses.items()) if k != Status.OK.value},
        missing=missing, state=records.RunState.INCOMPLETE if missing else records.RunState.FINISHED, **counts,
    )
    records.write_run(job.target, job.out_fs, summary.to_dict())
    if missing:
        log.error("run %s: %d of %d objects to process have no row; run the same command again to process them", run_id, missing, to_process)
    if job.cfg.summary_json:
        path = Path(job.cfg.summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(summary.to_json() + "\n")
    return summary


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _row_settings(job: _Job) -> plan.RowSettings:
    return plan.RowSettings(job.spec.name, job.spec.version, job.cfg.crm_score, job.cfg.roi_threshold)


def _merge_chunk(job: _Job, part: pa.Table, run_id: str, deleted_ids: pa.Array, extra: pa.Table | None = None) -> bool:
    """Process listing rows ``part`` into the run's staging folder, then merge them (with
    ``extra`` rows, and ``deleted_ids`` marked) in one commit. True when something was committed."""
    staging = records.staging_location(job.target, run_id)
    if part.num_rows:
        sink.write_staging(_rows(job, part, run_id), staging, job.out_fs)
    upserts = sink.read_staging(staging, job.out_fs)
    if extra is not None and extra.num_rows:
        upserts = pa.concat_tables([upserts, sink.conform(extra)])
    upserts = plan.first_per_key(upserts, schema.FIGURE_ID, [(schema.PROCESSED_AT, "descending")])
    merged = sink.merge_run(job.target, job.options, upserts, deleted_ids, dt.datetime.now(dt.timezone.utc), run_id)
    records.remove_staging(job.target, job.out_fs, run_id)
    return merged is not None


def run_index(cfg: IndexConfig) -> RunSummary:
    """Index a collection. Figures whose one row is current (this model name and version, these
    settings, not of a status to retry) are skipped, so rerunning a command (after a crash, say)
    finishes the work without duplicates. Figures with no row are appended in chunks of
    ``--commit-every``, each one atomic Delta commit; figures with stale rows (another model
    version or settings, several rows) are merged in chunks, each new row replacing all the
    figure's old ones, so the table keeps one row per figure_id."""
    started, started_at = time.perf_counter(), _now()
    job = _prepare(cfg)
    run_id = cfg.run_id or new_run_id()
    records.start_run(job.target, job.out_fs, run_id, "index", started_at)
    overwrite = cfg.mode == sink.WriteMode.OVERWRITE.value
    if overwrite:
        todo = plan.RunPlan(job.listing, job.listing.slice(0, 0), 0, pa.array([], pa.string()))
    else:
        todo = plan.index_plan(job.listing, sink.table_state(job.target, job.options, plan.STATE_COLUMNS), _row_settings(job))
    leftovers = records.read_inflight(job.target, job.out_fs)
    redone = plan.count_in(todo.todo, pa.array(sorted({i for ids in leftovers.values() for i in ids}), pa.string()))
    log.info("run %s: %d objects under %s, %d new, %d to replace → %s", run_id, job.listing.num_rows, job.source.uri,
             todo.new, todo.changed, job.target.uri)
    timings = {"prepare": time.perf_counter() - started, "ray_start": 0.0, "process": 0.0}
    if todo.todo.num_rows:
        mark = time.perf_counter()
        _init_ray(cfg.ray_address)
        timings["ray_start"] = time.perf_counter() - mark
        if not overwrite:
            sink.upgrade_schema(job.target, job.options)
    commits = 0
    chunks = [(todo.fresh, start) for start in range(0, todo.new, cfg.commit_every)]
    chunks += [(todo.replace, start) for start in range(0, todo.changed, cfg.commit_every)]
    for chunk, (rows, start) in enumerate(chunks):
        mark = time.perf_counter()
        part = rows.slice(start, cfg.commit_every)
        marker = records.mark_inflight(job.target, job.out_fs, run_id, chunk, part.column(schema.FIGURE_ID).to_pylist())
        if rows is todo.fresh:
            mode = sink.WriteMode.OVERWRITE if overwrite and chunk == 0 else sink.WriteMode.APPEND
            sink.write_dataset(_rows(job, part, run_id), job.target, mode, job.options, job.out_fs)
            commits += 1
        else:
            commits += int(_merge_chunk(job, part, run_id, pa.array([], pa.string())))
        records.clear_inflight(job.target, job.out_fs, [marker])
        timings["process"] += time.perf_counter() - mark
    records.clear_inflight(job.target, job.out_fs, list(leftovers))
    interrupted = sorted({name.rsplit("-", 1)[0] for name in leftovers})
    for earlier_run in interrupted:
        records.remove_staging(job.target, job.out_fs, earlier_run)
    records.mark_interrupted(job.target, job.out_fs, interrupted, run_id)
    return _finish(job, run_id, "index", started, started_at, todo.todo.num_rows, skipped=todo.skipped, new=todo.new,
                   changed=todo.changed, redone=redone, commits=commits, mode=cfg.mode,
                   durations={k: round(v, 3) for k, v in timings.items()})


def run_reindex(cfg: ReindexConfig) -> RunSummary:
    """Process new and changed figures and mark deleted ones, in one atomic Delta merge.

    Rows are first written as Parquet to the run's staging folder beside the table; the merge
    then replaces the figures' rows and sets ``deleted_at`` on figures gone from the collection.
    Readers see the previous version until the merge commits. A new model version or other
    settings reprocess everything.

    Resume: staging folders left by interrupted runs are read first; the rows that can be trusted
    (:func:`plan.trusted_staged`) are committed instead of processed again, and the folders are
    removed once this run's merge has committed; their run records become ``interrupted``.
    """
    started, started_at = time.perf_counter(), _now()
    job = _prepare(cfg, cfg.manifest)
    run_id = cfg.run_id or new_run_id()
    records.start_run(job.target, job.out_fs, run_id, "reindex", started_at)
    state = sink.table_state(job.target, job.options, plan.STATE_COLUMNS)
    todo = plan.reindex_plan(job.listing, state, job.spec.name, job.spec.version, job.source.uri, cfg.crm_score, cfg.roi_threshold)
    earlier = [r for r in records.staged_runs(job.target, job.out_fs) if r != run_id]
    staged = [sink.read_staging(records.staging_location(job.target, r), job.out_fs) for r in earlier]
    reused = plan.trusted_staged(pa.concat_tables([sink.conform(t) for t in staged]) if staged else sink.conform(schema.TABLE_SCHEMA.empty_table()),
                                 todo.todo, _row_settings(job))
    reused = reused.set_column(reused.schema.get_field_index(schema.RUN_ID), schema.RUN_ID, pa.array([run_id] * reused.num_rows, pa.string()))
    rest = todo.todo.filter(pc.invert(pc.is_in(todo.todo.column(schema.FIGURE_ID), value_set=reused.column(schema.FIGURE_ID))))
    timings = {"plan": round(time.perf_counter() - started, 3)}
    log.info("reindex %s: %d listed, %d new, %d changed, %d unchanged, %d deleted, %d reused from interrupted runs %s", run_id,
             job.listing.num_rows, todo.new, todo.changed, todo.skipped, len(todo.deleted_ids), reused.num_rows, earlier)
    committed = _merge_chunk(job, rest, run_id, todo.deleted_ids, reused)
    for earlier_run in earlier:
        records.remove_staging(job.target, job.out_fs, earlier_run)
    records.mark_interrupted(job.target, job.out_fs, earlier, run_id)
    timings["process"] = round(time.perf_counter() - started - timings["plan"], 3)
    return _finish(job, run_id, "reindex", started, started_at, todo.todo.num_rows, skipped=todo.skipped, new=todo.new,
                   changed=todo.changed, deleted=len(todo.deleted_ids), reused=reused.num_rows, commits=int(committed),
                   durations=timings)


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
