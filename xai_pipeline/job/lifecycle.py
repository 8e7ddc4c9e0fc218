"""A run's frame, around the Ray pipeline: the checked configuration before any work, and the run
record after it (no Ray here).

:func:`prepare` does every check that can fail on configuration (locations, model file, buckets
and credentials) so that a bad flag stops the run before any work, with exit code 2.
:func:`finish` counts the run's rows in the table, builds the summary and stores it beside the
table.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xai_pipeline.job import plan
from xai_pipeline.store import records, sink
from xai_pipeline.config import JobConfig
from xai_pipeline.model.net import DEFAULT_MODEL_PATH, ModelFileError, ModelSpec, read_spec
from xai_pipeline.schema import Status
from xai_pipeline.store.source import Location, S3Settings, check_output, make_filesystem, parse_location, preflight_s3
from xai_pipeline.store.summary import RunSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A checked configuration: locations, model, filesystems."""

    cfg: JobConfig
    source: Location
    target: Location
    settings: S3Settings
    out_fs: Any
    options: dict[str, str] | None
    spec: ModelSpec

    @property
    def row_settings(self) -> plan.RowSettings:
        """What makes a row current besides its content: model and settings."""
        return plan.RowSettings(self.spec.name, self.spec.version, self.cfg.crm_score, self.cfg.roi_threshold)


def prepare(cfg: JobConfig) -> Job:
    """Every check that can fail on configuration; no listing and no Ray work yet."""
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
    return Job(cfg, source, target, settings, make_filesystem(target, settings), sink.storage_options(target, settings), spec)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def finish(job: Job, run_id: str, kind: str, started: float, started_at: str, inputs: int, to_process: int,
           table_counts: tuple[int | None, dict[str, int]], **counts: Any) -> RunSummary:
    """Build the run's summary and store it beside the table.

    ``table_counts``: the table's version and this run's rows in it by status
    (:func:`sink.status_counts`). ``to_process``: listed objects this run had to give a row;
    ``missing`` is how many of them have none (a block lost after its retries): exit code 3."""
    version, statuses = table_counts
    seconds = time.perf_counter() - started
    processed = sum(statuses.values())
    ok = statuses.get(Status.OK.value, 0)
    process_seconds = counts.get("durations", {}).get("process", 0.0)
    missing = max(0, to_process - processed)
    summary = RunSummary(
        run_id=run_id, kind=kind, inputs=inputs, processed=processed, ok=ok, errors=processed - ok,
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
