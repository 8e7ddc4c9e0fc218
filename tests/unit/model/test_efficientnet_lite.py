"""EfficientNet-Lite1/2: the package's model (random weights and BN statistics) and timm's
definition with the renamed state dict compute the same function; bad state dicts are refused."""

from __future__ import annotations

import pytest
import torch

from xai_pipeline.model.backbones import build_backbone
from xai_pipeline.model.efficientnet_lite import LITE_VARIANTS, convert_lite_state, efficientnet_lite_features, lite_blocks


@pytest.mark.parametrize("architecture", ["efficientnet_lite1", "efficientnet_lite2"])
def test_package_lite_is_timm_lite_with_renamed_keys(architecture: str) -> None:
    model_code = pytest.importorskip("efficientnet_lite_pytorch")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    v = LITE_VARIANTS[architecture]
    reference = model_code.EfficientNet.from_name(architecture.replace("_", "-")).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    timm_net = efficientnet_lite_features(architecture).eval()
    timm_net.load_state_dict(convert_lite_state(reference.state_dict(), architecture), strict=True)
    x = torch.randn(1, 3, v.input_size, v.input_size)  # the package's static 'SAME' padding is for this size
    with torch.no_grad():
        torch.testing.assert_close(timm_net(x), reference.extract_features(x), rtol=0, atol=1e-4)
    assert len(lite_blocks(timm_net)) == 2 + v.n_blocks == 23


def _fake_package_state(architecture: str) -> dict[str, torch.Tensor]:
    """A package-named state dict built from timm's shapes by inverting the renaming."""
    from xai_pipeline.model.efficientnet_lite import _DS_BLOCK_MAP, _IR_BLOCK_MAP, _TOP_MAP, _timm_template

    inverse = {f"{new}.": f"{old}." for old, new in _TOP_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    flat = 0
    for stage, repeats in enumerate(LITE_VARIANTS[architecture].stage_repeats):
        table = _DS_BLOCK_MAP if stage == 0 else _IR_BLOCK_MAP
        for j in range(repeats):
            for old, new in table.items():
                inverse[f"blocks.{stage}.{j}.{new}."] = f"_blocks.{flat}.{old}."
            flat += 1
    for key, (shape, dtype) in _timm_template(architecture).items():
        module, param = key.rsplit(".", 1)
        out[inverse[module + "."] + param] = torch.zeros(shape, dtype=dtype)
    return out


def test_lite1_weights_are_refused_as_lite2_and_unknown_keys_are_named() -> None:
    lite1 = _fake_package_state("efficientnet_lite1")
    assert len(convert_lite_state(lite1, "efficientnet_lite1")) == len(lite1)
    with pytest.raises(ValueError, match="shape"):
        convert_lite_state(lite1, "efficientnet_lite2")
    with pytest.raises(ValueError, match="block index 21 out of range"):
        convert_lite_state({**lite1, "_blocks.21._bn1.weight": torch.zeros(1)}, "efficientnet_lite1")
    with pytest.raises(ValueError, match="not an EfficientNet-Lite1"):
        convert_lite_state({**lite1, "_extra.weight": torch.zeros(1)}, "efficientnet_lite1")
    with pytest.raises(ValueError, match="not an EfficientNet-Lite variant"):
        efficientnet_lite_features("efficientnet_lite7")
    features, channels = build_backbone("efficientnet_lite2")
    assert channels == 1280 and features(torch.zeros(1, 3, 64, 64)).shape == (1, 1280, 2, 2)
