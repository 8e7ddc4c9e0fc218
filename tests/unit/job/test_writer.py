"""The write stage's files (Delta statistics, routes) and the driver's commits: by figures, by
seconds, overwrite first, and never the same commit twice (Delta application transactions)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from xai_pipeline import schema
from xai_pipeline.store import sink
from xai_pipeline.job import writer
from xai_pipeline.store.source import S3Settings, parse_location


def _rows(names: list[str], route: str, actor: str = "host:1:0") -> pa.Table:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for name in names:
        uri = f"s3://b/in/{name}"
        row = {f.name: None for f in schema.TABLE_SCHEMA}
        row.update({schema.FIGURE_ID: schema.figure_id(uri), schema.SOURCE_URI: uri, schema.SIZE: len(name), schema.STATUS: "ok",
                    schema.RUN_ID: "r", schema.PROCESSED_AT: when, schema.SCHEMA_VERSION_COL: schema.SCHEMA_VERSION,
                    schema.MODEL_VERSION: "1"})
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema.TABLE_SCHEMA)
    return table.append_column(schema.ROUTE, pa.array([route] * len(names))).append_column(schema.ACTOR, pa.array([actor] * len(names)))


def test_files_carry_delta_statistics_and_go_where_their_route_says(tmp_path: Path) -> None:
    table, staging = parse_location(str(tmp_path / "t"), "--output"), parse_location(str(tmp_path / "s"), "--output")
    mixed = pa.concat_tables([_rows(["c/2.png", "a/1.png"], writer.APPEND), _rows(["z/9.png"], writer.STAGE, "host:2:0")])
    files = writer.write_files(mixed, table=table, staging=staging, settings=S3Settings(), run_id="r1").to_pylist()
    assert [(f["kind"], f["rows"]) for f in files] == [("append", 2), ("stage", 1)]
    stats = json.loads(files[0]["stats"])
    assert stats["numRecords"] == 2 and stats["minValues"][schema.SOURCE_URI] == "s3://b/in/a/1.png"
    assert stats["maxValues"][schema.SOURCE_URI] == "s3://b/in/c/2.png" and stats["nullCount"][schema.MODALITY] == 2
    assert files[0]["path"].startswith(writer.file_prefix("r1")) and (tmp_path / "t" / files[0]["path"]).exists()
    assert (tmp_path / "s" / files[1]["path"]).exists() and json.loads(files[1]["actors"]) == ["host:2:0"]


def test_commits_by_figures_by_seconds_and_never_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltalake import DeltaTable

    location = parse_location(str(tmp_path / "t"), "--output")
    staging = parse_location(str(tmp_path / "s"), "--output")

    def files(names: list[str]) -> pa.Table:
        return writer.write_files(_rows(names, writer.APPEND), table=location, staging=staging, settings=S3Settings(), run_id="r1")

    by_figures = writer.Committer(sink.table_uri(location), None, "r1", every_figures=3, every_seconds=3600)
    by_figures.add(files(["a/1.png", "a/2.png"]))
    assert by_figures.commits == 0 and by_figures.pending_rows == 2
    by_figures.add(files(["b/1.png"]))
    assert by_figures.commits == 1 and DeltaTable(str(tmp_path / "t")).version() == 0
    by_seconds = writer.Committer(sink.table_uri(location), None, "r2", every_figures=10**6, every_seconds=0.0)
    by_seconds.add(files(["c/1.png"]))
    assert by_seconds.commits == 1
    table = DeltaTable(str(tmp_path / "t"))
    assert table.transaction_version("r2") == 1 and table.to_pyarrow_table().num_rows == 4
    # A commit retried after it was applied (the answer lost) is not applied again.
    again = writer.Committer(sink.table_uri(location), None, "r2", every_figures=1, every_seconds=3600)
    again.add(files(["d/1.png"]))
    assert again.commits == 1 and DeltaTable(str(tmp_path / "t")).to_pyarrow_table().num_rows == 4
    # Overwrite: the first commit replaces the table's rows.
    fresh = writer.Committer(sink.table_uri(location), None, "r3", every_figures=1, every_seconds=3600, overwrite=True)
    fresh.add(files(["e/1.png"]))
    assert DeltaTable(str(tmp_path / "t")).to_pyarrow_table().column(schema.SOURCE_URI).to_pylist() == ["s3://b/in/e/1.png"]
    # The lease's check runs before each commit and can stop it.
    stopped = writer.Committer(sink.table_uri(location), None, "r4", every_figures=1, every_seconds=3600,
                               check=lambda: (_ for _ in ()).throw(RuntimeError("lease lost")))
    with pytest.raises(RuntimeError, match="lease lost"):
        stopped.add(files(["f/1.png"]))


def test_the_commit_hold_hook_sleeps_after_the_named_commit_once_it_is_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reliability bench's driver_sigkill hook: the driver waits after commit 1, not before."""
    from deltalake import DeltaTable

    from xai_pipeline.job import faults

    location = parse_location(str(tmp_path / "t"), "--output")
    rules = tmp_path / "hold.json"
    rules.write_text(json.dumps({"delay:commit": ["[commit 1]"], "delay_seconds": 7}))
    monkeypatch.setenv(faults.FAULTS_ENV, str(rules))
    seen: list[tuple[float, int]] = []
    monkeypatch.setattr(faults.time, "sleep", lambda s: seen.append((s, DeltaTable(str(tmp_path / "t")).to_pyarrow_table().num_rows)))
    committer = writer.Committer(sink.table_uri(location), None, "r1", every_figures=1, every_seconds=3600)
    for name in ("a/1.png", "a/2.png", "a/3.png"):
        committer.add(writer.write_files(_rows([name], writer.APPEND), table=location, staging=location, settings=S3Settings(), run_id="r1"))
    assert committer.commits == 3 and seen == [(7.0, 1)]
