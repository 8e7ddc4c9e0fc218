"""The reliability report at CI scale: every scenario ends with no duplicates and nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import reliability

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_reliability_report_smoke(dataset_dir: Path, capsys) -> None:
    code = reliability.main(["--smoke", "--dataset", str(dataset_dir)])
    lines = [line for line in capsys.readouterr().out.splitlines() if "duplicates=" in line]
    assert [line.split()[0] for line in lines] == ["bad_inputs", "storage_faults", "body_clean", "body_faults", "driver_sigkill", "actor_kill"]
    results = {r["scenario"]: r for r in json.loads((reliability.RESULTS / "reliability-smoke.json").read_text())}
    assert code == 0
    for r in results.values():
        assert r["duplicates"] == 0 and r["lost"] == 0 and r["rows"] == r["inputs"], r
    assert results["bad_inputs"]["details"]["wrong_status"] == {}
    assert set(results["bad_inputs"]["errors_by_kind"]) == {"empty", "truncated", "not_an_image", "too_large", "unsupported"}
    sigkill = results["driver_sigkill"]["details"]
    assert sigkill["killed_mid_run"] and 0 < sigkill["rows_after_kill"] < results["driver_sigkill"]["inputs"]
    assert sigkill["skipped"] == sigkill["rows_after_kill"] and sigkill["processed"] == results["driver_sigkill"]["inputs"] - sigkill["skipped"]
    assert results["actor_kill"]["details"]["actor_killed"]
    assert results["storage_faults"]["ok"] == results["storage_faults"]["inputs"]
    body = results["body_faults"]
    assert body["inputs"] == 60 and body["details"]["missing"] == 0
    assert sum(v for k, v in body["details"]["faults_injected"].items() if k != "forwarded") >= 1
