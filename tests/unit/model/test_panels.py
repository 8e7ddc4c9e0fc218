"""Panels by layout analysis, and the labels of figures and panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from xai_pipeline import schema
from xai_pipeline.model.labels import MEDICAL_MIN, figure_summary, image_labels
from xai_pipeline.model.panels import split_panels
from xai_pipeline.train.compound import compound_figure, iou, match_boxes

SAMPLES = Path(__file__).parents[3] / "xai_pipeline" / "samples" / "figures"


def _photo(rng: np.random.Generator, w: int = 200, h: int = 160) -> Image.Image:
    """A textured rectangle with ink to its edges, like a printed photograph or scan."""
    return Image.fromarray(rng.integers(40, 200, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
def test_a_grid_of_photographs_splits_into_its_panels(background: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    page = Image.new("RGB", (3 * 200 + 4 * 20, 2 * 160 + 3 * 20), background)
    truth = []
    for k in range(6):
        x, y = 20 + (k % 3) * 220, 20 + (k // 3) * 180
        page.paste(_photo(rng), (x, y))
        ImageDraw.Draw(page).text((x + 3, y + 3), "ABCDEF"[k], fill=(255, 255, 0))
        truth.append((x, y, x + 200, y + 160))
    found = [p.as_tuple() for p in split_panels(page)]
    assert len(found) == 6 and match_boxes(found, truth, 0.9) == 6
    assert found == sorted(found, key=lambda b: (b[1] > 100, b[0]))  # reading order: rows, then left to right


def test_single_figures_stay_whole() -> None:
    for path in sorted(SAMPLES.glob("*")):
        if "compound" not in path.name:
            image = Image.open(path)
            assert [p.as_tuple() for p in split_panels(image)] == [(0, 0, image.width, image.height)], path.name


def test_two_blobs_on_a_dark_page_are_one_scan_not_two_panels() -> None:
    """Two legs of one CT: a black gap, but neither piece is outlined like a printed rectangle."""
    page = Image.new("L", (400, 300), 0)
    draw = ImageDraw.Draw(page)
    draw.ellipse((20, 40, 180, 260), fill=170)
    draw.ellipse((220, 40, 380, 260), fill=160)
    assert len(split_panels(page.convert("RGB"))) == 1


def test_panel_letters_and_chart_titles_are_not_panels() -> None:
    rng = np.random.default_rng(1)
    page = Image.new("RGB", (500, 260), "white")
    page.paste(_photo(rng, 210, 200), (20, 40))
    page.paste(_photo(rng, 210, 200), (270, 40))
    ImageDraw.Draw(page).text((200, 8), "Figure 2", fill=(0, 0, 0))  # a title above both
    ImageDraw.Draw(page).text((5, 45), "A", fill=(0, 0, 0))  # a letter in the gutter
    assert len(split_panels(page)) == 2


def test_synthetic_compound_figures_are_found_at_iou_half() -> None:
    rng = np.random.default_rng(2)
    pool = [_photo(rng, int(rng.integers(120, 300)), int(rng.integers(120, 300))) for _ in range(12)]
    hits = total = found_total = 0
    for _ in range(12):
        compound = compound_figure(pool, rng, layout="grid")
        found = [p.as_tuple() for p in split_panels(compound.image)]
        hits += match_boxes(found, compound.boxes)
        total += len(compound.boxes)
        found_total += len(found)
    assert hits / total >= 0.8 and hits / found_total >= 0.8


def test_iou_and_matching() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert match_boxes([(0, 0, 10, 10), (0, 0, 10, 10)], [(0, 0, 10, 10)]) == 1  # one-to-one


def test_labels_withhold_the_modality_of_figures_that_are_not_medical_images() -> None:
    names, types = ("ct", "mri"), (schema.MEDICAL_IMAGE, "microscopy", "chart")
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.55, 0.45], [0.95, 0.05]], dtype=np.float32)
    type_probabilities = np.array([[0.9, 0.05, 0.05], [MEDICAL_MIN - 0.01, 0.7, 0.01], [0.9, 0.05, 0.05], [MEDICAL_MIN, 0.7, 0.0]])
    modalities, kinds = image_labels(probabilities, type_probabilities, names, types, other_threshold=0.6)
    assert modalities == ["ct", "other", "other", "ct"]  # microscopy: withheld; unsure: other; medical at the bar: kept
    assert kinds == [schema.MEDICAL_IMAGE, "microscopy", schema.MEDICAL_IMAGE, schema.MEDICAL_IMAGE]
    assert image_labels(probabilities, None, names, (), 0.6) == (["ct", "mri", "other", "ct"], [schema.MEDICAL_IMAGE] * 2 + ["other", schema.MEDICAL_IMAGE])


def test_a_compound_figure_summarises_its_panels() -> None:
    assert figure_summary("ct", schema.MEDICAL_IMAGE, [], []) == ("ct", schema.MEDICAL_IMAGE, ["ct"])
    assert figure_summary("other", "chart", [], []) == ("other", "chart", [])
    assert figure_summary("other", "chart", ["mri", "ct", "other", "ct"], [schema.MEDICAL_IMAGE] * 3 + ["chart"]) == \
        (schema.COMPOUND, schema.MEDICAL_IMAGE, ["ct", "mri"])
    assert figure_summary("other", "chart", ["other", "other", "other"], ["chart", "chart", "diagram"]) == (schema.COMPOUND, "chart", [])


@pytest.mark.parametrize("name, panels", [("microscopyfo_4c095879cb7b.jpg", 6), ("microscopyfo_95d6571887e4.jpg", 2)])
def test_real_compound_figures_of_other_v1(dataset_dir: Path, name: str, panels: int) -> None:
    """Two real figures from a microscopy guide (other-v1, BSD-3-Clause): a 2×3 montage whose panels
    run to the figure's edges, and a pair split by a thin white gutter."""
    image = Image.open(dataset_dir.parent / "other-v1" / "other" / name)
    found = split_panels(image)
    assert len(found) == panels
    assert all(p.area > 0.1 * image.width * image.height for p in found)
