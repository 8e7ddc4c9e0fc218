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
