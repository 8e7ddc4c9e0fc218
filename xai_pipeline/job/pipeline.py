"""Chains the stages and sets Ray resources: source → decode → classify (+CRM) → encode → sink.

The only module that imports ``ray.data``. Each stage is a plain function or callable class from
its own module; this file decides batch sizes, CPUs, GPUs and actor-pool sizes, and the order of
planning, processing and committing.

A run is one streaming pipeline with one classifier actor pool: figures flow from the plan through
fetch, decode, classify and encode into the write stage, whose workers write Parquet files; the
driver receives one small record per file and commits the files to the Delta log every
``--commit-every`` figures or ``--commit-seconds`` (:mod:`xai_pipeline.job.writer`), without draining
the pipeline. Figures that already have (stale) rows are written to the run's staging folder and
merged at the end, together with the deletions of a reindex, in one merge whose source is
streamed from the staged files. The table's lease (:mod:`xai_pipeline.store.lease`) is held throughout.
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

from xai_pipeline import schema
from xai_pipeline.config import DemoConfig, IndexConfig, JobConfig, ReindexConfig
from xai_pipeline.job import buckets as buckets_stage
from xai_pipeline.job import codec, decode, listing, sizing, table_tasks, writer
from xai_pipeline.job import fetch as fetch_stage
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.job.lifecycle import Job, finish, now, prepare
from xai_pipeline.policies import DecodeLimits, ReadPolicy, WriteMode
from xai_pipeline.schema import Status
from xai_pipeline.store import records, sink
from xai_pipeline.store.lease import TableLease
from xai_pipeline.store.source import Location, S3Settings, SourceError, make_filesystem, parse_location
from xai_pipeline.store.summary import RunSummary, new_run_id

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).parents[1] / "samples" / "figures"
DECODE_BATCH_SIZE = 16
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 256, 32  # default --batch-size
READ_BLOCK_ROWS = 64  # least listing rows per input block (the unit of fetch + decode tasks); at least a batch
FILE_ROWS = 2048  # rows per Parquet file the write stage writes (at most --commit-every; fewer at the end of a run)
# Write tasks reserve less than the encode tasks: unequal resources keep Ray from fusing encode into
# the write stage, whose batches gather FILE_ROWS rows; fused, one failing encode would lose them all.
WRITE_TASK_CPUS = 0.5
# Memory reserved per fetch/decode task. Besides bounding memory, it keeps Ray from fusing decode
# into the classifier actors (fusion needs equal remote args), so decode runs in its own CPU
# tasks, in parallel with inference, as many as the CPUs allow.
DECODE_TASK_MEMORY = 512 * 1024 * 1024
# Task-level failures (a worker dying, an error outside any one figure's handling) are retried
# this many times; a block that still fails is dropped (its figures have no row: the summary
# counts them as missing, the exit code is 3, and the next run processes them). Rows reach the
# table only through a commit of the files a task returned, so a retried task duplicates nothing.
TASK_RETRIES = 3


def _fetch_stage(batch: dict[str, np.ndarray], *, location: Location, settings: S3Settings, max_bytes: int,
                 policy: ReadPolicy) -> dict[str, np.ndarray]:
    return fetch_stage.fetch_batch(batch, location, settings, max_bytes, policy)


def _decode_stage(batch: dict[str, np.ndarray], *, size: int, limits: DecodeLimits, defer_jpeg: bool, panels: bool) -> dict[str, np.ndarray]:
    return decode.decode_batch(batch, size, limits, defer_jpeg, panels)


def _encode_stage(batch: dict[str, np.ndarray], *, run_id: str, roi_threshold: float) -> pa.Table:
    rows = codec.encode_batch(batch, run_id=run_id, roi_threshold=roi_threshold)
    for passed in (schema.ROUTE, schema.ACTOR):  # for the write stage: where each row goes, who made it
        if passed in batch:
            rows = rows.append_column(passed, pa.array([str(v) for v in batch[passed]], pa.string()))
    return rows


def _write_stage(rows: pa.Table, *, table: Location, staging: Location, settings: S3Settings, run_id: str) -> pa.Table:
    return writer.write_files(rows, table=table, staging=staging, settings=settings, run_id=run_id)


def _init_ray(address: str | None) -> Any:
    """Join or start Ray. Quiet unless this package logs at INFO (``--verbose``): Ray's and Ray
    Data's INFO lines stay in Ray's log folder; the console shows warnings and Ray Data's progress
    bars (on a terminal)."""
    import ray
    import ray.data

    verbose = log.isEnabledFor(logging.INFO)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.INFO if verbose else logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.retried_map_errors = True  # an error outside any one figure's handling: retry the task
    context.max_map_retries = TASK_RETRIES
    if not verbose:
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler):  # the console, not ray-data.log
                handler.setLevel(logging.WARNING)
    return ray


def _rows(job: Job, todo: Any, count: int, run_id: str) -> Any:
    """The Ray dataset of table rows for the dataset of listing rows ``todo`` (``count`` rows):
    fetch → decode → classify → encode."""
    ray = _init_ray(job.cfg.ray_address)
    from ray.data import ActorPoolStrategy

    cfg = job.cfg
    resources = ray.cluster_resources()
    num_gpus = cfg.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    batch_size = cfg.batch_size or (GPU_BATCH_SIZE if num_gpus > 0 else CPU_BATCH_SIZE)
    pool, actor_cpus = sizing.actor_pool(cfg.concurrency, max(1, count // batch_size), num_gpus, resources, cfg.torch_threads)
    rows = max(READ_BLOCK_ROWS, batch_size)  # blocks of a batch or more: the unit of fetch + decode tasks
    ds = todo.repartition(target_num_rows_per_block=rows)
    ds = ds.map_batches(_fetch_stage, fn_kwargs={"location": job.source, "settings": job.settings, "max_bytes": cfg.max_bytes,
                                                 "policy": cfg.read_policy},
                        batch_size=DECODE_BATCH_SIZE, batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
    ds = ds.map_batches(_decode_stage, fn_kwargs={"size": job.spec.input_size, "limits": cfg.limits, "defer_jpeg": cfg.jpeg_decoder == "classifier",
                                                  "panels": cfg.panels},
                        batch_size=DECODE_BATCH_SIZE, batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
    ds = ds.map_batches(
        FigureClassifier,
        fn_constructor_kwargs={"model_path": str(cfg.model) if cfg.model else None, "device": "cuda" if num_gpus > 0 else "cpu",
                               "crm_score": cfg.crm_score, "torch_threads": cfg.torch_threads, "precision": cfg.precision,
                               "compile_model": cfg.compile, "limits": cfg.limits, "memory_share": num_gpus,
                               "exit_on_device_fault": True},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=pool),
        num_gpus=num_gpus,
        num_cpus=actor_cpus,
    )  # Ray Data restarts a dead actor (device fault, OOM kill) and retries its batch
    return ds.map_batches(_encode_stage, fn_kwargs={"run_id": run_id, "roi_threshold": cfg.roi_threshold}, batch_format="numpy", num_cpus=1)


def _stream(job: Job, todo_files: list[str], fs: Any, count: int, run_id: str, committer: writer.Committer) -> None:
    """Run the pipeline over the plan's files of listing rows with :data:`schema.ROUTE` (``count``
    rows), committing the appended files as they come and collecting the staged ones."""
    import ray

    staging = records.staging_location(job.target, run_id)
    context = ray.data.DataContext.get_current()
    # Here, and only here, a block that fails after its retries is dropped, not the run: its
    # figures are counted missing (exit code 3) and the next run processes them. The plan's
    # stages keep the default (an error stops the run): a lost listing page would look like
    # figures gone from the collection.
    context.max_errored_blocks = -1  # before the dataset is made: a dataset keeps a copy of the context
    try:
        todo = ray.data.read_parquet(todo_files, filesystem=fs)
        ds = _rows(job, todo, count, run_id).map_batches(
            _write_stage, fn_kwargs={"table": job.target, "staging": staging, "settings": job.settings, "run_id": run_id},
            batch_size=min(FILE_ROWS, job.cfg.commit_every), batch_format="pyarrow", num_cpus=WRITE_TASK_CPUS)
        for files in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            committer.add(files)
    finally:
        context.max_errored_blocks = 0
    committer.commit()


def _sum(ds: Any, columns: tuple[str, ...]) -> dict[str, int]:
    """Add up the small count rows a stage returns (one per task or bucket: never per figure)."""
    totals = dict.fromkeys(columns, 0)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for name in columns:
            totals[name] += int(pc.sum(batch.column(name)).as_py() or 0)
    return totals


@dataclass(frozen=True)
class _Planned:
    counts: dict[str, int]  # listed, new, changed, skipped, deleted, reused
    scratch: Location


def _plan(job: Job, run_id: str, manifest: str | None, reindex: bool, overwrite: bool, earlier_staging: list[str]) -> _Planned:
    """List the collection and compare it with the table, in Ray tasks (:mod:`xai_pipeline.job.buckets`):
    the driver holds unit and file names and counts, never rows."""
    ray = _init_ray(job.cfg.ray_address)
    scratch = records.plan_location(job.target, run_id)
    data_files, table_rows = sink.data_files(job.target, job.options)
    n = buckets_stage.bucket_count(table_rows)
    units = pa.Table.from_pylist(listing.units(job.source, job.settings, manifest), schema=buckets_stage.UNIT_SCHEMA)
    common = {"settings": job.settings, "scratch": scratch, "buckets": n}
    listed = ray.data.from_arrow(units).map_batches(buckets_stage.expand_units, fn_kwargs={"location": job.source, "settings": job.settings},
                                                   batch_size=1, batch_format="pyarrow")
    listed = listed.repartition(target_num_rows_per_block=1).map_batches(
        buckets_stage.list_units, fn_kwargs={"location": job.source, **common}, batch_size=1, batch_format="pyarrow")
    if _sum(listed, ("rows",))["rows"] == 0:
        raise SourceError(f"{'--manifest' if manifest else '--input'} {job.source.uri}: no objects found")
    sides = [] if overwrite else [(buckets_stage.STATE, data_files, False)]
    sides.append((buckets_stage.STAGED, [f for r in earlier_staging for f in sink.staged_paths(records.staging_location(job.target, r), job.out_fs)], True))
    for side, paths, staged in sides:
        if paths:
            files = ray.data.from_items([{"path": p} for p in paths]).repartition(target_num_rows_per_block=1)
            _sum(files.map_batches(buckets_stage.bucket_files, fn_kwargs={"side": side, "staged": staged, **common}, batch_size=1, batch_format="pyarrow"), ("rows",))
    planned = ray.data.from_items([{"bucket": i} for i in range(n)]).repartition(target_num_rows_per_block=max(1, n // 64))
    counts = _sum(planned.map_batches(buckets_stage.plan_buckets, fn_kwargs={
        "scratch": scratch, "settings": job.settings, "row_settings": job.row_settings, "compare_content": reindex,
        "input_uri": job.source.uri if reindex else None, "overwrite": overwrite,
    }, batch_size=None, batch_format="pyarrow"), buckets_stage.COUNT_COLUMNS)
    return _Planned(counts, scratch)


def _remote(fn: Any, **options: Any) -> Any:
    import ray

    return ray.remote(**options)(fn)


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


def _run(cfg: JobConfig, kind: str, *, manifest: str | None = None, overwrite: bool = False) -> RunSummary:
    """A whole ``index`` or ``reindex`` run under the table's lease."""
    started, started_at = time.perf_counter(), now()
    job = prepare(cfg)
    run_id = cfg.run_id or new_run_id()
    reindex = kind == "reindex"
    with TableLease(job.target, job.settings, run_id, wait=cfg.lease_wait) as lease:
        records.start_run(job.target, job.out_fs, run_id, kind, started_at)
        earlier_runs = records.running_runs(job.target, job.out_fs, but=run_id)  # we hold the lease: they are not running
        redone = sum(max(0, int(r.get("written_rows", 0)) - int(r.get("committed_rows", 0))) for r in earlier_runs)
        earlier_staging = [r for r in records.staged_runs(job.target, job.out_fs) if r != run_id]
        if not overwrite:
            sink.upgrade_schema(job.target, job.options)
        planned = _plan(job, run_id, manifest, reindex, overwrite, earlier_staging)
        counts = planned.counts
        timings = {"plan": time.perf_counter() - started, "process": 0.0, "merge": 0.0}
        log.info("%s %s: %s", kind, run_id, counts)

        def on_commit(c: writer.Committer) -> None:
            records.update_running(job.target, job.out_fs, {"run_id": run_id, "kind": kind, "started_at": started_at,
                                                             "commits": c.commits, "committed_rows": c.committed_rows,
                                                             "written_rows": c.committed_rows + c.pending_rows})

        committer = writer.Committer(sink.table_uri(job.target), job.options, run_id, cfg.commit_every, cfg.commit_seconds,
                                     overwrite=overwrite, check=lease.check, on_commit=on_commit)
        fs = make_filesystem(planned.scratch, job.settings)
        todo_files = buckets_stage.files(planned.scratch, fs, buckets_stage.TODO)
        if todo_files:
            mark = time.perf_counter()
            _stream(job, todo_files, fs, counts["new"] + counts["changed"] - counts["reused"], run_id, committer)
            timings["process"] = time.perf_counter() - mark
        mark = time.perf_counter()
        merged = None
        if committer.staged or counts["reused"] or counts["deleted"]:
            lease.check()
            merge = _remote(table_tasks.merge_task, num_cpus=1, max_retries=2)
            merged = _get(merge.remote(job.target, job.options, job.settings, records.staging_location(job.target, run_id),
                                          [r["path"] for r in committer.staged], planned.scratch,
                                          buckets_stage.files(planned.scratch, fs, buckets_stage.REUSED), run_id,
                                          dt.datetime.now(dt.timezone.utc)))
        timings["merge"] = time.perf_counter() - mark
        for folder in [run_id, *earlier_staging]:
            records.remove_staging(job.target, job.out_fs, folder)
        for folder in records.plan_runs(job.target, job.out_fs):
            records.remove_plan(job.target, job.out_fs, folder)
        records.mark_interrupted(job.target, job.out_fs, sorted({r["run_id"] for r in earlier_runs} | set(earlier_staging)), run_id)
        summary = {"skipped": counts["skipped"], "new": counts["new"], "changed": counts["changed"], "redone": redone,
                   "classifier_actors": len(committer.actors),
                   "commits": committer.commits + int(merged is not None), "durations": {k: round(v, 3) for k, v in timings.items()}}
        if reindex:
            summary.update(deleted=counts["deleted"], reused=counts["reused"])
        elif isinstance(cfg, IndexConfig):
            summary.update(mode=cfg.mode)
        table_counts = _get(_remote(table_tasks.count_task, num_cpus=1, max_retries=2).remote(job.target, job.options, run_id))
        return finish(job, run_id, kind, started, started_at, counts["listed"], counts["new"] + counts["changed"], table_counts, **summary)


def run_index(cfg: IndexConfig) -> RunSummary:
    """Index a collection. Figures whose one row is current (this model name and version, these
    settings, not of a status to retry) are skipped, so rerunning a command (after a crash, say)
    finishes the work without duplicates. Figures with no row are appended, committed every
    ``--commit-every`` figures or ``--commit-seconds``; figures with stale rows (another model
    version or settings, several rows) are merged at the end, each new row replacing all the
    figure's old ones, so the table keeps one row per figure_id."""
    return _run(cfg, "index", overwrite=cfg.mode == WriteMode.OVERWRITE.value)


def run_reindex(cfg: ReindexConfig) -> RunSummary:
    """Process new and changed figures and mark deleted ones.

    New figures are appended (append commits, no merge); changed figures (content, model or
    settings) and deletions go through one merge at the end, whose source is streamed from the
    run's staged files. Resume: staging folders left by interrupted runs are read first; the rows
    that can be trusted (:func:`plan.trusted_staged`) are committed instead of processed again,
    and the folders are removed once this run's merge has committed; their run records become
    ``interrupted``.
    """
    return _run(cfg, "reindex", manifest=cfg.manifest)


def run_demo(cfg: DemoConfig) -> tuple[RunSummary, dict[str, int]]:
    """Index the bundled samples with the bundled model into ``cfg.output`` (overwritten).

    Returns the summary and the number of figures per predicted modality (errors by status).
    """
    index_cfg = IndexConfig(input=str(SAMPLES_DIR), output=cfg.output, batch_size=cfg.batch_size, mode=WriteMode.OVERWRITE.value)
    summary = run_index(index_cfg)
    target = parse_location(cfg.output, "--output")
    rows = sink.read_rows(target, None, columns=[schema.MODALITY, schema.STATUS], run_id=summary.run_id).to_pylist()
    modalities: dict[str, int] = {}
    for row in rows:
        key = row[schema.MODALITY] if row[schema.STATUS] == Status.OK.value else f"({row[schema.STATUS]})"
        modalities[key] = modalities.get(key, 0) + 1
    return summary, modalities
