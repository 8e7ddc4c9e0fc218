"""Training on several manifests: figures labelled ``other`` are real outliers, not a class; the
"other" threshold can be set on held-out sources; the card names every source with its terms."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from xai_pipeline.config import ConfigError, TrainConfig
from xai_pipeline.store.source import SourceError
from xai_pipeline.train.fit import TrainData, _batch, choose_threshold
from xai_pipeline.train.synthetic import other_figure


def _manifest(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _two_manifests(tmp_path: Path, dataset_dir: Path) -> tuple[str, str]:
    a_rows, b_rows = [], []
    for label in ("fundus", "histology"):
        for src in sorted((dataset_dir / label).iterdir())[:6]:
            (tmp_path / "a" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "a" / label / src.name).write_bytes(src.read_bytes())
            a_rows.append({"file": f"{label}/{src.name}", "label": label, "source_repo": "src-a", "source_path": src.name})
    (tmp_path / "b").mkdir()
    for i, src in enumerate(sorted((dataset_dir / "fundus").iterdir())[6:10]):
        (tmp_path / "b" / src.name).write_bytes(src.read_bytes())
        b_rows.append({"file": src.name, "label": "fundus", "source_repo": "src-b", "source_path": src.name, "license": "CC-BY-4.0"})
    rng = np.random.default_rng(5)
    for i in range(8):
        other_figure(rng, 96).save(tmp_path / "b" / f"chart{i}.png")
        b_rows.append({"file": f"chart{i}.png", "label": "other", "source_repo": "charts-y" if i < 3 else "charts-x",
                       "source_path": f"chart{i}.png", "license": "MIT", "kind": "chart"})
    return _manifest(tmp_path / "a" / "manifest.jsonl", a_rows), _manifest(tmp_path / "b" / "manifest.jsonl", b_rows)


@pytest.mark.slow
def test_two_manifests_other_outliers_and_a_threshold_on_held_out_sources(tmp_path: Path, dataset_dir: Path) -> None:
    from xai_pipeline.cli import main
    from xai_pipeline.model.net import load_model
    from xai_pipeline.train.evaluate import predict_images
    from xai_pipeline.train.run import run_training
    from xai_pipeline.train.split import examples_and_split, training_data

    a, b = _two_manifests(tmp_path, dataset_dir)
    cfg = TrainConfig(data=f"{a},{b}", out=str(tmp_path / "out"), architecture="tiny_cnn", input_size=48, batch_size=8,
                      max_steps=4, val_fraction=0.34, holdout_sources="src-b,charts-y", threshold_on="holdout")
    examples, class_names, (train_idx, val_idx, hold_idx) = examples_and_split(cfg)
    assert class_names == ("fundus", "histology") and len(examples) == 24
    train = training_data(examples, train_idx, class_names, cfg)
    assert len(train.outliers) == sum(examples[i].label == "other" for i in train_idx) > 0
    assert len(train.labels) == len(train.images) == sum(examples[i].label != "other" for i in train_idx)

    report = run_training(cfg)
    model = load_model(tmp_path / "out" / "model.safetensors")
    held = training_data(examples, hold_idx, class_names, cfg)
    assert len(held.labels) == 4 and len(held.outliers) == 3
    expected = round(choose_threshold(predict_images(model, held.images)[0].max(axis=1), cfg.min_accept), 4)
    assert report["threshold_set_on"] == "holdout" and model.spec.other_threshold == expected
    assert report["source_holdout_other_rejected"]["figures"] == 3
    assert set(report["source_holdout_other_rejected"]["by_source"]) == {"charts-y"}
    assert report["sources_per_class"] == {"fundus": ["src-a"], "histology": ["src-a"]}
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "| fundus | in_class | src-b | b | 4 | CC-BY-4.0 |" in card and "| other | other_figure | charts-x | b | 5 | MIT |" in card
    assert "in-class figures of the held-out sources" in card and "called 'other' (held-out sources)" in card
    assert "Classes trained on one source only" in card

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tmp_path / "out" / "model.safetensors"), "--data", f"{a},{b}",
                 "--out", str(out), "--compound-figures", "2"]) == 0
    checks = json.loads((out / "figures.json").read_text())
    assert checks["other_rejected"]["figures"] == 8 and json.loads((out / "metrics.json").read_text())["n"] == 16


def test_threshold_on_holdout_needs_held_out_in_class_figures(tmp_path: Path, dataset_dir: Path) -> None:
    from xai_pipeline.train.run import run_training

    with pytest.raises(ConfigError, match="--threshold-on holdout needs --holdout-sources"):
        TrainConfig(data="x", out="y", threshold_on="holdout")
    with pytest.raises(ConfigError, match="--threshold-on must be one of"):
        TrainConfig(data="x", out="y", threshold_on="training")
    a, b = _two_manifests(tmp_path, dataset_dir)
    cfg = TrainConfig(data=f"{a},{b}", out=str(tmp_path / "out"), architecture="tiny_cnn", holdout_sources="charts-y", threshold_on="holdout")
    with pytest.raises(ConfigError, match="hold no in-class figure"):
        run_training(cfg)
    with pytest.raises(SourceError, match="listed more than once"):
        run_training(TrainConfig(data=f"{a},{a}", out=str(tmp_path / "out"), architecture="tiny_cnn"))


def test_batches_mix_real_and_procedural_outliers() -> None:
    green = Image.new("RGB", (40, 40), (0, 200, 0))
    data = TrainData([Image.new("RGB", (40, 40), (200, 0, 0))], np.array([0]), ("ct",), [green])
    cfg = TrainConfig(data="x", out="y", input_size=16, augment=False)
    pixels, targets = _batch(data, np.array([0, 0]), 40, np.random.default_rng(0), cfg)
    outliers = pixels[2:].float()
    real = ((outliers[:, 1] == 200) & (outliers[:, 0] == 0)).flatten(1).all(dim=1)
    assert pixels.shape == (42, 3, 16, 16) and targets.tolist() == [0, 0]
    assert 8 <= int(real.sum()) <= 32  # about half of the 40 slots
    assert torch.equal(pixels[0], pixels[1])


def test_model_card_leave_one_source_out_section(tmp_path: Path) -> None:
    from xai_pipeline.train import model_card

    results = Path(__file__).parents[3] / "bench" / "results" / "loso"
    reports = [results / f"loso-efficientnet_lite{k}-C0.1.json" for k in (0, 1, 2)]
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card\n\n## Limits\n- few sources\n")
    for _ in range(2):  # a second run replaces the section
        assert model_card.main(["--card", str(card), "--loso", *map(str, reports)]) == 0
    text = card.read_text()
    assert text.count("## Leave-one-source-out") == 1 and text.startswith("# Model card\n\n## Limits\n- few sources\n")
    lite0 = json.loads(reports[0].read_text())
    f1 = lite0["loso"]["loso_threshold"]["per_class"]["chest_xray"]["f1"]
    n_sources = len(lite0["sources_per_class"]["chest_xray"])
    unseen = ", ".join(f"{c} ({n})" for c, n in lite0["unseen_in_fold"].items()) or "none"
    assert f"| chest_xray | {n_sources} | {f1:.3f} |" in text and "efficientnet_lite2 LOSO F1" in text
    assert f"cannot be right when it is held out: {unseen}." in text and "figures)" not in text  # same data: no counts
    other_data = tmp_path / "lite1-other-data.json"
    other_data.write_text(json.dumps(json.loads(reports[1].read_text()) | {"n": 9999}))
    assert model_card.main(["--card", str(card), "--loso", str(reports[0]), str(other_data)]) == 0
    assert f"efficientnet_lite0 LOSO F1 ({lite0['n']:,} figures) | efficientnet_lite1 LOSO F1 (9,999 figures)" in card.read_text()
    with pytest.raises(SystemExit):
        model_card.main(["--card", str(card)])


def test_source_balance_tempers_big_sources_within_a_class() -> None:
    from xai_pipeline.train.fit import sampling_weights

    labels = np.array([0] * 300 + [0] * 4 + [1] * 10)
    sources = ["big"] * 300 + ["small"] * 4 + ["b"] * 10
    by_size = sampling_weights(labels, sources, 0.0)
    alike = sampling_weights(labels, sources, 1.0)
    half = sampling_weights(labels, sources, 0.5)
    assert by_size.sum() == pytest.approx(1.0) and by_size[:304].sum() == pytest.approx(0.5)  # classes balanced
    assert by_size[300:304].sum() == pytest.approx(0.5 * 4 / 304)  # sources by size
    assert alike[300:304].sum() == pytest.approx(0.25) and alike[:300].sum() == pytest.approx(0.25)
    assert half[300:304].sum() == pytest.approx(0.5 * 2 / (2 + 300 ** 0.5))
    assert np.allclose(sampling_weights(labels, [], 1.0), by_size)  # no sources: class-balanced
    with pytest.raises(ConfigError, match="--source-balance"):
        TrainConfig(data="a", out="b", source_balance=1.5)
    with pytest.raises(ConfigError, match=r"--sector-probability must be in \[0, 1\], got -0.1"):
        TrainConfig(data="a", out="b", sector_probability=-0.1)


def test_a_study_records_the_augmentations_that_are_on_and_no_others() -> None:
    from xai_pipeline.train.loso_card import augment_flags
    from xai_pipeline.train.loso_fit import _study_config

    plain = _study_config(TrainConfig(data="a", out="b"))
    assert "sector_probability" not in plain and "mr_contrast_probability" not in plain  # off: the studies before them match
    on = _study_config(TrainConfig(data="a", out="b", mr_contrast_probability=0.5))
    assert on == plain | {"mr_contrast_probability": 0.5}
    assert augment_flags(on) == ", `--mr-contrast-probability 0.5`" and augment_flags(plain) == ""  # as the card names the recipe
    both = _study_config(TrainConfig(data="a", out="b", mr_contrast_probability=0.5, simulated_ultrasound_probability=0.2))
    assert augment_flags(both) == ", `--mr-contrast-probability 0.5`, `--simulated-ultrasound-probability 0.2`"
    endo = _study_config(TrainConfig(data="a", out="b", simulated_endoscopy_probability=0.3))
    assert endo == plain | {"simulated_endoscopy_probability": 0.3} and augment_flags(endo) == ", `--simulated-endoscopy-probability 0.3`"


@pytest.mark.slow
def test_fine_tuned_folds_score_each_held_source_with_a_model_that_never_saw_it(tmp_path: Path, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from xai_pipeline.train.loso_card import table
    from xai_pipeline.train.loso_fit import main as loso_fit_main, run_folds
    from xai_pipeline.train.loso_folds import fold_dir
    from xai_pipeline.train.loso_score import score_folds
    from xai_pipeline.train.model_card import main as card_main

    a, b = _two_manifests(tmp_path, dataset_dir)
    out = tmp_path / "folds"
    out.mkdir()
    base = TrainConfig(data=f"{a},{b}", out=str(out), architecture="tiny_cnn", input_size=48, batch_size=8, max_steps=3,
                       val_fraction=0.34, source_balance=1.0)
    folds = run_folds(base, ["src-b", "charts-y"], out)
    assert json.loads((out / "loso-fit.json").read_text())["folds"] == folds
    assert [f["source"] for f in folds] == ["src-b", "charts-y"]
    assert folds[0]["held_out"] == {"fundus": 4} and set(folds[0]["recall"]) == {"fundus"}
    assert folds[1]["held_out"] == {"other": 3} and "recall" not in folds[1] and 0 <= folds[1]["other_rejected"] <= 1
    report = json.loads((fold_dir(out, "src-b") / "training_metrics.json").read_text())
    assert report["config"]["holdout_sources"] == "src-b" and report["threshold_set_on"] == "validation"
    assert report["config"]["source_balance"] == 1.0 and fold_dir(out, "pypi:a==1") == out / "pypi_a__1"
    assert fold_dir(out, "pypi:a==1, src-b,c") == out / "pypi_a__1_and_2_more"
    assert "src-b" in table(folds).splitlines()[1] and "fundus" in table(folds)
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--source-balance", "2"]) == 2  # names the flag
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--sector-probability", "1.5"]) == 2
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--mr-contrast-probability", "1.5"]) == 2
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--simulated-ultrasound-probability", "-1"]) == 2
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--simulated-mr-probability", "2"]) == 2
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--simulated-endoscopy-probability", "2"]) == 2
    capsys.readouterr()
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--architecture", "efficientnet_b9"]) == 2
    assert "--architecture must be one of" in capsys.readouterr().out  # the config error names train's flag
    assert loso_fit_main(["--data", a, "--hold", "src-a,src-b", "--hold", "src-b", "--out", str(out)]) == 2  # src-b twice
    assert loso_fit_main(["--data", a, "--hold", "src-a", "--out", str(out), "--min-accept", "1.5"]) == 2  # before any training

    # Pooled: each held figure scored again by its fold's model agrees with the fold's own report.
    import xai_pipeline.train.thresholds as thresholds_module

    seen_by_cross: dict[str, Any] = {}
    real_cross, real_floors = thresholds_module.cross_fold_thresholds, thresholds_module.study_floors

    def spy(p: np.ndarray, y: np.ndarray, fold: np.ndarray, caps: np.ndarray, min_accept: float, min_figures: int,
            raised: bool = False) -> np.ndarray:
        seen_by_cross.update(p=p, y=y, fold=fold, caps=caps)
        seen_by_cross.setdefault("raised", []).append(raised)
        real = real_cross(p, y, fold, caps, min_accept, min_figures, raised)
        # Floors above any probability (so every figure is 'other') show which decision used them.
        return np.full_like(real, 1.01) if raised else real

    monkeypatch.setattr(thresholds_module, "cross_fold_thresholds", spy)
    pooled = score_folds(base, ["src-b", "charts-y"], out)
    # Wiring: rows in label order (the four src-b fundus figures are fold 0, the three charts-y figures fold 1), six
    # modality columns, and each fold's own threshold as its cap.
    assert sorted(seen_by_cross["fold"].tolist()) == [0, 0, 0, 0, 1, 1, 1] and seen_by_cross["p"].shape == (7, 6)
    assert seen_by_cross["fold"][seen_by_cross["y"] == 2].tolist() == [0] * 4 and set(seen_by_cross["y"][seen_by_cross["fold"] == 1]) == {6}
    assert seen_by_cross["caps"][:, 2].tolist() == pytest.approx([folds[0]["threshold"], folds[1]["threshold"]])
    assert pooled["figures"] == 7 and set(pooled["per_source"]) == {"src-b", "charts-y"}
    assert pooled["unscored_sources"] == ["charts-x", "src-a"]
    assert pooled["per_source"]["src-b"]["accuracy"] == pytest.approx(folds[0]["recall"]["fundus"])
    assert pooled["per_source"]["charts-y"]["accuracy"] == pytest.approx(folds[1]["other_rejected"])
    confusion = np.array(pooled["with_threshold"]["confusion"])
    assert confusion.sum() == 7 and confusion[2].sum() == 4 and confusion[6].sum() == 3  # rows: fundus, other
    assert confusion[2, 2] == round(4 * folds[0]["recall"]["fundus"]) and confusion[6, 6] == round(3 * folds[1]["other_rejected"])
    assert np.array(pooled["argmax"]["confusion"])[6].sum() == 3 and pooled["argmax"]["other_figure_called_other"] == 0.0
    # Cross-fold: each fold's per-class thresholds from the other fold's held figures, never above its own.
    own = {f["source"]: f["threshold"] for f in folds}
    for fold, t in pooled["cross_fold_thresholds"].items():
        assert set(t) == {"chest_xray", "ct", "fundus", "histology", "mri", "ultrasound"} and max(t.values()) <= own[fold] + 1e-9
    assert pooled["cross_fold_thresholds"]["charts-y"]["fundus"] <= own["charts-y"]
    crossed = np.array(pooled["cross_fold"]["confusion"])
    assert crossed.sum() == 7 and crossed[2].sum() == 4 and pooled["cross_fold"]["min_accept"] == 0.97
    assert crossed[2, 2] >= confusion[2, 2] and crossed[6, 6] <= confusion[6, 6]  # lower thresholds keep more, reject less
    assert pooled["per_source"]["src-b"]["cross_fold_accuracy"] >= pooled["per_source"]["src-b"]["accuracy"]
    # Raised (cross_fold_thresholds' rule tested on its own in test_thresholds): the floors the spy returns, 1.01,
    # decide cross_fold_raised and nothing else, so there every figure is 'other'.
    assert seen_by_cross["raised"] == [False, True]
    assert all(set(t.values()) == {1.01} for t in pooled["cross_fold_raised_thresholds"].values())
    lifted = np.array(pooled["cross_fold_raised"]["confusion"])
    assert lifted.sum() == 7 and lifted[:, 6].sum() == 7 and pooled["cross_fold_raised"]["in_class_kept"] == 0.0
    assert pooled["per_source"]["src-b"]["raised_accuracy"] == 0.0 and pooled["per_source"]["charts-y"]["raised_accuracy"] == 1.0
    assert pooled["with_threshold"]["in_class_kept"] > 0 and pooled["cross_fold"]["in_class_kept"] > 0
    # Study floors (study_floors' rule tested in test_thresholds): every fold's held figures together, as scored, at the
    # study's min_accept and min_figures; what the rule returns is what the JSON holds.
    from xai_pipeline.train.thresholds import ClassThreshold

    floor_calls: list[tuple[Any, ...]] = []

    def floors_spy(p: np.ndarray, y: np.ndarray, names: Any, min_accept: float, min_figures: int) -> dict[str, ClassThreshold]:
        floor_calls.append((p, y, tuple(names), min_accept, min_figures))
        return {"fundus": ClassThreshold(0.4321, "leave-source-out study", 4)}

    monkeypatch.setattr(thresholds_module, "study_floors", floors_spy)
    spied = score_folds(base, ["src-b", "charts-y"], out, min_accept=0.9, min_figures=3)
    (call,) = floor_calls
    assert np.array_equal(call[0], seen_by_cross["p"]) and np.array_equal(call[1], seen_by_cross["y"])
    assert call[2:] == (("chest_xray", "ct", "fundus", "histology", "mri", "ultrasound"), 0.9, 3)
    assert spied["study_floors"] == {"floors": {"fundus": {"threshold": 0.4321, "figures": 4}}, "min_accept": 0.9, "min_figures": 3}
    monkeypatch.setattr(thresholds_module, "study_floors", real_floors)
    assert pooled["study_floors"]["min_accept"] == 0.97 and set(pooled["study_floors"]["floors"]) <= {"fundus"}
    frontier = pooled["frontier"]  # one threshold for all: at 0 argmax, rejecting more as it rises
    assert frontier[0]["threshold"] == 0.0 and frontier[0]["macro_f1"] == pytest.approx(pooled["argmax"]["macro_f1"])
    rejected = [f["other_figure_called_other"] for f in frontier]
    assert rejected == sorted(rejected) and rejected[0] == 0.0
    # Scored on other manifests (--score-data): only their figures of the held sources count.
    on_b = score_folds(replace(base, data=b), ["src-b", "charts-y"], out)
    assert on_b["figures"] == 7 and on_b["per_source"] == pooled["per_source"] and on_b["unscored_sources"] == ["charts-x"]  # src-a is only in --data
    # Each fold's figure-type head (--type-heads): fitted on none of its held sources, and the study scored as the job labels.
    import xai_pipeline.train.figure_type as figure_type_module
    from xai_pipeline.model.net import load_model
    from xai_pipeline.train.loso_score import TYPED_FILE, fit_fold_type_heads

    fitted_on: list[set[str]] = []
    real_figures = figure_type_module.labelled_figures

    def figures_spy(*args: Any, **kwargs: Any) -> Any:
        images, types, sources = real_figures(*args, **kwargs)
        fitted_on.append(set(sources))
        return images, types, sources

    monkeypatch.setattr(figure_type_module, "labelled_figures", figures_spy)
    fit_fold_type_heads(base, ["src-b", "charts-y"], out, b)
    assert len(fitted_on) == 2 and "src-a" in fitted_on[0] and "src-b" not in fitted_on[0] | fitted_on[1]  # b's fundus rows are scans of no --scans
    assert "charts-y" in fitted_on[0] and "charts-y" not in fitted_on[1] and "charts-x" in fitted_on[1]
    typed_file = fold_dir(out, "charts-y") / TYPED_FILE
    assert load_model(typed_file).spec.figure_types and "medical_image" in load_model(typed_file).spec.figure_types
    stamp_typed = typed_file.stat().st_mtime_ns
    fit_fold_type_heads(base, ["src-b", "charts-y"], out, b)  # the same fold models and data: reused
    assert typed_file.stat().st_mtime_ns == stamp_typed and len(fitted_on) == 2
    fit_fold_type_heads(base, ["charts-y"], out, b, per_scan_class=0)  # another head recipe: fitted again
    assert len(fitted_on) == 3 and json.loads((fold_dir(out, "charts-y") / "type_head.json").read_text())["per_scan_class"] == 0
    fit_fold_type_heads(base, ["charts-y"], out, b, per_scan_class=0, refit=True)  # --retrain
    assert len(fitted_on) == 4
    fit_fold_type_heads(base, ["charts-y"], out, b)  # back to figure_type's default cap
    assert len(fitted_on) == 5 and typed_file.stat().st_mtime_ns != stamp_typed
    with pytest.raises(ConfigError, match="local manifests"):
        fit_fold_type_heads(replace(base, data=f"{a},s3://bucket/b/manifest.jsonl"), ["src-b"], out, b)
    with pytest.raises(ConfigError, match="--type-heads"):
        fit_fold_type_heads(base, ["src-b"], out, str(tmp_path / "missing.jsonl"))
    typed = score_folds(base, ["src-b", "charts-y"], out, typed=True)
    for key in ("with_threshold", "cross_fold", "cross_fold_raised", "argmax", "frontier", "cross_fold_thresholds",
                "cross_fold_raised_thresholds"):
        assert json.dumps(typed[key]) == json.dumps(pooled[key])  # (NaN-safe) the typed file's modality head is the fold's
    gated = typed["with_types"]
    assert set(gated) == {"with_threshold", "cross_fold", "cross_fold_raised", "argmax", "frontier"}
    for name in ("with_threshold", "cross_fold", "cross_fold_raised", "argmax"):  # the gate only ever adds 'other'
        assert gated[name]["other_figure_called_other"] >= pooled[name]["other_figure_called_other"]
        assert gated[name]["in_class_kept"] <= pooled[name]["in_class_kept"]
    from xai_pipeline.model.labels import image_labels
    from xai_pipeline.train.evaluate import head_probabilities

    typed_model = load_model(typed_file)  # charts-y's figures, labelled by its fold's head alone
    charts = [Image.open(tmp_path / "b" / f"chart{i}.png").convert("RGB") for i in range(3)]
    p_charts, t_charts = head_probabilities(typed_model, charts)
    alone = image_labels(p_charts, t_charts, typed_model.spec.class_names, typed_model.spec.figure_types, None)[0]
    assert gated["argmax"]["other_figure_called_other"] == pytest.approx(np.mean([m == "other" for m in alone]))
    # bench.threshold_rules on this study: --thresholds-of lays a model's own thresholds over every fold; the study's own
    # decisions come out as score_folds gave them (what checks the bench).
    from bench.threshold_rules import study_rules
    from tests.helpers import tiny_model_file
    from xai_pipeline.model.net import save_model

    fixed = tiny_model_file(tmp_path / "fixed.safetensors", class_names=("ct", "fundus", "chest_xray", "histology", "mri", "ultrasound"),
                            version="f1")
    fixed_model = load_model(fixed)
    fixed_model.spec = replace(fixed_model.spec, other_threshold=1.0, class_thresholds={"ct": 0.999})
    save_model(fixed_model, fixed)
    with pytest.raises(ValueError, match="a second model versioned f1"):
        study_rules(out, 0.97, 10, None, (fixed, fixed))
    rules = study_rules(out, 0.97, 10, None, (fixed,))
    assert set(rules["model_f1"]["thresholds"]) == {"src-b", "charts-y"}
    assert all(t == {"chest_xray": 1.0, "ct": 0.999, "fundus": 1.0, "histology": 1.0, "mri": 1.0, "ultrasound": 1.0}
               for t in rules["model_f1"]["thresholds"].values())
    assert rules["model_f1"]["in_class_kept"] == 0.0 and rules["model_f1"]["other_figure_called_other"] == 1.0  # nothing that sure
    for name in ("fold_own", "cross_fold"):
        assert rules[name]["macro_f1"] == pytest.approx(pooled["with_threshold" if name == "fold_own" else name]["macro_f1"], nan_ok=True)
    assert gated["argmax"]["other_figure_called_other"] > 0  # the gate does act: without it argmax calls no chart 'other'
    assert typed["per_source"]["charts-y"]["typed_accuracy"] >= typed["per_source"]["charts-y"]["accuracy"]
    assert typed["per_source"]["src-b"]["typed_accuracy"] <= typed["per_source"]["src-b"]["accuracy"]
    monkeypatch.undo()

    import xai_pipeline.train.loso_fit as loso_fit_module
    import xai_pipeline.train.loso_score as loso_score_module

    scored_with: list[str] = []
    trains: list[bool] = []
    monkeypatch.setattr(loso_fit_module, "run_folds", lambda base, folds, out, retrain=False, train=True: trains.append(train) or folds_done)
    typed_with: list[Any] = []
    monkeypatch.setattr(loso_score_module, "score_folds", lambda base, folds, out, *rest, typed=False: scored_with.append(base.data) or typed_with.append(typed) or pooled)
    monkeypatch.setattr(loso_score_module, "fit_fold_type_heads",
                        lambda base, folds, out, other, per_scan_class=None, refit=False: typed_with.append((folds, other, per_scan_class, refit)))
    folds_done, elsewhere = folds, tmp_path / "elsewhere"
    assert loso_fit_main(["--data", f"{a},{b}", "--hold", "src-b", "--hold", "charts-y", "--out", str(elsewhere), "--score-data", b]) == 0
    assert scored_with == [b] and trains == [False] and not (elsewhere / "loso-fit.json").exists()
    assert json.loads((elsewhere / "loso-fit-scored.json").read_text())["config"]["score_data"] == b
    assert loso_fit_main(["--data", f"{a},{b}", "--hold", "src-b", "--out", str(elsewhere), "--score-data", b, "--type-heads", b]) == 0
    assert typed_with == [False, (["src-b"], b, None, False), True]  # heads fitted, then scored with them
    assert "type_head_per_scan_class" not in json.loads((elsewhere / "loso-fit-scored.json").read_text())["config"]  # the default head
    assert loso_fit_main(["--data", f"{a},{b}", "--hold", "src-b", "--out", str(elsewhere), "--score-data", b, "--type-heads", b,
                          "--type-head-per-scan-class", "0", "--retrain"]) == 0
    assert typed_with[3:] == [(["src-b"], b, 0, True), True]
    assert json.loads((elsewhere / "loso-fit-scored.json").read_text())["config"]["type_head_per_scan_class"] == 0  # recorded: the heads differ
    monkeypatch.undo()

    # Several sources in one fold; a finished fold with the same configuration is not trained again.
    both = run_folds(base, ["src-b,charts-y"], out)
    assert both[0]["held_out"] == {"fundus": 4, "other": 3} and fold_dir(out, "src-b,charts-y") == out / "src-b_and_1_more"
    model_file = fold_dir(out, "src-b,charts-y") / "model.safetensors"
    stamp = model_file.stat().st_mtime_ns
    (out / "loso-fit.json").write_text('{"pooled": "a finished study"}')
    assert run_folds(base, ["src-b,charts-y"], out) == both and model_file.stat().st_mtime_ns == stamp
    assert (out / "loso-fit.json").read_text() == '{"pooled": "a finished study"}'  # all reused: the study's file is left whole
    assert loso_fit_main(["--data", f"{a},{b}", "--hold", "src-b", "--out", str(tmp_path / "none"), "--score-data", b]) == 2  # never trains
    assert "not finished" in capsys.readouterr().out and not (tmp_path / "none" / "src-b").exists()
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # a study's folder moved elsewhere is still finished
    assert run_folds(replace(base, out=str(moved)), ["src-b,charts-y"], moved) == both
    assert (fold_dir(moved, "src-b,charts-y") / "model.safetensors").stat().st_mtime_ns == stamp  # copy2 keeps it: not retrained
    assert run_folds(replace(base, seed=1), ["src-b,charts-y"], out)[0]["held_out"] == both[0]["held_out"]
    assert model_file.stat().st_mtime_ns != stamp  # another configuration trains again

    card = tmp_path / "card.md"
    card.write_text("# Model card\n\n## Limits\n- x\n")
    with pytest.raises(SystemExit):  # a report without pooled scores (run_folds alone) is refused
        card_main(["--card", str(card), "--loso-fit", str(out / "loso-fit.json")])
    (out / "loso-fit.json").write_text(json.dumps({"config": json.loads((out / "loso-fit.json").read_text())["config"],
                                                   "folds": folds, "pooled": pooled}))
    assert card_main(["--card", str(card), "--loso-fit", str(out / "loso-fit.json")]) == 0
    text = card.read_text()
    assert text.startswith("# Model card\n\n## Limits\n- x\n") and "## Fine-tuned leave-one-source-out" in text
    assert f"| src-b | fundus | 4 | {pooled['per_source']['src-b']['accuracy']:.3f} |" in text and "| charts-y | other | 3 |" in text
    assert "| fundus | 4 |" in text and "macro-F1, six modalities" in text and "| threshold | 0 | 0.3 |" in text and "Sources no fold held: charts-x, src-a." in text
    assert card_main(["--card", str(card), "--loso-fit", str(out / "loso-fit.json")]) == 0 and card.read_text() == text  # replaced, not added
    assert "### With the figure-type head" not in text and "Folds have no figure-type head" in text
    (out / "loso-fit.json").write_text(json.dumps({"config": json.loads((out / "loso-fit.json").read_text())["config"],
                                                   "folds": folds, "pooled": typed}))
    assert card_main(["--card", str(card), "--loso-fit", str(out / "loso-fit.json")]) == 0
    typed_text = card.read_text()
    assert typed_text.count("### With the figure-type head") == 1 and "Folds have no figure-type head" not in typed_text
    assert f"| macro-F1, six modalities | {typed['with_types']['with_threshold']['macro_f1']:.3f} |" in typed_text
    from xai_pipeline.train.loso_card import pooled_table

    assert "type head alone" in pooled_table(typed) and "type head" not in pooled_table(pooled)
    assert "*Raised* cross-fold thresholds" in text and "| raised + type head |" not in text and "raised + type head" in typed_text
    assert f"| modality figures kept (not `other`) | {pooled['with_threshold']['in_class_kept']:.3f} | 0.000 |" in text
    assert "raised cross-fold" in pooled_table(pooled)
    before_raised = {k: v for k, v in pooled.items() if not k.startswith("cross_fold_raised")}  # a study scored before them
    (out / "loso-fit.json").write_text(json.dumps({"config": json.loads((out / "loso-fit.json").read_text())["config"],
                                                   "folds": folds, "pooled": before_raised}))
    assert card_main(["--card", str(card), "--loso-fit", str(out / "loso-fit.json")]) == 0
    assert "Raised" not in card.read_text() and "raised" not in pooled_table(before_raised)


def test_fold_scores_keep_a_top_class_only_above_its_own_threshold() -> None:
    from xai_pipeline.train.loso_score import label_scores

    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    plain, kept = label_scores(p, [2, 3], [0.5, 0.75], 7, 6)  # the fold's classes are labels 2 and 3
    assert np.array_equal(plain[:, [2, 3]], p) and plain[:, [0, 1, 4, 5, 6]].sum() == 0
    assert kept.argmax(axis=1).tolist() == [2, 2, 6]  # 0.6 >= 0.5 kept; 0.7 < 0.75 is other
    assert kept[2].tolist() == [0, 0, 0, 0, 0, 0, 1] and np.array_equal(kept[:2, [2, 3]], p[:2])
    _, pooled_t = label_scores(p, [2, 3], [0.65, 0.65], 7, 6)
    assert pooled_t.argmax(axis=1).tolist() == [2, 6, 3]


def test_card_limits_name_single_and_dominated_sources() -> None:
    from xai_pipeline.train.model_card import _source_limits

    lines = _source_limits({"sources_per_class": {"ct": ["medpix", "dicom"], "mri": ["medpix"], "fundus": ["a", "b"]},
                            "figures_per_source": {"ct": {"medpix": 247, "dicom": 1}, "mri": {"medpix": 244}, "fundus": {"a": 60, "b": 60}}})
    assert lines[0].endswith("mri (medpix).")
    assert lines[1].endswith("ct (medpix: 247 of 248 training figures; dicom 1).") and "fundus" not in lines[1]
    assert _source_limits({}) == []


def test_the_card_names_each_off_by_default_augmentation_that_was_on() -> None:
    from xai_pipeline.train.loso_card import AUGMENT_FLAGS, AUGMENT_WHAT, augment_lines

    assert set(AUGMENT_WHAT) == set(AUGMENT_FLAGS)  # each flag says what it does
    cfg = {"simulated_mr_probability": 0.2, "sector_probability": 0.0, "simulated_endoscopy_probability": 0.3}
    assert augment_lines(cfg) == [f"- With probability 0.2 (`--simulated-mr-probability`): {AUGMENT_WHAT['simulated_mr_probability']}.",
                                  f"- With probability 0.3 (`--simulated-endoscopy-probability`): {AUGMENT_WHAT['simulated_endoscopy_probability']}."]
    assert augment_lines({}) == []
    card = (Path(__file__).parents[3] / "xai_pipeline" / "weights" / "MODEL_CARD.md").read_text()
    method = card[card.index("## Method"): card.index("## Metrics")]
    assert "(`--simulated-ultrasound-probability`)" in method and "(`--simulated-mr-probability`)" in method  # the bundled model's recipe
