"""Seed ensembles from finished train runs and from leave-source-out studies
(:mod:`xai_pipeline.train.ensemble`): one recipe and one split, logits averaged, evaluated as a run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.train.test_train_sources import _two_manifests
from xai_pipeline.config import TrainConfig
from xai_pipeline.train.ensemble import main, member_problem


def _config(**changes: object) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(replace(TrainConfig(data="d", out="o"), **changes))  # type: ignore[arg-type]


def test_members_must_share_the_recipe_and_the_split_but_not_the_seed() -> None:
    assert member_problem([_config(seed=0), _config(seed=1, split_seed=0, out="p", torch_threads=1)]) is None
    assert member_problem([_config(seed=0, split_seed=0), _config(seed=1, split_seed=0)]) is None
    assert member_problem([_config(seed=0), _config(seed=1, split_seed=0)]) is None  # seed 0 split with 0
    assert "--split-seed" in (member_problem([_config(seed=0), _config(seed=1)]) or "")  # each split by its own seed
    assert "--lr" in (member_problem([_config(seed=0), _config(seed=1, split_seed=0, lr=1e-3)]) or "")
    assert "share a --seed" in (member_problem([_config(seed=0), _config(seed=0)]) or "")
    assert "at least two" in (member_problem([_config()]) or "")
    old = _config(seed=1, split_seed=0)
    del old["label_smoothing"]  # a report written before a field existed holds its default
    assert member_problem([_config(seed=0), old]) is None


def test_split_seed_decouples_the_split_from_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    from xai_pipeline.train import split

    seen: list[int] = []
    monkeypatch.setattr(split, "read_training_examples", lambda data, settings: [])
    monkeypatch.setattr(split, "class_names_of", lambda examples: ("a", "b"))
    monkeypatch.setattr(split, "split_by_group", lambda examples, fraction, seed, holdout: seen.append(seed) or ([], [], []))
    for cfg in (TrainConfig(data="d", out="o", seed=3), TrainConfig(data="d", out="o", seed=3, split_seed=0)):
        split.examples_and_split(cfg)
    assert seen == [3, 0]


def test_a_fold_finished_before_split_seed_existed_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import asdict

    from xai_pipeline.train.loso_fit import _finished

    cfg = TrainConfig(data="d", out=str(tmp_path), seed=2)
    config = json.loads(json.dumps(asdict(cfg)))
    del config["split_seed"]  # written before the field existed: the run split with its --seed
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "training_metrics.json").write_text(json.dumps({"config": config, "split": {"train": {"a": 1}}}))
    split = {"train": {"a": 1}}
    assert _finished(cfg, split) is not None
    assert _finished(replace(cfg, split_seed=2, torch_threads=1, endpoint_url="http://x"), split) is not None  # same split
    assert _finished(replace(cfg, split_seed=0), split) is None  # another split
    assert _finished(cfg, {"train": {"a": 2}}) is None  # the data changed


def test_studies_must_hold_the_same_folds(tmp_path: Path) -> None:
    for name, folds in (("s0", ["x", "y"]), ("s1", ["x"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "loso-fit.json").write_text(json.dumps({"config": {"data": "d"}, "folds": [{"source": f} for f in folds]}))
    assert main(["--studies", f"{tmp_path / 's0'},{tmp_path / 's1'}", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ensemble_of_runs_and_of_studies(tmp_path: Path, dataset_dir: Path) -> None:
    from xai_pipeline.model.net import load_model
    from xai_pipeline.train.evaluate import predict_images
    from xai_pipeline.train.loso_fit import run_folds
    from xai_pipeline.train.loso_folds import fold_dir
    from xai_pipeline.train.run import MODEL_FILE, run_training
    from xai_pipeline.train.split import examples_and_split, training_data

    a, b = _two_manifests(tmp_path, dataset_dir)
    base = TrainConfig(data=f"{a},{b}", out="", architecture="tiny_cnn", input_size=48, batch_size=8, max_steps=3,
                       val_fraction=0.34, holdout_sources="src-b", split_seed=0)
    runs = [tmp_path / f"run{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        run_training(replace(base, out=str(run), seed=seed))
    assert main(["--members", f"{runs[0]},{runs[1]}", "--out", str(tmp_path / "ens"), "--version", "9.0.0"]) == 0
    report = json.loads((tmp_path / "ens" / "training_metrics.json").read_text())
    members = [json.loads((run / "training_metrics.json").read_text()) for run in runs]
    assert report["member_seeds"] == [0, 1] and report["member_runs"] == [str(r) for r in runs] and report["split"] == members[0]["split"] == members[1]["split"]
    assert report["steps"] == members[0]["steps"] + members[1]["steps"] and "seed ensemble of 2" in (tmp_path / "ens" / "MODEL_CARD.md").read_text()
    ensemble = load_model(tmp_path / "ens" / MODEL_FILE)
    assert ensemble.spec.members == 2 and ensemble.spec.version == "9.0.0" and report["model_spec"]["members"] == 2

    # Its validation figures: probabilities are the softmax of the members' mean logits, and its threshold keeps
    # min_accept of their top probabilities, as train's does.
    examples, class_names, (_, val_idx, _) = examples_and_split(replace(base, out=str(tmp_path / "ens")))
    images = training_data(examples, val_idx, class_names, base).images
    p, _ = predict_images(ensemble, images)
    member_log_p = np.mean([np.log(predict_images(load_model(run / MODEL_FILE), images)[0]) for run in runs], axis=0)
    assert np.allclose(p, torch.from_numpy(member_log_p).softmax(-1).numpy(), atol=1e-5)  # mean log p: mean logits, shifted
    assert report["model_spec"]["other_threshold"] == pytest.approx(float(np.quantile(p.max(axis=1), 1 - base.min_accept, method="lower")), abs=1e-4)

    # Runs split differently are refused, naming the flag; so is a folder that is not a run.
    shutil.copytree(runs[1], tmp_path / "other-split")
    moved = json.loads((tmp_path / "other-split" / "training_metrics.json").read_text())
    moved["config"]["split_seed"] = 5
    (tmp_path / "other-split" / "training_metrics.json").write_text(json.dumps(moved))
    assert main(["--members", f"{runs[0]},{tmp_path / 'other-split'}", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["--members", f"{runs[0]},{tmp_path / 'nowhere'}", "--out", str(tmp_path / "bad")]) == 2

    # Two studies of the same folds at two seeds: every fold assembled and the ensembles scored as a study.
    folds = ["src-b", "charts-y"]
    for seed in (0, 1):
        study = tmp_path / f"study{seed}"
        study.mkdir()
        run_folds(replace(base, out=str(study), seed=seed, holdout_sources=""), folds, study)
    assert main(["--studies", f"{tmp_path / 'study0'},{tmp_path / 'study1'}", "--out", str(tmp_path / "ens-study")]) == 0
    result = json.loads((tmp_path / "ens-study" / "loso-fit.json").read_text())
    assert [f["source"] for f in result["folds"]] == folds and result["pooled"]["figures"] == 7
    assert result["config"]["seed"] == [0, 1]
    assert load_model(fold_dir(tmp_path / "ens-study", "src-b") / MODEL_FILE).spec.members == 2
    fold_report = json.loads((fold_dir(tmp_path / "ens-study", "src-b") / "training_metrics.json").read_text())
    assert fold_report["config"]["holdout_sources"] == "src-b" and fold_report["threshold_set_on"] == "validation"


def test_a_report_config_becomes_a_train_config() -> None:
    config = _config(seed=4, lr=1e-3, split_seed=1)
    del config["label_smoothing"]  # a report written before the field existed
    config["a_field_since_removed"] = 1
    cfg = TrainConfig.from_report(config)
    assert (cfg.seed, cfg.lr, cfg.group_split_seed) == (4, 1e-3, 1)
    assert cfg.label_smoothing == TrainConfig(data="d", out="o").label_smoothing
    assert TrainConfig.from_report(_config(seed=4)).group_split_seed == 4  # no --split-seed: the split used --seed
