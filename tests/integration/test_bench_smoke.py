"""Every benchmark runs in its --smoke mode (CI scale) and writes its JSON result."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from bench.common import RESULTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("name", ["crm_overhead", "crm_vs_bruteforce", "decode", "listing", "gpu_check", "table_bytes",
                                  "pipeline_vs_script", "scale", "encode", "collection_scale", "panels", "backbone", "cli_startup", "faithfulness",
                                  "seed_ensemble"])
def test_benchmark_smoke(name: str, dataset_dir: Path, ray_session: None, capsys) -> None:
    module = importlib.import_module(f"bench.{name}")
    args = ["--smoke"] + (["--dataset", str(dataset_dir)] if name in ("decode", "table_bytes", "pipeline_vs_script", "collection_scale", "panels", "faithfulness") else [])
    assert module.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.strip(), "a benchmark prints its table"
    result = json.loads((RESULTS / f"{name}-smoke.json").read_text())
    assert result["smoke"] is True and result["machine"]["cpus"] >= 1
