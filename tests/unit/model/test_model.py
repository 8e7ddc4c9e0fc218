from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import tiny_model_file
from xai_pipeline.model.backbones import BACKBONES
from xai_pipeline.model.net import DEFAULT_MODEL_PATH, ModalityNet, ModelFileError, ModelSpec, load_model, read_spec


def test_saved_model_loads_and_predicts_the_same_logits(tmp_path: Path) -> None:
    path = tiny_model_file(tmp_path / "m.safetensors", head="mlp")
    spec = read_spec(path)
    assert spec.architecture == "tiny_cnn" and spec.class_names == ("chest_xray", "ct", "mri") and len(spec.weights_sha256) == 64
    torch.manual_seed(0)
    original = ModalityNet(spec).eval()
    loaded = load_model(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))


def test_pickle_checkpoints_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(renamed)


def test_tampered_weights_are_detected(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tiny_model_file(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key] + 1
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match="weights_sha256"):
        load_model(path)


def test_missing_and_non_safetensors_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(junk)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="reserved"):
        ModelSpec(name="x", architecture="tiny_cnn", class_names=("ct", "other"))
    with pytest.raises(ValueError, match="unknown architecture"):
        ModalityNet(ModelSpec(name="x", architecture="vgg99", class_names=("a", "b")))


@pytest.mark.parametrize("architecture", sorted(BACKBONES))
def test_every_backbone_ends_in_a_feature_map_and_linear_head(architecture: str) -> None:
    model = ModalityNet(ModelSpec(name="x", architecture=architecture, class_names=("a", "b", "c"), input_size=64)).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(1, 3, 64, 64))
        assert feats.ndim == 4 and feats.shape[1] == model.head.in_features
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_bundled_default_model_is_real_and_small() -> None:
    spec = read_spec(DEFAULT_MODEL_PATH)
    assert DEFAULT_MODEL_PATH.stat().st_size <= 20 * 1024 * 1024
    assert set(spec.class_names) == {"chest_xray", "ct", "mri", "ultrasound", "fundus", "histology"}
    assert spec.other_threshold is not None and 0 < spec.other_threshold < 1
    assert (DEFAULT_MODEL_PATH.parent / "MODEL_CARD.md").is_file()


def test_pure_modules_do_not_import_ray_or_boto3() -> None:
    code = (
        "import sys; import xai_pipeline.schema, xai_pipeline.job.decode, xai_pipeline.model.net, xai_pipeline.model.crm, "
        "xai_pipeline.job.codec, xai_pipeline.job.classify, xai_pipeline.job.device_decode; "
        "bad = [m for m in ('ray', 'boto3') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_timm_lite0_is_the_hand_written_lite0_with_renamed_keys() -> None:
    """timm's tf_efficientnet_lite0 computes the same function as the hand-written reference once
    its state dict is renamed (random weights and BN statistics, square and non-square inputs)."""
    from oracles import EfficientNetLite0Features

    from xai_pipeline.model.backbones import convert_lite0_state, efficientnet_lite0_features

    torch.manual_seed(0)
    reference = EfficientNetLite0Features().eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    timm_net = efficientnet_lite0_features().eval()
    timm_net.load_state_dict(convert_lite0_state(reference.state_dict()), strict=True)
    with torch.no_grad():
        for shape in ((2, 3, 224, 224), (1, 3, 200, 256)):
            x = torch.randn(shape)
            torch.testing.assert_close(timm_net(x), reference(x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0"):
        convert_lite0_state({**reference.state_dict(), "_extra.weight": torch.zeros(1)})


def test_model_files_saved_with_the_hand_written_lite0_keys_still_load(tmp_path: Path) -> None:
    """A file whose backbone keys are the hand-written names (hash over those names) loads into
    timm's backbone with the same logits."""
    from safetensors.torch import save_file

    from oracles import EfficientNetLite0Features
    from xai_pipeline.model.net import SPEC_METADATA_KEY, weights_sha256

    torch.manual_seed(1)
    spec = ModelSpec(name="old", architecture="efficientnet_lite0", class_names=("a", "b"), version="1", input_size=64)
    reference = EfficientNetLite0Features().eval()
    head = torch.nn.Linear(1280, 2)
    state = {f"features.{k}": v for k, v in reference.state_dict().items()} | {f"head.{k}": v for k, v in head.state_dict().items()}
    spec = replace(spec, weights_sha256=weights_sha256(state))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "old.safetensors"), metadata={SPEC_METADATA_KEY: spec.to_json()})
    model = load_model(tmp_path / "old.safetensors")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = head(reference(x).mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
