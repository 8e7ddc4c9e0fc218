"""Independent references for CRM, used only by tests and benchmarks."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
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
    (its ``analysis_grid``), regions by :func:`components_bfs`, boxes from each region's cells, the
    score from the feature cells under them, ordered by score then by each region's first cell."""
    from xai_pipeline.model.roi import analysis_grid

    found = analysis_grid(relevance, width, height)
    if found is None:
        return []
    norm, grid = found
    (h, w), (gh, gw) = norm.shape, grid.shape
    regions = sorted((sorted(cells) for cells in components_bfs(grid >= threshold)), key=lambda c: c[0])
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


# --- EfficientNet-Lite0 written out by hand (the project's backbone before timm's): an independent
# reference for timm's tf_efficientnet_lite0 and for the key conversion of older model files. ---

class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), computed per input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (repeats, kernel, stride, expand, in, out) from efficientnet_lite_builder.py, width/depth 1.0.
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 up to its 1×1 head conv: ``B×3×S×S -> B×1280×S/32×S/32``.

    Attribute names follow ``efficientnet_lite_pytorch`` so its ImageNet state dict loads with
    every key matched (see :func:`load_lite0_imagenet`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))
