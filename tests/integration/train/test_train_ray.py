"""Training through Ray Train's TorchTrainer on a local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import real_figures
from xai_pipeline.config import TrainConfig
from xai_pipeline.model.net import load_model
from xai_pipeline.train.run import run_training

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


def test_training_data_reads_from_s3_manifest(s3, s3_endpoint: str, dataset_dir: Path) -> None:
    import json

    from xai_pipeline.train.dataset import load_images, read_examples
    from xai_pipeline.store.source import S3Settings

    s3.create_bucket(Bucket="training")
    lines = []
    for label, path in real_figures(dataset_dir, per_class=1):
        s3.put_object(Bucket="training", Key=f"modality/{label}/{path.name}", Body=path.read_bytes())
        lines.append(json.dumps({"file": f"{label}/{path.name}", "label": label, "source_repo": "s3-test"}))
    s3.put_object(Bucket="training", Key="modality/manifest.jsonl", Body="\n".join(lines).encode())
    settings = S3Settings(endpoint_url=s3_endpoint)
    examples = read_examples("s3://training/modality/manifest.jsonl", settings)
    assert [e.uri for e in examples][0].startswith("s3://training/modality/chest_xray/")
    images = load_images(examples, settings)
    assert len(images) == 6 and all(im.mode == "RGB" for im in images)
    folder = read_examples("s3://training/modality", settings)
    assert sorted({e.label for e in folder}) == ["chest_xray", "ct", "fundus", "histology", "mri", "ultrasound"]
