"""From a model's outputs to the labels the table stores: modality, figure type, and for compound
figures the summary of their panels.

For one image (a whole figure or one panel), with softmax probabilities ``P`` over the modality
classes and ``Q`` over the figure types (when the model has a figure-type head):

- ``figure_type = medical_image`` when ``Q(medical_image) ≥ MEDICAL_MIN``, else ``argmax Q``;
  without a head, ``medical_image`` when the modality is not ``other``, else ``other``. The bar is
  below one half because a wrongly withheld modality hides a scan from search, while a chart that
  passes it still has to clear the modality head's own threshold (a zoomed grey MRI crop scored
  0.46 medical, 0.53 microscopy);
- ``modality = c = argmax P`` when ``max P ≥ t_c`` (the model's ``other`` threshold, or class
  ``c``'s own one when it has per-class thresholds) **and** the figure type is
  ``medical_image``; otherwise ``other`` (a fluorescence micrograph or a chart gets no modality,
  however scan-like its pixels).

A figure with ``k ≥ 2`` panels has ``modality = "compound"``, ``modalities`` = the distinct
modalities of its panels other than ``other`` (sorted), and ``figure_type = medical_image`` when
any panel is one, else its panels' most common type. A single-panel figure has ``modalities =
[modality]`` unless that is ``other`` (then ``[]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from xai_pipeline import schema

OTHER = "other"
MEDICAL_MIN = 0.3


def image_labels(probabilities: np.ndarray, type_probabilities: np.ndarray | None, class_names: tuple[str, ...],
                 figure_types: tuple[str, ...], other_threshold: float | Sequence[float] | None) -> tuple[list[str], list[str]]:
    """Modality and figure type of each row of ``probabilities`` (n×C) / ``type_probabilities`` (n×T).

    ``other_threshold``: one threshold, one per class (``ModelSpec.decision_thresholds``) or None.
    """
    top = probabilities.argmax(axis=1)
    confident = confident_rows(probabilities, other_threshold)
    raw = [class_names[i] if ok else OTHER for i, ok in zip(top, confident)]
    if type_probabilities is None or not figure_types:
        types = [schema.MEDICAL_IMAGE if m != OTHER else OTHER for m in raw]
    else:
        types = [figure_types[i] for i in type_probabilities.argmax(axis=1)]
        if schema.MEDICAL_IMAGE in figure_types:
            medical = type_probabilities[:, figure_types.index(schema.MEDICAL_IMAGE)] >= MEDICAL_MIN
            types = [schema.MEDICAL_IMAGE if m else t for t, m in zip(types, medical)]
    modalities = [m if t == schema.MEDICAL_IMAGE else OTHER for m, t in zip(raw, types)]
    return modalities, types


def confident_rows(probabilities: np.ndarray, other_threshold: float | Sequence[float] | None) -> np.ndarray:
    """``max P ≥ t_{argmax P}`` per row (all True without a threshold); ``t`` is one number or
    one per class."""
    if other_threshold is None:
        return np.ones(len(probabilities), dtype=bool)
    per_class = np.broadcast_to(np.asarray(other_threshold, dtype=float), (probabilities.shape[1],))
    return probabilities.max(axis=1) >= per_class[probabilities.argmax(axis=1)]


def figure_summary(modality: str, figure_type: str, panel_modalities: list[str], panel_types: list[str]) -> tuple[str, str, list[str]]:
    """``(modality, figure_type, modalities)`` of a figure from its own labels and its panels'."""
    if len(panel_modalities) < 2:
        return modality, figure_type, [modality] if modality != OTHER else []
    found = sorted({m for m in panel_modalities if m != OTHER})
    if schema.MEDICAL_IMAGE in panel_types:
        kind = schema.MEDICAL_IMAGE
    else:
        kind = Counter(panel_types).most_common(1)[0][0]
    return schema.COMPOUND, kind, found
