"""The issue-17 sources: three manifests merged into one label space with provenance, and the
leave-one-source-out study's folds, decisions and thresholds on synthetic features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xai_pipeline.store.source import SourceError
from xai_pipeline.train.loso import decide, loso_probabilities, other_threshold, source_folds, study
from xai_pipeline.train.sources import (
    LABELS, NO_LICENSE_FIELD, OTHER, Role, read_all_sources, source_table_markdown, sources_by_class, sources_per_label,
)


def _manifest(root: Path, name: str, rows: list[dict[str, str]]) -> str:
    folder = root / name
    folder.mkdir()
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def manifests(tmp_path: Path) -> list[str]:
    v1 = _manifest(tmp_path, "modality-v1", [
        {"file": "ct/a.jpg", "label": "ct", "source_repo": "medpix", "source_path": "MPX1001_x.png"},
        {"file": "ct/b.jpg", "label": "ct", "source_repo": "medpix", "source_path": "MPX1001_y.png"},
        {"file": "histology/c.jpg", "label": "histology", "source_repo": "tiles", "source_path": "t1.png"},
    ])
    extra = _manifest(tmp_path, "modality-extra-v1", [
        {"file": "histology/d.jpg", "label": "histology", "source_repo": "cd31", "kind": "histology/IHC", "license": "MIT"},
        {"file": "other_medical/oct/e.jpg", "label": "other", "source_repo": "eyes", "kind": "other_medical/oct", "license": "cite"},
        {"file": "fundus/f.jpg", "label": "fundus", "source_repo": "eyes", "kind": "fundus/dr", "license": "cite"},
    ])
    other = _manifest(tmp_path, "other-v1", [
        {"file": "other/g.png", "label": "other", "source_repo": "plots", "kind": "chart", "license": "MIT"},
        {"file": "other/h.png", "label": "other", "source_repo": "plots", "kind": "chart", "license": "BSD-3-Clause"},
    ])
    return [v1, extra, other]


def test_manifests_merge_into_one_label_space_with_source_kind_role_and_license(manifests: list[str]) -> None:
    examples = read_all_sources(manifests)
    assert [e.label for e in examples] == ["ct", "ct", "histology", "histology", OTHER, "fundus", OTHER, OTHER]
    assert [e.role for e in examples] == [Role.IN_CLASS] * 4 + [Role.OTHER_MEDICAL, Role.IN_CLASS, Role.OTHER_FIGURE, Role.OTHER_FIGURE]
    assert [e.dataset for e in examples[:3]] == ["modality-v1"] * 3
    assert examples[0].example.group == examples[1].example.group == "MPX1001"  # the MedPix case
    assert examples[0].kind == "ct" and examples[4].kind == "other_medical/oct"  # modality-v1 has no kind: the label
    assert examples[0].license == NO_LICENSE_FIELD and examples[3].license == "MIT"
    assert examples[4].example.uri.endswith("/modality-extra-v1/other_medical/oct/e.jpg")

    rows = sources_by_class(examples)
    assert [(r.label, r.role, r.source, r.count) for r in rows] == [
        ("ct", Role.IN_CLASS, "medpix", 2), ("fundus", Role.IN_CLASS, "eyes", 1),
        ("histology", Role.IN_CLASS, "cd31", 1), ("histology", Role.IN_CLASS, "tiles", 1),
        (OTHER, Role.OTHER_MEDICAL, "eyes", 1), (OTHER, Role.OTHER_FIGURE, "plots", 2),
    ]
    assert rows[-1].licenses == ("BSD-3-Clause", "MIT")
    assert "| other | other_figure | plots | other-v1 | 2 | 2 terms, e.g. BSD-3-Clause |" in source_table_markdown(rows)
    assert sources_per_label(examples) == {"ct": ["medpix"], "fundus": ["eyes"], "histology": ["cd31", "tiles"]}


def test_bad_manifests_are_refused_with_the_row(tmp_path: Path, manifests: list[str]) -> None:
    bad_label = _manifest(tmp_path, "a", [{"file": "x/a.jpg", "label": "xray", "source_repo": "s"}])
    with pytest.raises(SourceError, match=r"row 1 \(x/a.jpg\) has label 'xray'"):
        read_all_sources([bad_label])
    misfiled = _manifest(tmp_path, "b", [{"file": "other_medical/oct/a.jpg", "label": "fundus", "source_repo": "s"}])
    with pytest.raises(SourceError, match="under other_medical/ but labelled 'fundus'"):
        read_all_sources([misfiled])
    no_source = _manifest(tmp_path, "c", [{"file": "ct/a.jpg", "label": "ct"}])
    with pytest.raises(SourceError, match="row 1 lacks source_repo"):
        read_all_sources([no_source])
    with pytest.raises(SourceError, match="listed more than once"):
        read_all_sources([manifests[0], manifests[0]])


def test_a_source_is_never_in_its_own_training_fold() -> None:
    sources = ["b", "a", "c", "a", "b", "b"]
    folds = list(source_folds(sources))
    assert [f[0] for f in folds] == ["a", "b", "c"]
    scored = np.concatenate([test for _, _, test in folds])
    assert sorted(scored) == list(range(len(sources)))  # every figure scored exactly once
    for held, train, test in folds:
        assert {sources[i] for i in test} == {held} and held not in {sources[i] for i in train}


def _synthetic(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Two modality classes with two sources each, one 'other' source; features = class centre +
    a per-source offset + noise, so held-out sources are harder than held-out figures."""
    from xai_pipeline.train.dataset import Example
    from xai_pipeline.train.sources import SourcedExample

    centres = {"ct": np.r_[4.0, 0, 0], "mri": np.r_[0, 4.0, 0], OTHER: np.r_[0, 0, 4.0]}
    xs, examples = [], []
    for label, source, offset in (("ct", "s1", 0.5), ("ct", "s2", -0.5), ("mri", "s3", 0.5), ("mri", "s4", -0.5), (OTHER, "s5", 0.0)):
        for i in range(30):
            xs.append(centres[label] + offset + rng.normal(0, 0.7, 3))
            role = Role.OTHER_FIGURE if label == OTHER else Role.IN_CLASS
            examples.append(SourcedExample(Example(f"file:///{source}/{i}", label, source, f"{source}/{i}", label), "d", role, "MIT"))
    return np.array(xs), examples


def test_loso_scores_each_figure_with_a_probe_that_never_saw_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import xai_pipeline.train.loso as loso

    x, examples = _synthetic(np.random.default_rng(0))
    y = np.array([LABELS.index(e.label) for e in examples])
    sources = [e.source for e in examples]
    fitted_on: list[set[str]] = []
    real_fit = loso.fit_probe

    def spy(xs: np.ndarray, ys: np.ndarray, c: float):  # records which sources each probe saw
        fitted_on.append({sources[i] for i in range(len(x)) if any((x[i] == row).all() for row in xs)})
        return real_fit(xs, ys, c)

    monkeypatch.setattr(loso, "fit_probe", spy)
    p, seen = loso_probabilities(x, y, sources, c=1.0)
    assert [s not in saw for s, saw in zip(sorted(set(sources)), fitted_on)] == [True] * 5
    assert seen[y != LABELS.index(OTHER)].all() and not seen[y == LABELS.index(OTHER)].any()  # s5 is the only 'other' source
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (p[:120].argmax(1) == y[:120]).mean() > 0.9


def test_threshold_keeps_the_share_of_in_class_figures_and_argmax_other_counts_as_rejected() -> None:
    other = LABELS.index(OTHER)
    p = np.zeros((100, len(LABELS)))
    p[:, 0] = np.linspace(0.30, 0.99, 100)
    p[:, other] = 1 - p[:, 0]
    # rows with p[0] < 0.5 have argmax 'other': rejected at any threshold
    rejected_anyway = (p[:, other] > p[:, 0]).mean()
    assert 0 < rejected_anyway < 0.5
    t = other_threshold(p, 0.5)
    kept = (decide(p, t) != other).mean()
    assert kept >= 0.5 and (decide(p, t + 1e-6) != other).mean() < 0.5
    assert other_threshold(p, 0.97) == 0.0  # 97% cannot be kept: no threshold
    assert (decide(p, 0.0) == other).mean() == rejected_anyway


def test_study_reports_loso_and_in_source_thresholds() -> None:
    x, examples = _synthetic(np.random.default_rng(1))
    report = study(x, examples, c=1.0, min_accept=0.9)
    assert set(report["per_source"]) == {"s1", "s2", "s3", "s4", "s5"}
    assert report["unseen_in_fold"] == {OTHER: 30}
    for run in (report["loso"]["loso_threshold"], report["in_source"]):
        assert run["in_class_kept"] >= 0.9 - 1e-9 and 0 <= run["threshold"] < 1
        assert set(run["per_class"]) == set(LABELS)
    assert report["loso"]["loso_threshold"]["testable_classes"] == ["ct", "mri"]
    assert np.asarray(report["in_source"]["confusion"]).sum(axis=1)[[1, 4, 6]].tolist() == [60, 60, 30]
