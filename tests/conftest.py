"""Shared test set-up: the real data set's location and the test-oracle module path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))  # makes `oracles` and `helpers` importable
sys.path.insert(0, str(TESTS_DIR.parent))  # makes `bench` importable

_CANDIDATES = [
    os.environ.get("XAI_DATASET_DIR", ""),
    str(TESTS_DIR.parent.parent / "shared" / "datasets" / "modality-v1"),
]


def _dataset_dir() -> Path | None:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "manifest.jsonl").is_file():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    """The shared modality-v1 data set; CI has it, so its absence is a failure there."""
    found = _dataset_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("modality-v1 data set not found; set XAI_DATASET_DIR")
        pytest.skip("modality-v1 data set not found; set XAI_DATASET_DIR")
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
