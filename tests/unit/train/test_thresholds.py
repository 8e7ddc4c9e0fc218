"""Per-class "other" thresholds: set on held-out sources (validation groups only where those are
too few), never above the pooled threshold unless a leave-source-out study's floors raise them,
carried by the model file and used by every label."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_file
from tests.unit.train.test_train_sources import _two_manifests
from xai_pipeline.model.labels import confident_rows, image_labels
from xai_pipeline.model.net import ModelSpec, load_model, read_spec, save_model
from xai_pipeline.train.evaluate import compute_metrics
from xai_pipeline.train.thresholds import HELD_OUT_SOURCES, WITH_VALIDATION, class_thresholds


def _rows(top: int, confidences: list[float], classes: int = 3) -> np.ndarray:
    """Probability rows whose top class is ``top`` with these top probabilities."""
    rows = np.full((len(confidences), classes), 0.0)
    for i, c in enumerate(confidences):
        rows[i] = (1.0 - c) / (classes - 1)
        rows[i, top] = c
    return rows


def test_each_class_keeps_its_share_of_right_figures_on_held_out_sources_capped_by_the_pooled_threshold() -> None:
    held_a = np.linspace(0.60, 0.99, 20)  # class 0: 20 right figures of held-out sources
    p = np.vstack([_rows(0, list(held_a)), _rows(0, [0.30]),  # class 0 in validation: not used (enough held-out)
                   _rows(1, [0.95, 0.97]), _rows(1, [0.52, 0.70, 0.91]),  # class 1: 2 held-out, 3 validation
                   _rows(2, [0.99]), _rows(0, [0.99])])  # a class-1 figure called class 0 (wrong: not counted)
    y = np.array([0] * 21 + [1] * 5 + [2, 1])
    held = np.array([True] * 20 + [False] + [True, True, False, False, False] + [False, True])
    names = ("a", "b", "c")
    got = class_thresholds(p, y, held, names, pooled=0.9, min_accept=0.9, min_figures=3)
    assert got["a"].basis == HELD_OUT_SOURCES and got["a"].figures == 20
    assert got["a"].threshold == pytest.approx(np.floor(np.quantile(held_a, 0.1, method="lower") * 1e4) / 1e4)
    assert got["b"].basis == WITH_VALIDATION and got["b"].figures == 5 and got["b"].threshold == 0.52
    assert got["c"].threshold == 0.9 and got["c"].basis == WITH_VALIDATION  # 0.99 capped by the pooled threshold
    none = class_thresholds(p[:20], y[:20], held[:20], names, pooled=0.9, min_accept=0.9, min_figures=3)
    assert none["b"].figures == 0 and none["b"].threshold == 0.9
    with pytest.raises(ValueError, match="min_accept"):
        class_thresholds(p, y, held, names, pooled=0.9, min_accept=0.0, min_figures=3)


def test_cross_fold_thresholds_are_set_on_the_other_folds_held_figures_only() -> None:
    from xai_pipeline.train.thresholds import cross_fold_thresholds

    fold0 = np.linspace(0.50, 0.69, 20)  # class 0 right in fold 0, all low
    fold1 = np.linspace(0.80, 0.99, 20)  # class 0 right in fold 1, all high
    p = np.vstack([_rows(0, list(fold0)), _rows(0, list(fold1)),
                   _rows(1, [0.55] * 3), _rows(1, [0.99]),  # class 1: 3 right in fold 0; a figure of no class called 1 in fold 1
                   _rows(1, [0.40])])  # a class-0 figure of fold 1 whose top class is 1: not a right class-0 figure
    y = np.array([0] * 40 + [1] * 3 + [3, 0])
    fold = np.array([0] * 20 + [1] * 20 + [0] * 3 + [1, 1])
    caps = np.array([[0.9, 0.9, 0.9], [0.75, 0.6, 0.9]])
    got = cross_fold_thresholds(p, y, fold, caps, min_accept=0.9, min_figures=3)
    q1 = np.floor(np.quantile(fold1, 0.1, method="lower") * 1e4) / 1e4  # 0.81 from fold 1's figures
    assert got[0, 0] == pytest.approx(q1) and q1 < 0.9  # fold 0's class 0: set on fold 1 only (its own low ones unseen)
    assert got[1, 0] == pytest.approx(np.floor(np.quantile(fold0, 0.1, method="lower") * 1e4) / 1e4) and got[1, 0] < 0.75
    assert got[1, 1] == pytest.approx(0.55)  # fold 0's three class-1 figures; 0.55 < fold 1's own 0.6
    assert got[0, 1] == 0.9 and got[0, 2] == 0.9 and got[1, 2] == 0.9  # nothing of class 1 (2) elsewhere: own threshold
    assert cross_fold_thresholds(p, y, fold, caps, min_accept=0.9, min_figures=4)[1, 1] == 0.6  # too few: own threshold
    low_caps = np.array([[0.7, 0.9, 0.9], [0.75, 0.6, 0.9]])  # fold 1's figures would give 0.81: fold 0's own 0.7 binds
    assert cross_fold_thresholds(p, y, fold, low_caps, min_accept=0.9, min_figures=3)[0, 0] == 0.7
    # Counted: only figures of class c whose top class is c. Fold 1's stray class-0 figure (top class 1, 0.40)
    # would set fold 0's class-0 threshold to 0.40 at min_accept=1.0 if it counted.
    assert cross_fold_thresholds(p, y, fold, caps, min_accept=1.0, min_figures=3)[0, 0] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="min_accept"):
        cross_fold_thresholds(p, y, fold, caps, min_accept=1.5, min_figures=3)


def test_raised_cross_fold_thresholds_only_ever_tighten_the_folds_own() -> None:
    from xai_pipeline.train.thresholds import cross_fold_thresholds

    fold0 = np.linspace(0.50, 0.69, 20)  # class 0 right in fold 0: a new hospital the models are unsure of
    fold1 = np.linspace(0.95, 0.99, 20)  # class 0 right in fold 1: new hospitals stay sure
    p = np.vstack([_rows(0, list(fold0)), _rows(0, list(fold1)), _rows(1, [0.55] * 3)])
    y = np.array([0] * 40 + [1] * 3)
    fold = np.array([0] * 20 + [1] * 20 + [0] * 3)
    own = np.array([[0.6, 0.6, 0.6], [0.6, 0.5, 0.6]])
    got = cross_fold_thresholds(p, y, fold, own, min_accept=0.9, min_figures=3, raised=True)
    q1 = np.floor(np.quantile(fold1, 0.1, method="lower") * 1e4) / 1e4
    assert got[0, 0] == pytest.approx(q1) and q1 > 0.95  # raised from fold 0's own 0.6 by fold 1's sure figures
    assert got[1, 0] == 0.6  # fold 0's unsure figures would give 0.51: fold 1's own 0.6 is the floor
    assert got[1, 1] == 0.55  # three class-1 figures of fold 0 at 0.55 raise fold 1's own 0.5
    assert got[0, 1] == 0.6 and got[0, 2] == 0.6  # nothing of the class elsewhere: own threshold
    assert cross_fold_thresholds(p, y, fold, own, min_accept=0.9, min_figures=4, raised=True)[1, 1] == 0.5  # too few
    lowered = cross_fold_thresholds(p, y, fold, own, min_accept=0.9, min_figures=3)
    assert (got >= own).all() and (lowered <= own).all() and got[0, 0] > lowered[0, 0]


def test_study_floors_pool_every_folds_right_figures_and_raise_the_class_thresholds() -> None:
    from xai_pipeline.train.thresholds import RAISED, study_floors

    fold0 = np.linspace(0.50, 0.69, 20)  # class 0 right, two folds' held sources together
    fold1 = np.linspace(0.95, 0.99, 20)
    p = np.vstack([_rows(0, list(fold0)), _rows(0, list(fold1)), _rows(1, [0.55] * 3),
                   _rows(0, [0.10 + 0.3]),  # a class-1 figure called 0: not a right class-0 figure
                   _rows(2, [0.99])])  # a figure of no class (y = 3) called 2: not counted anywhere
    y = np.array([0] * 40 + [1] * 3 + [1, 3])
    floors = study_floors(p, y, ("a", "b", "c"), min_accept=0.9, min_figures=3)
    both = np.concatenate([fold0, fold1])
    assert floors["a"].threshold == pytest.approx(np.floor(np.quantile(both, 0.1, method="lower") * 1e4) / 1e4)
    assert floors["a"].figures == 40 and floors["b"].threshold == 0.55 and floors["b"].figures == 3
    assert "c" not in floors  # no right figure of class c: no floor
    assert "b" not in study_floors(p, y, ("a", "b", "c"), min_accept=0.9, min_figures=4)  # too few
    # At min_accept 1.0 the lowest right figure sets it: the stray 0.40 would if it counted.
    assert study_floors(p, y, ("a", "b", "c"), min_accept=1.0, min_figures=3)["a"].threshold == 0.5
    with pytest.raises(ValueError, match="min_accept"):
        study_floors(p, y, ("a", "b", "c"), min_accept=0.0, min_figures=3)
    # Raised: t_c = max(min(t, Q), F_c), above the pooled t where the floor is; a floor below changes nothing.
    held = np.ones(len(p), dtype=bool)
    in_class = y < 3
    plain = class_thresholds(p[in_class], y[in_class], held[in_class], ("a", "b", "c"), pooled=0.9, min_accept=0.9, min_figures=3)
    lifted = class_thresholds(p[in_class], y[in_class], held[in_class], ("a", "b", "c"), pooled=0.9, min_accept=0.9,
                              min_figures=3, floors={"a": 0.96, "b": 0.2, "c": 0.93})
    assert plain["a"].threshold < 0.9 and lifted["a"].threshold == 0.96 and lifted["a"].basis == HELD_OUT_SOURCES + RAISED
    assert lifted["b"] == plain["b"]  # the floor 0.2 is below b's own 0.55
    assert plain["c"].basis == "none (pooled threshold)" and lifted["c"].threshold == 0.93 and lifted["c"].basis.endswith(RAISED)
    assert class_thresholds(p[in_class], y[in_class], held[in_class], ("a", "b", "c"), pooled=0.9, min_accept=0.9,
                            min_figures=3, floors={}) == plain


def test_read_study_floors_fails_fast_naming_the_flag(tmp_path: Path) -> None:
    import hashlib

    from xai_pipeline.config import ConfigError
    from xai_pipeline.train.thresholds import read_study_floors

    study = tmp_path / "loso-fit.json"

    def floors(entries: dict[str, Any], min_accept: float = 0.97) -> None:
        study.write_text(json.dumps({"pooled": {"study_floors": {"floors": entries, "min_accept": min_accept, "min_figures": 10}}}))

    with pytest.raises(ConfigError, match="--floors .*loso-fit.json"):
        read_study_floors(study, ("a", "b"), 0.97)  # no such file
    study.write_text(json.dumps({"figures": 3}))
    with pytest.raises(ConfigError, match="no study_floors"):
        read_study_floors(study, ("a", "b"), 0.97)
    floors({"z": {"threshold": 0.5, "figures": 10}})
    with pytest.raises(ConfigError, match="does not have: z"):
        read_study_floors(study, ("a", "b"), 0.97)
    for bad in ({"figures": 10}, {"threshold": "0.5"}, {"threshold": 1.5}, {"threshold": True}, 0.5):
        floors({"a": bad})
        with pytest.raises(ConfigError, match="class a's floor is not a threshold"):
            read_study_floors(study, ("a", "b"), 0.97)
    floors({"a": {"threshold": 0.5, "figures": 10}}, min_accept=0.9)
    with pytest.raises(ConfigError, match="--min-accept is 0.97"):
        read_study_floors(study, ("a", "b"), 0.97)
    floors({"a": {"threshold": 0.5, "figures": 10}})
    assert read_study_floors(study, ("a", "b"), 0.97) == {
        "study": "loso-fit.json", "study_sha256": hashlib.sha256(study.read_bytes()).hexdigest(),
        "floors": {"a": {"threshold": 0.5, "figures": 10}}, "min_accept": 0.97, "min_figures": 10}


def test_without_floors_the_card_section_reads_as_it_did_before_floors_existed() -> None:
    from xai_pipeline.train.thresholds_card import card_section

    report = {"pooled_threshold": 0.87, "class_thresholds": {"ct": {"threshold": 0.5, "basis": "held-out sources", "figures": 12}},
              "groups": {}, "source_check": []}
    # The rule paragraph, word for word as model 1.4.0's card has it (make model PACKAGED_SET=packaged-v3 rebuilds that card).
    assert """Version 1.4.0. `python -m xai_pipeline.train.thresholds` (run by `make model`): class `c` keeps the top class when
its probability is at least `t_c = min(t, Q_{1−a})`, `t` = 0.87 the pooled
threshold above, `Q` the lower quantile of the top probability over the figures of class `c` the
argmax gets right, on train's held-out sources where they hold enough of them, else on the
held-out sources and the validation groups together (in-source for CT and MRI: optimistic for a
new hospital). A class's threshold is never above `t`. The *Metrics* above are at the pooled `t`.

| class | threshold | set on | right figures |
|---|---|---|---|
| ct | 0.5 | held-out sources | 12 |
""" in card_section(report, "1.4.0")
    assert "threshold set by the same rule on that class's *other* held-out sources only:" in card_section(report, "1.4.0")


def test_the_source_check_scores_each_held_out_source_with_a_threshold_from_the_others() -> None:
    from types import SimpleNamespace

    from xai_pipeline.train.thresholds import source_check

    model = SimpleNamespace(spec=ModelSpec(name="m", architecture="tiny_cnn", class_names=("a", "b", "c"), other_threshold=0.85))
    p = np.vstack([_rows(0, [0.60, 0.65]), _rows(0, [0.90, 0.95]), _rows(0, [0.70]), _rows(1, [0.99]), _rows(1, [0.9])])
    y = np.array([0, 0, 0, 0, 0, 0, 1])  # the sixth figure is class a called b
    sources = ["s1", "s1", "s2", "s2", "s3", "s3", "s4"]
    rows = {r["source"]: r for r in source_check(model, p, None, y, sources, {"s1", "s2", "s3", "s4"}, min_accept=0.97)}
    assert set(rows) == {"s1", "s2", "s3"}  # class b has one held-out source: nothing to check
    assert (rows["s1"]["threshold_from_others"], rows["s1"]["kept"], rows["s1"]["kept_pooled"]) == (0.7, 0, 0)
    assert (rows["s2"]["threshold_from_others"], rows["s2"]["kept"], rows["s2"]["kept_pooled"]) == (0.6, 2, 2)
    assert (rows["s3"]["threshold_from_others"], rows["s3"]["kept"], rows["s3"]["kept_pooled"], rows["s3"]["figures"]) == (0.6, 1, 0, 2)
    # With study floors: a's threshold from the others is raised to the floor 0.92 where that is higher.
    raised = {r["source"]: r for r in source_check(model, p, None, y, sources, {"s1", "s2", "s3", "s4"}, 0.97, {"a": 0.92})}
    assert [raised[s]["threshold_from_others"] for s in ("s1", "s2", "s3")] == [0.92, 0.92, 0.92]
    assert (raised["s1"]["kept"], raised["s2"]["kept"], raised["s3"]["kept"]) == (0, 1, 0)  # only s2's 0.95 clears 0.92
    low = {r["source"]: r for r in source_check(model, p, None, y, sources, {"s1", "s2", "s3", "s4"}, 0.97, {"a": 0.1})}
    assert low == rows  # a floor below every threshold changes nothing


def test_the_spec_carries_per_class_thresholds_into_labels_and_metrics(tmp_path: Path) -> None:
    spec = ModelSpec(name="m", architecture="tiny_cnn", class_names=("a", "b", "c"), other_threshold=0.8, class_thresholds={"b": 0.5})
    assert spec.decision_thresholds == (0.8, 0.5, 0.8)
    assert replace(spec, class_thresholds={}).decision_thresholds == 0.8
    assert ModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="does not have"):
        replace(spec, class_thresholds={"z": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        replace(spec, class_thresholds={"a": 1.5})
    p = np.vstack([_rows(0, [0.7]), _rows(1, [0.6]), _rows(2, [0.85])])
    assert confident_rows(p, spec.decision_thresholds).tolist() == [False, True, True]
    assert confident_rows(p, 0.8).tolist() == [False, False, True] and confident_rows(p, None).all()
    modalities, _ = image_labels(p, None, spec.class_names, (), spec.decision_thresholds)
    assert modalities == ["other", "b", "c"]
    metrics = compute_metrics(np.array([0, 1, 2]), p, list(spec.class_names), spec.decision_thresholds)
    assert metrics.other_rate == pytest.approx(1 / 3)
    path = tiny_model_file(tmp_path / "m.safetensors", class_names=("a", "b"))
    model = load_model(path)
    model.spec = replace(model.spec, other_threshold=0.7, class_thresholds={"a": 0.55})
    save_model(model, path)
    assert read_spec(path).decision_thresholds == (0.55, 0.7)


def test_the_thresholds_command_sets_them_on_held_out_sources_and_reports_before_and_after(tmp_path: Path, dataset_dir: Path) -> None:
    a, b = _two_manifests(tmp_path, dataset_dir)
    path = tiny_model_file(tmp_path / "in.safetensors", class_names=("fundus", "histology"), size=48)
    random_head = load_model(path)
    random_head.spec = replace(random_head.spec, other_threshold=0.9)
    fundus_head = load_model(path)  # every figure fundus at 0.7: fundus set on its 4 held-out figures
    fundus_head.spec = random_head.spec
    fundus_head.head.weight.data.zero_()
    fundus_head.head.bias.data = torch.log(torch.tensor([0.7, 0.3]))
    for model, bases in ((random_head, None), (fundus_head, {"fundus": HELD_OUT_SOURCES})):
        _check_command(tmp_path, a, b, model, bases)
    # Changed per-class thresholds under an unchanged version would never reach indexed rows.
    from xai_pipeline.config import ConfigError
    from xai_pipeline.train.thresholds import main

    fundus_head.spec = replace(fundus_head.spec, class_thresholds={"fundus": 0.123}, version="t2")
    save_model(fundus_head, path)
    args = ["--model", str(path), "--data", f"{a},{b}", "--holdout-sources", "src-b,charts-y", "--out", str(tmp_path / "again.safetensors"), "--min-figures", "2"]
    with pytest.raises(ConfigError, match="--version"):
        main(args)
    assert main([*args, "--version", "t3"]) == 0 and read_spec(tmp_path / "again.safetensors").class_thresholds["fundus"] != 0.123
    # --floors: each class raised to its study floor (fundus, above the pooled 0.9), the card saying which rule.
    from xai_pipeline.train.thresholds import RAISED

    unraised = read_spec(tmp_path / "again.safetensors").class_thresholds
    study = tmp_path / "loso-fit-study.json"
    study.write_text(json.dumps({"pooled": {"study_floors": {"floors": {"fundus": {"threshold": 0.95, "figures": 40}}, "min_accept": 0.97, "min_figures": 10}}}))
    card = tmp_path / "CARD.md"
    card.write_text("# Model card: tiny-test t2\n\n- 'other': reported when the top softmax probability is below **0.9**.\n\n## Limits\n\nx\n")
    assert main([*args, "--version", "t4", "--floors", str(study), "--card", str(card)]) == 0
    raised = read_spec(tmp_path / "again.safetensors").class_thresholds
    assert raised == unraised | {"fundus": 0.95} and unraised["fundus"] < 0.95
    report = json.loads((tmp_path / "class_thresholds.json").read_text())
    assert report["study_floors"]["study"] == "loso-fit-study.json" and report["class_thresholds"]["fundus"]["basis"].endswith(RAISED)
    assert not report["class_thresholds"]["histology"]["basis"].endswith(RAISED)
    text = card.read_text()
    assert "t_c = max(min(t, Q_{1−a}), F_c)" in text and "| fundus | 0.95 | 40 |" in text and "`loso-fit-study.json`" in text
    assert "lower or higher (*Per-class thresholds*)" in text and "never above `t`" not in text
    study.write_text(json.dumps({"folds": []}))
    with pytest.raises(ConfigError, match="--floors .*no study_floors"):
        main([*args, "--version", "t5", "--floors", str(study)])


def _check_command(tmp_path: Path, a: str, b: str, model: Any, bases: dict[str, str] | None) -> None:
    from xai_pipeline.train.dataset import load_images
    from xai_pipeline.train.evaluate import predict_images
    from xai_pipeline.train.evaluate_run import held_out_examples
    from xai_pipeline.train.split import read_training_examples
    from xai_pipeline.train.thresholds import main

    path = tmp_path / "in.safetensors"
    save_model(model, path)
    card = tmp_path / "MODEL_CARD.md"
    card.write_text(f"# Model card: tiny-test test\n\n- 'other': reported when the top softmax probability is below **0.9**.\n"
                    f"- Weights: safetensors, SHA-256 `{model.spec.weights_sha256}`.\n\n## Limits\n\nx\n")
    args = ["--model", str(path), "--data", f"{a},{b}", "--holdout-sources", "src-b,charts-y", "--out", str(tmp_path / "out.safetensors"),
            "--min-figures", "2", "--version", "t2", "--card", str(card)]
    assert main(args) == 0 and main(args) == 0  # a second run replaces its section
    spec = read_spec(tmp_path / "out.safetensors")
    report = json.loads((tmp_path / "class_thresholds.json").read_text())
    assert spec.version == "t2" and set(spec.class_thresholds) == {"fundus", "histology"}
    # Independently: the full forward pass on the same held-out figures.
    examples = held_out_examples(read_training_examples(f"{a},{b}"), "src-b,charts-y")
    in_class = [e for e in examples if e.label != "other"]
    p, _ = predict_images(model, load_images(in_class))
    y = np.array([spec.class_names.index(e.label) for e in in_class])
    held = np.array([e.source == "src-b" for e in in_class])
    for c, name in enumerate(spec.class_names):
        right = (p.argmax(1) == c) & (y == c)
        basis = right & held if (right & held).sum() >= 2 else right
        got = spec.class_thresholds[name]
        if not basis.any():
            assert got == 0.9, name
        elif p.max(1)[basis].min() >= 0.9:
            assert got == 0.9, name  # capped by the pooled threshold
        else:  # 10 or fewer figures: the lowest, rounded down (never up: that would drop it)
            assert p.max(1)[basis].min() - 2e-4 <= got <= p.max(1)[basis].min(), name
            kept = (p.argmax(1) == c) & (p.max(1) >= got)
            assert kept[basis].all(), name
        assert report["class_thresholds"][name]["figures"] == int(basis.sum())
    for name, basis_name in (bases or {}).items():
        assert report["class_thresholds"][name]["basis"] == basis_name and report["class_thresholds"][name]["figures"] == 4
    groups = report["groups"]
    assert groups["fundus (held-out source)"]["figures"] == 4 and groups["other (held-out source)"]["figures"] == 3
    assert all(g["kept_per_class"] >= g["kept_pooled"] for k, g in groups.items() if not k.startswith("other"))
    text = card.read_text()
    assert text.startswith("# Model card: tiny-test t2\n") and text.count("## Per-class thresholds") == 1
    assert "or below its top class's own threshold" in text and text.index("## Limits") < text.index("## Per-class thresholds")
    assert report["source_check"] == [] and "(no class has two held-out sources)" in text


def test_held_out_figures_follow_trains_split_seed() -> None:
    from xai_pipeline.train.dataset import Example, split_by_group
    from xai_pipeline.train.evaluate_run import held_out_examples

    examples = [Example(f"u{i}", "ct" if i % 2 else "mri", "s", f"g{i // 2}") for i in range(40)]
    seen = []
    for seed in (None, 0, 3):
        _, validation, _ = split_by_group(examples, 0.2, 0 if seed is None else seed)
        got = held_out_examples(examples, "", seed)
        assert got == [examples[i] for i in validation], seed
        seen.append([e.uri for e in got])
    assert seen[0] == seen[1] != seen[2]  # the default is train's default seed, 0


def test_evaluate_held_out_passes_the_split_seed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from xai_pipeline.config import ConfigError, EvaluateConfig
    from xai_pipeline.train import evaluate_run

    seen: list[object] = []
    monkeypatch.setattr(evaluate_run, "read_training_examples", lambda data, settings: [])
    monkeypatch.setattr(evaluate_run, "held_out_examples", lambda examples, sources, seed: seen.append((sources, seed)) or [])
    with pytest.raises(ConfigError, match="no figure of the model's classes"):
        evaluate_run.run_evaluation(EvaluateConfig(data="d", held_out=True, holdout_sources="s", split_seed=3))
    assert seen == [("s", 3)]
