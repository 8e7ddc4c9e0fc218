"""Files kept beside the Delta log under ``_xai_pipeline/`` (Delta readers and vacuum ignore
names that start with an underscore):

* ``runs/<run_id>.json``       every run: written with ``state: running`` when it starts and
                               replaced by its summary (``finished``, or ``incomplete`` when
                               rows are missing) when it ends; a run found ``running`` by a
                               later run that cleans up after it becomes ``interrupted``
                               (``xai-pipeline runs`` lists them)
                               (a running run's record is rewritten at each commit with counts:
                               rows written and committed, never figure ids)
* ``plan/<run_id>/``           a run's plan, made by Ray tasks: the listing and the table's state
                               in buckets, each bucket's figures to process and to mark deleted
* ``staging/<run_id>/``        a run's rows before they are merged in one commit; a later run
                               reuses the rows it can trust from an interrupted run's staging
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from xai_pipeline.store.source import Location

ROOT = "_xai_pipeline"


def _path(location: Location, *parts: str) -> str:
    return "/".join([location.path.rstrip("/"), ROOT, *parts])


def plan_location(location: Location, run_id: str) -> Location:
    """A run's scratch folder for its plan (bucketed listing, state, todo, deletions)."""
    return Location(location.scheme, _path(location, "plan", run_id))


def plan_runs(location: Location, fs: pafs.FileSystem) -> list[str]:
    """Run ids with a plan scratch folder left (the current run's, or interrupted runs')."""
    folder = _path(location, "plan")
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                  if info.type == pafs.FileType.Directory)


def remove_plan(location: Location, fs: pafs.FileSystem, run_id: str) -> None:
    try:
        fs.delete_dir(plan_location(location, run_id).path)
    except FileNotFoundError:
        pass


def staging_location(location: Location, run_id: str) -> Location:
    return Location(location.scheme, _path(location, "staging", run_id))


def _write_json(fs: pafs.FileSystem, path: str, payload: dict[str, Any]) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps(payload, sort_keys=False).encode())


def _read_jsons(fs: pafs.FileSystem, folder: str) -> dict[str, dict[str, Any]]:
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
            with fs.open_input_stream(info.path) as fh:
                found[info.base_name] = json.loads(fh.read())
    return found


def write_run(location: Location, fs: pafs.FileSystem, record: dict[str, Any]) -> None:
    """Store a run's summary beside the table."""
    _write_json(fs, _path(location, "runs", f"{record['run_id']}.json"), record)


class RunState:
    RUNNING = "running"
    FINISHED = "finished"
    INCOMPLETE = "incomplete"  # finished, but some listed objects have no row (exit code 3)
    INTERRUPTED = "interrupted"  # never finished; a later run cleaned up after it


def start_run(location: Location, fs: pafs.FileSystem, run_id: str, kind: str, started_at: str) -> None:
    """Record that a run started; its summary replaces the record when it ends."""
    write_run(location, fs, {"run_id": run_id, "kind": kind, "state": RunState.RUNNING, "started_at": started_at})


def update_running(location: Location, fs: pafs.FileSystem, record: dict[str, Any]) -> None:
    """Replace a running run's record (with counts, never figure ids: written at each commit)."""
    write_run(location, fs, {**record, "state": RunState.RUNNING})


def running_runs(location: Location, fs: pafs.FileSystem, but: str) -> list[dict[str, Any]]:
    """Records of other runs that still say ``running``: with the table's lease held, those runs
    are not running any more (they crashed or were killed)."""
    return [r for r in list_runs(location, fs) if r.get("state") == RunState.RUNNING and r.get("run_id") != but]


def mark_interrupted(location: Location, fs: pafs.FileSystem, run_ids: list[str], by: str) -> list[str]:
    """Mark the records of ``run_ids`` that still say ``running`` as ``interrupted`` by run ``by``."""
    marked = []
    for run_id in run_ids:
        path = _path(location, "runs", f"{run_id}.json")
        try:
            with fs.open_input_stream(path) as fh:
                record = json.loads(fh.read())
        except (FileNotFoundError, OSError, ValueError):
            record = {"run_id": run_id, "kind": "unknown", "state": RunState.RUNNING}
        if record.get("state") == RunState.RUNNING:
            record.update(state=RunState.INTERRUPTED, cleaned_up_by=by)
            _write_json(fs, path, record)
            marked.append(run_id)
    return marked


def staged_runs(location: Location, fs: pafs.FileSystem) -> list[str]:
    """Run ids that have a staging folder (runs in progress, or interrupted before cleaning up)."""
    folder = _path(location, "staging")
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                  if info.type == pafs.FileType.Directory)


def list_runs(location: Location, fs: pafs.FileSystem) -> list[dict[str, Any]]:
    """Run records, oldest first (run ids start with their UTC start time)."""
    return [record for _, record in sorted(_read_jsons(fs, _path(location, "runs")).items())]


def remove_staging(location: Location, fs: pafs.FileSystem, run_id: str) -> None:
    try:
        fs.delete_dir(staging_location(location, run_id).path)
    except FileNotFoundError:
        pass
