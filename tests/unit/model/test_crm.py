"""CRM fast paths against the brute-force definition and against HiResCAM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oracles import crm_bruteforce, hirescam
from xai_pipeline.model.crm import cam, crm, crm_general, crm_linear, grad_cam
from xai_pipeline.model.net import ModalityNet, ModelSpec

torch.manual_seed(0)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).detach())


@pytest.mark.parametrize("shape", [(4, 16, 7, 7), (2, 32, 5, 9), (1, 8, 1, 1), (3, 64, 14, 14)])
def test_linear_fast_path_matches_bruteforce(shape: tuple[int, int, int, int]) -> None:
    feats = torch.rand(*shape, dtype=torch.float64) * 3
    head = nn.Linear(shape[1], 6).double()
    nn.init.normal_(head.bias, std=5.0)  # a large bias must cancel
    assert _rel_err(crm(feats, head), crm_bruteforce(feats, head)) < 1e-5


def test_general_path_matches_bruteforce_for_mlp_head() -> None:
    feats = torch.randn(3, 20, 6, 5, dtype=torch.float64).relu()
    head = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    assert _rel_err(crm(feats, head), crm_bruteforce(feats, head)) < 1e-5


@pytest.mark.parametrize("linear", [True, False])
def test_softmax_scores_match_bruteforce(linear: bool) -> None:
    feats = torch.rand(2, 12, 4, 4, dtype=torch.float64) * 4
    head = nn.Linear(12, 5).double() if linear else nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    fast = crm(feats, head, "softmax")
    assert _rel_err(fast, crm_bruteforce(feats, head, "softmax")) < 1e-5
    assert not torch.allclose(fast, crm(feats, head, "logit"))


def test_general_path_equals_closed_form_for_linear_head() -> None:
    feats = torch.rand(2, 10, 3, 4, dtype=torch.float64)
    head = nn.Linear(10, 3).double()
    assert _rel_err(crm_general(feats, head), crm_linear(feats, head.weight)) < 1e-10


def test_equals_sum_of_squared_hirescam() -> None:
    feats = torch.rand(2, 16, 7, 7, dtype=torch.float64)
    head = nn.Linear(16, 6).double()
    expected = sum(hirescam(feats, head, c).square() for c in range(6))
    assert _rel_err(crm(feats, head), expected) < 1e-10


def test_bias_cancels_and_map_is_class_independent() -> None:
    feats = torch.rand(2, 8, 5, 5, dtype=torch.float64)
    head = nn.Linear(8, 4).double()
    before = crm(feats, head)
    with torch.no_grad():
        head.bias.add_(torch.randn(4, dtype=torch.float64) * 100)
    assert torch.allclose(before, crm(feats, head))


def test_zero_features_give_zero_map_and_positions_are_local() -> None:
    feats = torch.zeros(1, 4, 3, 3, dtype=torch.float64)
    feats[0, :, 1, 2] = 1.0
    head = nn.Linear(4, 3).double()
    r = crm(feats, head)[0]
    assert r[1, 2] > 0
    r[1, 2] = 0
    assert torch.count_nonzero(r) == 0


def test_float32_fast_path_close_to_float64_reference() -> None:
    feats = torch.rand(8, 512, 7, 7)
    head = nn.Linear(512, 6)
    ref = crm_bruteforce(feats.double(), head.double())
    assert _rel_err(crm(feats, head.float()).double(), ref) < 1e-4


def test_whole_model_map_matches_bruteforce_on_its_features() -> None:
    model = ModalityNet(ModelSpec(name="t", architecture="tiny_cnn", class_names=("a", "b", "c"), input_size=64)).eval().double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert _rel_err(crm(feats, model.head), crm_bruteforce(feats, model.head)) < 1e-5


def test_rejects_bad_shapes_and_scores() -> None:
    with pytest.raises(ValueError, match="B×K×H×W"):
        crm(torch.rand(3, 4, 5), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="score"):
        crm(torch.rand(1, 3, 2, 2), nn.Linear(3, 2), "energy")  # type: ignore[arg-type]


def test_cam_and_grad_cam_agree_for_linear_head() -> None:
    feats = torch.rand(2, 6, 4, 4, dtype=torch.float64)
    head = nn.Linear(6, 3).double()
    idx = torch.tensor([0, 2])
    c = cam(feats, head.weight, idx)
    g = grad_cam(feats, head, idx)
    # For GAP + linear, Grad-CAM = ReLU(CAM) / N.
    assert torch.allclose(g, c.relu() / 16)
