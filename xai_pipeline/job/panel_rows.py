"""Panel crops as extra rows of the classifier's device batch, and their results back per figure.

The decode stage gives each figure ``panel_boxes`` (k×4) and ``panel_pixels`` (k×3×S×S; k = 0 for
a single-panel figure). The classifier appends every ok figure's crops after the whole figures,
runs backbone, heads and CRM once on the lot, and this class maps the result rows back: the crops
of the figure at position ``j`` among the ok rows are rows ``rows_of(j)``. Out go ``panel_maps``
(k×H×W CRM maps) and ``panel_labels`` (JSON: ``{"modalities": [...], "panels": [{"modality",
"figure_type", "confidence"}, ...]}``) for the encode stage, and the boxes unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from xai_pipeline import schema
from xai_pipeline.job.decode import ragged


class PanelRows:
    """Bookkeeping of one classifier batch's panels (``n`` figures, maps of ``map_shape``)."""

    def __init__(self, batch: dict[str, np.ndarray], n: int, map_shape: tuple[int, ...]) -> None:
        self.n = n
        self.map_shape = map_shape
        self.boxes = batch.get(schema.PANEL_BOXES)
        self.crops = batch.get(schema.PANEL_PIXELS)
        self.first: list[int] = []  # per ok figure j: its first crop's row in the device batch
        self.count: list[int] = []
        self.maps = [np.zeros((0, *map_shape), dtype=np.float32)] * n
        self.labels = [json.dumps({"modalities": [], "panels": []})] * n

    def with_crops(self, pixels: torch.Tensor, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
        """The ok figures' pixels followed by their panel crops, and the figure (batch index)
        each device row belongs to."""
        owners = [int(i) for i in rows]
        extra: list[np.ndarray] = []
        start = len(rows)
        for i in rows:
            crops = self.crops[i] if self.crops is not None else None
            k = 0 if crops is None else len(crops)
            self.first.append(start)
            self.count.append(k)
            if k:
                extra.append(np.asarray(crops, dtype=np.uint8))
                owners += [int(i)] * k
                start += k
        if not extra:
            return pixels, np.array(owners, dtype=np.int64)
        more = torch.from_numpy(np.ascontiguousarray(np.concatenate(extra)))
        if device.type == "cuda":
            more = more.pin_memory().to(device, non_blocking=True)
        combined = torch.cat([pixels, more.to(memory_format=torch.channels_last)])
        return combined.contiguous(memory_format=torch.channels_last), np.array(owners, dtype=np.int64)

    def rows_of(self, j: int) -> list[int]:
        """Device-batch rows of the crops of the ``j``-th ok figure (empty: single-panel)."""
        if not self.first:
            return []
        return list(range(self.first[j], self.first[j] + self.count[j]))

    def record(self, i: int, maps: np.ndarray, labels: list[tuple[str, str, float]], modalities: list[str]) -> None:
        """Results of figure ``i`` (batch index): its panels' maps and labels, its modalities."""
        self.maps[i] = np.asarray(maps, dtype=np.float32).reshape(-1, *self.map_shape)
        panels = [{"modality": m, "figure_type": t, "confidence": round(c, 6)} for m, t, c in labels]
        self.labels[i] = json.dumps({"modalities": modalities, "panels": panels})

    def columns(self) -> dict[str, np.ndarray]:
        boxes = self.boxes if self.boxes is not None else ragged([np.zeros((0, 4), dtype=np.int32)] * self.n)
        return {schema.PANEL_BOXES: boxes, schema.PANEL_MAPS: ragged(self.maps),
                schema.PANEL_LABELS: np.array(self.labels, dtype=object)}
