"""Checks of the parts that see a figure whole: panel detection and the figure-type head.

Panel detection is scored on synthetic compound figures (:mod:`xai_pipeline.train.compound`)
assembled from the evaluation's own figures and procedural non-scan figures, with a seed no
training step uses: a found panel is right when its IoU with a true panel is at least 0.5
(one-to-one); precision = right / found, recall = right / true, and the share of figures whose
panel count is exact. Single figures (the evaluation's own) should stay whole.

The figure-type head is scored on the evaluation's figures (scans: ``medical_image``) and on
procedural figures of each kind; ``non_scans_given_a_modality`` is the share of the procedural
non-scan figures that still got a modality.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from xai_pipeline import schema
from xai_pipeline.model.panels import split_panels
from xai_pipeline.train.compound import LAYOUTS, compound_figure, match_boxes
from xai_pipeline.train.synthetic import FIGURE_TYPES_OF, GENERATORS

EVALUATION_SEED = 424242  # not used by any training step


def panel_detection(singles: list[Image.Image], figures: int = 200, seed: int = EVALUATION_SEED) -> dict[str, Any]:
    """Precision, recall (IoU ≥ 0.5) and exact panel counts on synthetic compound figures made of
    ``singles`` and procedural figures; and the share of ``singles`` kept whole."""
    rng = np.random.default_rng(seed)
    pool = list(singles) + [GENERATORS[name](rng, 256) for name in GENERATORS for _ in range(max(1, len(singles) // 16))]
    found_total = true_total = hits = exact = 0
    by_layout: dict[str, list[int]] = {layout: [0, 0] for layout in LAYOUTS}
    started = time.perf_counter()
    for _ in range(figures):
        compound = compound_figure(pool, rng)
        found = [p.as_tuple() for p in split_panels(compound.image)]
        right = match_boxes(found, compound.boxes)
        hits, found_total, true_total = hits + right, found_total + len(found), true_total + len(compound.boxes)
        exact += len(found) == len(compound.boxes)
        by_layout[compound.layout][0] += 1
        by_layout[compound.layout][1] += len(found) == len(compound.boxes)
    seconds = time.perf_counter() - started
    whole = sum(len(split_panels(image)) == 1 for image in singles)
    return {
        "compound_figures": figures, "precision_iou50": hits / max(1, found_total), "recall_iou50": hits / max(1, true_total),
        "exact_count": exact / figures, "exact_count_by_layout": {k: v[1] / v[0] for k, v in by_layout.items() if v[0]},
        "ms_per_figure": 1000 * seconds / figures, "single_figures": len(singles), "single_figures_kept_whole": whole / max(1, len(singles)),
    }


def figure_type_checks(model: Any, scans: list[Image.Image], per_kind: int = 30, seed: int = EVALUATION_SEED) -> dict[str, Any]:
    """Figure-type accuracy on scans and on procedural figures of each kind."""
    from xai_pipeline.model.labels import image_labels
    from xai_pipeline.train.evaluate import head_probabilities

    rng = np.random.default_rng(seed + 1)
    procedural = [(name, GENERATORS[name](rng, 256)) for name in GENERATORS for _ in range(per_kind)]
    images = list(scans) + [image for _, image in procedural]
    expected = [schema.MEDICAL_IMAGE] * len(scans) + [FIGURE_TYPES_OF[name] for name, _ in procedural]
    spec = model.spec
    probabilities, types = head_probabilities(model, images)
    modalities, kinds = image_labels(probabilities, types, spec.class_names, spec.figure_types, spec.decision_thresholds)
    right = Counter(e for e, k in zip(expected, kinds) if e == k)
    total = Counter(expected)
    non_scans = [m for e, m in zip(expected, modalities) if e != schema.MEDICAL_IMAGE]
    return {"accuracy_by_type": {t: right[t] / total[t] for t in sorted(total)},
            "accuracy": sum(right.values()) / len(expected),
            "non_scans_given_a_modality": sum(m != "other" for m in non_scans) / max(1, len(non_scans)),
            "scans_without_a_modality": sum(m == "other" for m in modalities[:len(scans)]) / max(1, len(scans))}
