"""Training through Ray Train's TorchTrainer on a local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import real_figures
from xai_pipeline.config import TrainConfig
from xai_pipeline.model import load_model
from xai_pipeline.train_run import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ray_train_path_produces_a_model(tmp_path: Path, dataset_dir: Path, ray_session: None) -> None:
    data = tmp_path / "data"
    for label, path in real_figures(dataset_dir, per_class=4):
        if label in ("fundus", "ct"):
            (data / label).mkdir(parents=True, exist_ok=True)
            (data / label / path.name).write_bytes(path.read_bytes())
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "out"), architecture="tiny_cnn", input_size=64, batch_size=8,
                      max_steps=4, val_fraction=0.25, ray=True, num_workers=1)
    report = run_training(cfg)
    assert report["steps"] >= 1
    model = load_model(tmp_path / "out" / "model.safetensors")
    assert model.spec.class_names == ("ct", "fundus")
