"""The read side: query (SQL, filters, formats, snapshots), show, the HTML report in headless
Chromium, and export for OpenSearch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import real_figures
from xai_pipeline.cli import main
from xai_pipeline.config import IndexConfig, ReindexConfig
from xai_pipeline.job.pipeline import run_index, run_reindex
from xai_pipeline.read.query import query
from xai_pipeline.read.report import SECTIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path, ray_session: None) -> Path:
    root = tmp_path_factory.mktemp("read")
    figures = root / "figures"
    figures.mkdir()
    for _, path in real_figures(dataset_dir, per_class=2):
        (figures / path.name).write_bytes(path.read_bytes())
    (figures / "broken.png").write_bytes(b"not a png")
    out = root / "table"
    run_index(IndexConfig(input=str(figures), output=str(out), batch_size=8))
    (figures / sorted(p.name for p in figures.iterdir() if p.suffix == ".jpg")[0]).unlink()
    run_reindex(ReindexConfig(input=str(figures), output=str(out), batch_size=8))  # marks one deleted
    return out


def test_query_filters_sql_formats_and_versions(table: Path, capsys) -> None:
    alive = query(str(table))
    assert alive.num_rows == 12  # 13 objects, one deleted
    assert query(str(table), include_deleted=True).num_rows == 13
    ct = query(str(table), modality=["ct"], min_confidence=0.5, columns=["figure_id", "modality", "confidence", "roi_boxes"])
    assert set(ct.column("modality").to_pylist()) <= {"ct"} and all(c >= 0.5 for c in ct.column("confidence").to_pylist())
    assert all(row["roi_boxes"] for row in ct.to_pylist())
    errors = query(str(table), status=["not_an_image"]).to_pylist()
    assert len(errors) == 1 and errors[0]["modality"] is None
    grouped = query(str(table), "SELECT status, COUNT(*) AS n FROM figures GROUP BY status ORDER BY status").to_pylist()
    assert grouped == [{"status": "not_an_image", "n": 1}, {"status": "ok", "n": 12}]
    # Snapshot reads: the current version never shows a row twice; version 0 predates the deletion.
    ids = query(str(table), include_deleted=True, columns=["figure_id"]).column("figure_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert query(str(table), version=0, include_deleted=True).num_rows == 13

    assert main(["query", "--table", str(table), "--modality", "ct,mri", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {r["modality"] for r in rows} <= {"ct", "mri"}
    assert main(["query", "--table", str(table), "--sql", "SELECT figure_id, crm FROM figures WHERE status = 'ok' LIMIT 2", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '"figure_id","crm"' and lines[1].endswith(",49")  # maps print as their length
    out = table.parent / "q.parquet"
    assert main(["query", "--table", str(table), "--format", "parquet", "--out", str(out)]) == 0
    import pyarrow.parquet as pq
    assert pq.read_table(out).num_rows == 12
    assert main(["query", "--table", str(table), "--sql", "SELECT 1", "--modality", "ct"]) == 2


def test_show_writes_an_overlay_and_the_comparison(table: Path) -> None:
    row = query(str(table), status=["ok"], limit=1, columns=["figure_id", "width"]).to_pylist()[0]
    out = table.parent / "show.png"
    assert main(["show", row["figure_id"], "--table", str(table), "--out", str(out), "--compare"]) == 0
    image = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    assert image.shape[1] >= 5 * 300 and image.std() > 10
    assert main(["show", "0" * 32, "--table", str(table), "--out", str(out)]) == 2


def test_report_renders_in_headless_chromium(table: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    out = table.parent / "report.html"
    assert main(["report", "--table", str(table), "--out", str(out)]) == 0
    page = out.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "src=\"http" not in page and page.count("data:image/png;base64,") >= 5  # self-contained
    shot = table.parent / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={table.parent / 'chromium'}", "--window-size=1200,3000", f"--screenshot={shot}",
                    out.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # not blank: text, charts and images drawn


def test_export_bulk_and_jsonl(table: Path) -> None:
    bulk = table.parent / "bulk.ndjson"
    assert main(["export", "--table", str(table), "--format", "opensearch-bulk", "--out", str(bulk)]) == 0
    lines = [json.loads(line) for line in bulk.read_text().splitlines()]
    actions = [line for line in lines if "index" in line or "delete" in line]
    assert sum("delete" in a for a in actions) == 1 and sum("index" in a for a in actions) == 12
    docs = [line for line in lines if "figure_id" in line]
    assert len(docs) == 12 and {"figure_id", "modality", "confidence", "roi_boxes", "source_uri"} <= set(docs[0])
    jsonl = table.parent / "docs.jsonl"
    assert main(["export", "--table", str(table), "--format", "jsonl", "--out", str(jsonl)]) == 0
    assert len(jsonl.read_text().splitlines()) == 12
