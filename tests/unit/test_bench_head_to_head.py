"""bench.head_to_head: the compared figures are those no run trained on, keyed across data folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.head_to_head import compared_figures, figure_key, run_figures, scores
from xai_pipeline.train.sources import Role


def _manifest(folder: Path, rows: list[tuple[str, str, str]]) -> str:
    folder.mkdir(parents=True)
    lines = [json.dumps({"file": f, "label": label, "source_repo": source, "source_path": f}) for f, label, source in rows]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "manifest.jsonl")


def _run(root: Path, name: str, data: list[str], holdout: str) -> Path:
    run = root / name
    run.mkdir()
    (run / "training_metrics.json").write_text(json.dumps({"config": {"data": ",".join(data), "out": str(run), "holdout_sources": holdout}}))
    return run


def test_compared_figures_are_in_no_runs_training_part(tmp_path: Path) -> None:
    shared = [(f"{label}/{label}_{k}.png", label, "src/a") for label in ("ct", "mri") for k in range(10)]
    shared += [(f"other/chart_{k}.png", "other", "src/charts") for k in range(10)]
    shared += [(f"ct/held_{k}.png", "ct", "src/held") for k in range(3)]
    base = _manifest(tmp_path / "base", [r for r in shared if r[2] != "src/held"])
    held = _manifest(tmp_path / "held", [r for r in shared if r[2] == "src/held"])
    v1 = _manifest(tmp_path / "packaged-v1", [(f"mri/vol_{k}.png", "mri", "pkg/x") for k in range(5)])
    v3 = _manifest(tmp_path / "packaged-v3", [(f"mri/vol_{k}.png", "mri", "pkg/x") for k in range(5)]
                   + [(f"ct/new_{k}.png", "ct", "pkg/new") for k in range(10)])
    a = _run(tmp_path, "a", [base, held, v1], "src/held")
    b = _run(tmp_path, "b", [base, held, v3], "src/held")
    figures_a, train_a = run_figures(a)
    figures_b, train_b = run_figures(b)
    # The packaged volume is one figure under two folders.
    assert ("pkg/x", "mri/vol_0.png") in figures_a and ("pkg/x", "mri/vol_0.png") in figures_b
    assert not any(k[0] == "src/held" for k in train_a | train_b)  # held-out sources never train
    compared, unread = compared_figures([a, b])
    assert {e.source for e in unread[a]} == {"pkg/new"} and len(unread[a]) == 10 and unread[b] == []  # a never read pkg/new
    keys = {figure_key(e.source, e.example.uri, e.example.uri.rsplit("/", 2)[0]) for e in compared}
    assert keys == (set(figures_a) | set(figures_b)) - train_a - train_b
    assert {("src/held", f"ct/held_{k}.png") for k in range(3)} <= keys
    assert train_a - train_b and train_b - train_a  # the two splits differ (the new source re-draws groups)
    assert len(compared) == len(keys)  # each figure once, though both runs read it


def test_scores_count_other_by_role() -> None:
    from xai_pipeline.train.dataset import Example
    from xai_pipeline.train.sources import SourcedExample

    def ex(label: str, role: Role, source: str) -> SourcedExample:
        return SourcedExample(Example(f"file:///{source}/{label}", label, source), "d", role, "-")

    examples = [ex("ct", Role.IN_CLASS, "s1"), ex("ct", Role.IN_CLASS, "s1"), ex("mri", Role.IN_CLASS, "s2"),
                ex("other", Role.OTHER_MEDICAL, "oct"), ex("other", Role.OTHER_FIGURE, "charts")]
    result = scores(["ct", "other", "mri", "ct", "other"], examples)
    assert result["per_class"]["ct"]["recall"] == 0.5 and result["per_class"]["mri"]["f1"] == 1.0
    assert result["macro_f1"] == pytest.approx((0.5 + 1.0) / 2)  # ct: precision 1/2, recall 1/2; mri 1
    assert result["in_class_right"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["other_medical_called_other"] == 0.0 and result["other_figure_called_other"] == 1.0
    assert result["per_source"]["s1"] == {"n": 2, "right": 0.5}
