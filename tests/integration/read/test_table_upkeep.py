"""table optimize | vacuum | history, and the run records that `runs` lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import gradient, image_bytes, tiny_model_file
from xai_pipeline.cli import main
from xai_pipeline.config import IndexConfig
from xai_pipeline.job.pipeline import run_index

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_upkeep_commands_and_run_records(tmp_path: Path, ray_session: None, capsys) -> None:
    from deltalake import DeltaTable

    figures = tmp_path / "figures"
    figures.mkdir()
    for i in range(12):
        (figures / f"f{i:02d}.png").write_bytes(image_bytes(gradient(40 + i, 30), "PNG"))
    table = tmp_path / "table"
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    summary = run_index(IndexConfig(input=str(figures), output=str(table), model=model, commit_every=3, batch_size=3))
    assert summary.commits == 4 and summary.table_version == 3
    before = DeltaTable(str(table)).to_pyarrow_table().sort_by("figure_id")

    assert main(["table", "optimize", "--table", str(table)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["numFilesRemoved"] >= 4
    after = DeltaTable(str(table))
    assert after.version() == 4 and after.to_pyarrow_table().sort_by("figure_id").equals(before)

    assert main(["table", "history", "--table", str(table)]) == 0
    history = capsys.readouterr().out
    assert "OPTIMIZE" in history and history.count("WRITE") + history.count("CREATE TABLE") == 4

    assert main(["table", "vacuum", "--table", str(table), "--retention-hours", "0", "--dry-run"]) == 0
    assert "would delete 4 files" in capsys.readouterr().out
    assert DeltaTable(str(table), version=0).to_pyarrow_table().num_rows == 3  # still there
    assert main(["table", "vacuum", "--table", str(table), "--retention-hours", "0"]) == 0
    assert "deleted 4 files" in capsys.readouterr().out
    assert DeltaTable(str(table)).to_pyarrow_table().num_rows == 12
    assert (table / "_xai_pipeline" / "runs").is_dir()  # vacuum leaves the run records alone

    run_index(IndexConfig(input=str(figures), output=str(table), model=model))  # nothing new: all skipped
    assert main(["runs", "--table", str(table), "--json"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["processed"] for r in runs] == [12, 0] and runs[1]["skipped"] == 12
    assert main(["runs", "--table", str(table)]) == 0
    assert summary.run_id in capsys.readouterr().out

    assert main(["table", "history", "--table", str(tmp_path / "nothing")]) == 2
