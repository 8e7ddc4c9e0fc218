"""The model card's backbone comparison: whole fine-tuned studies of one recipe side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xai_pipeline.train.loso_card import backbones_section
from xai_pipeline.train.model_card import main as card_main

RESULTS = Path(__file__).parents[3] / "bench" / "results"
LITE0, LITE1 = RESULTS / "loso" / "loso-fit-v4.json", RESULTS / "loso-merge-v4-lite1.json"


def test_each_backbones_whole_study_is_a_row_with_its_speed_and_size() -> None:
    studies = [json.loads(LITE0.read_text()), json.loads(LITE1.read_text())]
    speed = json.loads((RESULTS / "lite_variants.json").read_text())
    text = backbones_section(studies, speed)
    rows = [line for line in text.splitlines() if line.startswith("| efficientnet")]
    assert rows == [
        "| efficientnet_lite0 | 3,053 | 0.894 | 0.805 | 0.877 | 0.970 | 0.837 | 59.7% | 99.2% | 23.6 | 13.7 |",
        "| efficientnet_lite1 (pooled) | 3,053 | 0.879 | 0.801 | 0.850 | 0.914 | 0.783 | 59.7% | 97.5% | 15.6 | 16.8 |",
    ]
    assert "held by no fold" not in text
    assert "(as in *Fine-tuned leave-one-source-out*; here `--source-balance 0`, no simulated figures)" in text
    for study in studies:  # the recipe is named, since the card's own study may be of another
        study["config"]["simulated_mr_probability"] = 0.2
    assert "here `--source-balance 0`, `--simulated-mr-probability 0.2`)" in backbones_section(studies, speed)
    del studies[0]["pooled"]["with_types"]
    studies[0]["pooled"]["with_threshold"]["other_medical_called_other"] = 0.5
    studies[0]["pooled"]["unscored_sources"] = ["src-x"]
    text = backbones_section(studies[:1])
    assert text.splitlines()[-1] == "| efficientnet_lite0 | 3,053 | 0.894 | 0.805 | — | 0.970 | 0.837 | 50.0% | 99.2% | — | — |"  # no head, no speed
    assert "(held by no fold: src-x)" in text


def test_studies_of_one_backbone_or_of_different_recipes_are_refused() -> None:
    lite0 = json.loads(LITE0.read_text())
    with pytest.raises(ValueError, match="two studies of one backbone"):
        backbones_section([lite0, lite0])
    other = json.loads(LITE1.read_text())
    other["config"]["epochs"] = 6
    with pytest.raises(ValueError, match="differ in more than the backbone"):
        backbones_section([lite0, other])


def test_the_card_gets_the_section_once_and_a_file_that_is_no_study_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card\n\n## Limits\n- x\n")
    args = ["--card", str(card), "--backbones", str(LITE0), str(LITE1), "--backbone-speed", str(RESULTS / "lite_variants.json")]
    assert card_main(args) == 0
    text = card.read_text()
    assert text.startswith("# Model card\n\n## Limits\n- x\n") and text.count("## Fine-tuned backbones") == 1
    assert card_main(args) == 0 and card.read_text() == text  # replaced, not added
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config": {"architecture": "efficientnet_lite0"}, "folds": []}))
    with pytest.raises(SystemExit):
        card_main(["--card", str(card), "--backbones", str(bad)])
    assert f"--backbones {bad}: not a finished study" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        card_main(["--card", str(card), "--backbones", str(LITE0), "--backbone-speed", str(bad)])
    assert f"--backbone-speed {bad}: not bench.lite_variants' results" in capsys.readouterr().err
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"results": {"efficientnet_lite0": {"figures_per_s": 1.0}}}))
    with pytest.raises(SystemExit):
        card_main(["--card", str(card), "--backbones", str(LITE0), "--backbone-speed", str(speed)])
    assert "a file has no 'model_file_mb'" in capsys.readouterr().err
