"""Deletion, insertion, ROAD and randomisation on a tiny model; ROAD and the perturbation steps
checked against pytorch-grad-cam's implementation (the ROAD authors' imputer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_pipeline.model.net import ModalityNet, ModelSpec
from xai_pipeline.train import faithfulness as fa


@pytest.fixture(scope="module")
def model() -> ModalityNet:
    torch.manual_seed(0)
    return ModalityNet(ModelSpec(name="t", architecture="tiny_cnn", class_names=("a", "b", "c"), input_size=64)).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_curves_start_at_the_figure_and_end_at_the_baseline(model: ModalityNet, pixels: torch.Tensor) -> None:
    x = model.normalize(pixels)
    maps, predicted = fa.relevance_maps(model, x)
    assert set(maps) == set(fa.METHODS) and all(m.shape == (4, 4, 4) for m in maps.values())  # 64 px / 16 = 4×4 cells
    original = model(x).softmax(-1).gather(1, predicted[:, None])[:, 0]
    blurred = model(fa.baseline(x)).softmax(-1).gather(1, predicted[:, None])[:, 0]
    deletion = fa.perturbation_curve(model, x, maps["crm"], predicted, "deletion", steps=4)
    insertion = fa.perturbation_curve(model, x, maps["crm"], predicted, "insertion", steps=4)
    assert deletion.shape == (4, 5)
    torch.testing.assert_close(deletion[:, 0], original.detach())
    torch.testing.assert_close(deletion[:, -1], blurred.detach())
    torch.testing.assert_close(insertion[:, 0], blurred.detach())
    torch.testing.assert_close(insertion[:, -1], original.detach())


def test_the_top_cells_are_removed_first() -> None:
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    ranks = fa._ranks(maps)
    assert ranks.tolist() == [[[3, 0], [1, 2]]]
    mask = fa._pixel_mask(ranks, 2, (4, 4))[0, 0]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]


def test_batched_imputation_solves_the_road_authors_system(pixels: torch.Tensor) -> None:
    """Our conjugate-gradient imputation of a batch equals pytorch-grad-cam's sparse direct solve
    (ROAD's reference imputer), noise off, for holes of several sizes."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    x = pixels.float() / 255
    cells = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    for share in (0.2, 0.6, 0.9):
        missing = torch.nn.functional.interpolate((cells < share).float(), size=(64, 64), mode="nearest")
        ours = fa.impute(x.double(), missing.double(), noise=0.0, tolerance=1e-10, solver="cg").float()
        reference = torch.stack([NoisyLinearImputer(noise=0.0)(x[i], 1 - missing[i, 0]) for i in range(4)])
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", ["sparse", "cg"])
def test_road_scores_match_pytorch_grad_cam(model: ModalityNet, pixels: torch.Tensor, solver: str) -> None:
    """Our ROAD score at one fraction, with either imputation, equals pytorch-grad-cam's
    ROADMostRelevantFirst (noise off on both sides: its imputer's noise is drawn per image from
    torch's global generator)."""
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x = model.normalize(pixels)
    maps, predicted = fa.relevance_maps(model, x)
    ours = fa.road_curve(model, x, maps["crm"], predicted, fractions=(0.25,), noise=0.0, solver=solver)[:, 0]
    cams = torch.nn.functional.interpolate(maps["crm"][:, None], size=(64, 64), mode="nearest")[:, 0].numpy()
    metric = road.PerturbationConfidenceMetric(road.RemoveMostRelevantFirst(75, road.NoisyLinearImputer(noise=0.0)))
    theirs = metric(x, cams, [ClassifierOutputSoftmaxTarget(int(c)) for c in predicted], model, return_diff=False)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


def test_deletion_steps_match_pytorch_grad_cams_perturbation_with_the_same_fill(model: ModalityNet, pixels: torch.Tensor) -> None:
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x = model.normalize(pixels)
    maps, predicted = fa.relevance_maps(model, x)
    ours = fa.perturbation_curve(model, x, maps["grad_cam"], predicted, "deletion", steps=4, fill="mean")[:, 1]  # a quarter removed

    def mean_fill(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return image * keep + image.mean(dim=(1, 2), keepdim=True) * (1 - keep)

    cams = torch.nn.functional.interpolate(maps["grad_cam"][:, None], size=(64, 64), mode="nearest")[:, 0].numpy()
    metric = PerturbationConfidenceMetric(RemoveMostRelevantFirst(75, mean_fill))
    theirs = metric(x, cams, [ClassifierOutputSoftmaxTarget(int(c)) for c in predicted], model, return_diff=False)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_randomisation_changes_the_model_and_correlations_are_ranks(model: ModalityNet, pixels: torch.Tensor) -> None:
    twin = fa.randomised(model)
    assert not torch.equal(twin.head.weight, model.head.weight)
    x = model.normalize(pixels)
    a, _ = fa.relevance_maps(model, x)
    rho = fa.rank_correlations(a["crm"], a["crm"])
    assert np.allclose(rho, 1.0)
    assert np.all(np.abs(fa.rank_correlations(a["crm"], -a["crm"]) + 1) < 1e-9)


def test_summary_has_the_areas_of_every_method_per_class(model: ModalityNet, pixels: torch.Tensor, tmp_path) -> None:
    curves = fa.batch_curves(model, pixels, steps=4, road=True)
    labels = np.array([0, 1, 1, 2])
    result = fa.summarise([curves], labels, ["a", "b", "c"], steps=4)
    for name in fa.METHODS:
        assert {"deletion_auc", "insertion_auc", "road_auc", "randomisation_rank_correlation"} <= set(result[name])
        assert 0 <= result[name]["deletion_auc"] <= 1 and set(result[name]["per_class"]) == {"a", "b", "c"}
    fa.curves_png(result, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_grad_cam_maps_match_pytorch_grad_cam(model: ModalityNet, pixels: torch.Tensor) -> None:
    """Our Grad-CAM at the feature map, put through pytorch-grad-cam's own post-processing
    (min-max per figure, its resize to the input, min-max again), equals its GradCAM on the same
    layer."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = model.normalize(pixels)
    maps, predicted = fa.relevance_maps(model, x)
    with GradCAM(model=model, target_layers=[model.features]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in predicted])
    for ours, reference in zip(maps["grad_cam"].numpy(), theirs):
        ours = ours - ours.min()
        ours = cv2.resize(np.float32(ours / (1e-7 + ours.max())), (64, 64))
        ours = (ours - ours.min()) / (1e-7 + (ours - ours.min()).max())
        np.testing.assert_allclose(ours, reference, atol=1e-4)
