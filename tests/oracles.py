"""Independent references for CRM, used only by tests and benchmarks."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import nn


def crm_bruteforce(features: torch.Tensor, head: nn.Module, score: str = "logit") -> torch.Tensor:
    """CRM by its definition: zero position (l, m) in every channel of f, recompute the head on
    the pooled map, sum the squared score differences over classes. One head call per position."""
    b, k, h, w = features.shape
    base = head(features.mean(dim=(2, 3)))
    if score == "softmax":
        base = base.softmax(-1)
    out = torch.zeros(b, h, w, dtype=features.dtype)
    for l in range(h):
        for m in range(w):
            zeroed = features.clone()
            zeroed[:, :, l, m] = 0
            s = head(zeroed.mean(dim=(2, 3)))
            if score == "softmax":
                s = s.softmax(-1)
            out[:, l, m] = (base - s).square().sum(-1)
    return out


def hirescam(features: torch.Tensor, head: nn.Linear, class_index: int) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020) at the GAP input: gradient ⊙ feature, summed over
    channels, with the gradient taken by autograd (independent of the closed form)."""
    feats = features.detach().clone().requires_grad_(True)
    logits = head(feats.mean(dim=(2, 3)))
    (grad,) = torch.autograd.grad(logits[:, class_index].sum(), feats)
    return (grad * feats).sum(dim=1).detach()


def components_bfs(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """8-connected components by breadth-first search over cells: the literal definition."""
    seen = np.zeros(mask.shape, dtype=bool)
    rows, cols = mask.shape
    found = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        queue, cells = deque([(int(r0), int(c0))]), set()
        seen[r0, c0] = True
        while queue:
            r, c = queue.popleft()
            cells.add((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        found.append(cells)
    return found


def roi_boxes_bfs(relevance: np.ndarray, width: int, height: int, threshold: float = 0.2, max_boxes: int = 8) -> list[dict[str, float]]:
    """ROI boxes by the literal definition: the same grid as :func:`xai_pipeline.model.roi.roi_boxes`
    (its ``upsample``), regions by :func:`components_bfs`, boxes from each region's cells, the score
    from the feature cells under them, ordered by score then by each region's first cell."""
    from xai_pipeline.model.roi import UPSAMPLE, upsample

    relevance = np.asarray(relevance, dtype=np.float32)
    peak = float(relevance.max()) if relevance.size else 0.0
    if peak <= 0 or width <= 0 or height <= 0:
        return []
    h, w = relevance.shape
    longer = max(h, w) * UPSAMPLE
    gw = max(w, int(round(longer * min(1.0, width / height))))
    gh = max(h, int(round(longer * min(1.0, height / width))))
    norm = relevance / peak
    regions = sorted((sorted(cells) for cells in components_bfs(upsample(norm, gw, gh) >= threshold)), key=lambda c: c[0])
    boxes = []
    for cells in regions:
        r = np.array([rc[0] for rc in cells])
        c = np.array([rc[1] for rc in cells])
        score = norm[np.minimum(r * h // gh, h - 1), np.minimum(c * w // gw, w - 1)].max()
        boxes.append({"x0": int(np.floor(c.min() * width / gw)), "y0": int(np.floor(r.min() * height / gh)),
                      "x1": int(np.ceil((c.max() + 1) * width / gw)), "y1": int(np.ceil((r.max() + 1) * height / gh)),
                      "score": round(float(score), 4)})
    boxes.sort(key=lambda b: -b["score"])
    return boxes[:max_boxes]
