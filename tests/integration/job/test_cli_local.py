"""The console script on local folders: index, summary JSON, hidden names, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import real_figures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "xai-pipeline"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_index_command_counts_every_file_and_writes_the_summary(tmp_path: Path, dataset_dir: Path) -> None:
    from deltalake import DeltaTable

    figures = tmp_path / "figures"
    (figures / "nested").mkdir(parents=True)
    for i, (_label, path) in enumerate(real_figures(dataset_dir, per_class=1)):
        # Ray's own directory listing would skip names starting with '.' or '_'.
        name = ["_underscore.jpg", ".hidden.jpg", "plain.jpg", "nested/a.jpg", "nested/_b.jpg", "sp ace.jpg"][i]
        (figures / name).write_bytes(path.read_bytes())
    (figures / "notes.txt").write_text("not a figure")
    out = _cli("index", "--input", str(figures), "--output", str(tmp_path / "table"), "--batch-size", "4",
               "--summary-json", str(tmp_path / "summary.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("inputs", "ok", "errors", "seconds", "figures_per_second", "table_version"):
        assert key in summary
    assert (summary["inputs"], summary["ok"], summary["errors"]) == (7, 6, 1)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    uris = set(DeltaTable(str(tmp_path / "table")).to_pyarrow_table().column("source_uri").to_pylist())
    assert f"file://{figures}/.hidden.jpg" in uris and f"file://{figures}/nested/_b.jpg" in uris and len(uris) == 7


def test_demo_runs_on_the_bundled_samples(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    out = _cli("demo", "--output", str(tmp_path / "demo"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "figures per modality" in out.stdout and str(tmp_path / "demo") in out.stdout
    table = DeltaTable(str(tmp_path / "demo")).to_pyarrow_table()
    assert table.num_rows == 8 and set(table.column("status").to_pylist()) == {"ok"}
    # The compound sample: four panels through the Ray pipeline, each with its labels and CRM.
    (compound,) = [r for r in table.to_pylist() if "compound_" in r["source_uri"]]
    assert compound["modality"] == "compound" and compound["panel_count"] == 4 and len(compound["panels"]) == 4
    assert "ct" in compound["modalities"] and compound["figure_type"] == "medical_image"
    assert [p["modality"] for p in compound["panels"]][3] == "other" and all(len(p["crm"]) == 49 for p in compound["panels"])
    assert {r["modality"] for r in table.to_pylist() if "other_" in r["source_uri"]} == {"other"}
    from xai_pipeline.read.query import query

    # A panel counts: the compound figure matches a CT query by its CT panel, and the whole NEMA CT crop by itself. Model
    # 1.4.0's figure-type head typed that 256-pixel vertebra close-up as microscopy, so it was 'other'; 1.5.0's (fitted
    # on coronal and sagittal sections too) types it a medical image (the 64-pixel MR slice is 'other' for all three).
    found = query(str(tmp_path / "demo"), modality=["ct"]).column("source_uri").to_pylist()
    assert sorted(Path(u).name for u in found) == ["compound_ct_mri_fundus_chart.png", "ct_nema_wg04.png"]
    rows = {Path(r["source_uri"]).name: r for r in table.to_pylist()}
    assert rows["ct_nema_wg04.png"]["modality"] == "ct" and rows["ct_nema_wg04.png"]["figure_type"] == "medical_image"
    assert rows["compound_ct_mri_fundus_chart.png"]["modality"] == "compound" and rows["fundus_retina.jpg"]["modality"] == "fundus"
    # Quiet by default: no INFO lines from Ray, Ray Data or this package on the console.
    assert not [line for line in out.stderr.splitlines() if " INFO " in line], out.stderr[-3000:]
    again = _cli("--verbose", "demo", "--output", str(tmp_path / "demo"), cwd=tmp_path)  # overwrite, not duplicate
    assert again.returncode == 0
    assert DeltaTable(str(tmp_path / "demo")).to_pyarrow_table().num_rows == 8
    assert "INFO xai_pipeline.job.writer" in again.stderr and "streaming_executor" in again.stderr  # --verbose shows them
