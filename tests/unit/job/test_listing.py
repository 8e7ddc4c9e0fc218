"""Listing: pages, every file (hidden names too), memory bounded by pages."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from xai_pipeline.job.listing import _list_local, list_objects
from xai_pipeline.store.source import SourceError, parse_location


def _tree(root: Path, folders: int, per_folder: int) -> None:
    for f in range(folders):
        folder = root / f"PMC{f:05d}"
        folder.mkdir(parents=True)
        for i in range(per_folder):
            (folder / f"{'.' if i == 0 else '_' if i == 1 else ''}fig{i}.jpg").write_bytes(b"x" * (i % 7))


def test_local_listing_is_paged_and_complete(tmp_path: Path) -> None:
    _tree(tmp_path, 7, 30)
    location = parse_location(str(tmp_path), "--input")
    pages = list(_list_local(location, page_size=50))
    assert [p.num_rows for p in pages] == [50, 50, 50, 50, 10]
    table = list_objects(location, page_size=50)
    assert table.num_rows == 210 and table.column("path").to_pylist() == sorted(table.column("path").to_pylist())
    assert any(p.endswith("/.fig0.jpg") for p in table.column("path").to_pylist())
    assert len(set(table.column("figure_id").to_pylist())) == 210


def test_empty_or_missing_input_fails_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--input.*no objects"):
        list_objects(parse_location(str(tmp_path), "--input"))
    with pytest.raises(SourceError, match="--input.*no such"):
        list_objects(parse_location(str(tmp_path / "nope"), "--input"))


@pytest.mark.slow
def test_python_memory_while_listing_does_not_grow_with_the_collection(tmp_path: Path) -> None:
    """Peak Python allocations listing 20k vs 2k files: bounded by pages (the Arrow listing is
    compact and not counted by tracemalloc)."""
    peaks = []
    for n_folders in (2, 20):
        root = tmp_path / f"c{n_folders}"
        _tree(root, n_folders, 1000)
        tracemalloc.start()
        pages = sum(1 for _ in _list_local(parse_location(str(root), "--input"), page_size=1000))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert pages == n_folders
    assert peaks[1] < 1.5 * peaks[0] + 2_000_000


def test_a_local_file_rewritten_at_the_same_size_is_seen_as_changed(tmp_path: Path) -> None:
    import os

    import pyarrow as pa

    from xai_pipeline import schema
    from xai_pipeline.job.plan import reindex_plan

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"12345")
    location = parse_location(str(tmp_path), "--input")
    first = list_objects(location)
    assert all(e.startswith("mtime-ns:") for e in first.column("etag").to_pylist())
    n = first.num_rows
    state = pa.table({schema.FIGURE_ID: first.column(schema.FIGURE_ID), schema.SOURCE_URI: first.column("uri"),
                      schema.ETAG: first.column("etag"), schema.SIZE: first.column("size"),
                      schema.MODEL_NAME: ["m"] * n, schema.MODEL_VERSION: ["1"] * n,
                      schema.DELETED_AT: pa.nulls(n, pa.timestamp("us", tz="UTC"))})  # a table before schema 4
    (tmp_path / "b.png").write_bytes(b"54321")  # same size, new content
    later = (tmp_path / "a.png").stat().st_mtime_ns + 5_000_000_000
    os.utime(tmp_path / "b.png", ns=(later, later))
    plan = reindex_plan(list_objects(location), state, "m", "1", location.uri)
    assert (plan.new, plan.changed, plan.skipped) == (0, 1, 1)
    assert plan.todo.column("path").to_pylist() == [str(tmp_path / "b.png")]
