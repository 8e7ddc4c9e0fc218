"""Files kept beside the Delta log under ``_xai_pipeline/`` (Delta readers and vacuum ignore
names that start with an underscore):

* ``runs/<run_id>.json``       every run: written with ``state: running`` when it starts and
                               replaced by its summary (``finished``, or ``incomplete`` when
                               rows are missing) when it ends; a run found ``running`` by a
                               later run that cleans up after it becomes ``interrupted``
                               (``xai-pipeline runs`` lists them)
* ``inflight/<run>-<n>.json``  figure_ids of a chunk being written, removed once it is committed
* ``staging/<run_id>/``        a run's rows before they are merged in one commit; a later run
                               reuses the rows it can trust from an interrupted run's staging
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from xai_pipeline.source import Location

ROOT = "_xai_pipeline"


def _path(location: Location, *parts: str) -> str:
    return "/".join([location.path.rstrip("/"), ROOT, *parts])


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


def mark_inflight(location: Location, fs: pafs.FileSystem, run_id: str, chunk: int, ids: list[str]) -> str:
    """Record the figure_ids a chunk is about to write; returns the marker's name."""
    name = f"{run_id}-{chunk:05d}.json"
    _write_json(fs, _path(location, "inflight", name), {"run_id": run_id, "chunk": chunk, "figure_ids": ids})
    return name


def read_inflight(location: Location, fs: pafs.FileSystem) -> dict[str, list[str]]:
    """Chunks that earlier runs started but never committed: marker name → figure_ids."""
    return {name: payload["figure_ids"] for name, payload in _read_jsons(fs, _path(location, "inflight")).items()}


def clear_inflight(location: Location, fs: pafs.FileSystem, names: list[str]) -> None:
    for name in names:
        try:
            fs.delete_file(_path(location, "inflight", name))
        except FileNotFoundError:
            pass


def remove_staging(location: Location, fs: pafs.FileSystem, run_id: str) -> None:
    try:
        fs.delete_dir(staging_location(location, run_id).path)
    except FileNotFoundError:
        pass
