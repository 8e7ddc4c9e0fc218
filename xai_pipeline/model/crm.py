"""Class-selective Relevance Mapping (CRM), batched and device-agnostic.

Reference: Kim I, Rajaraman S, Antani S. "Visual Interpretation of Convolutional Neural Network
Predictions in Classifying Medical Image Modalities." Diagnostics 2019;9(2):38.

Let f ∈ R^{K×H×W} be the last convolutional feature map (the input of global average pooling),
N = H·W, p = (1/N) Σ_{l,m} f(:, l, m) the pooled vector and S_c = head(p)_c the score (logit) of
class c. Zeroing spatial element (l, m) in every channel changes the pooled vector to
p − f(:, l, m)/N, giving S_c(l, m). The relevance of (l, m) is

    R(l, m) = Σ_c (S_c − S_c(l, m))²        summed over all C classes.

For a linear head S = W p + b the bias cancels and

    S_c − S_c(l, m) = W_c · f(:, l, m) / N = CAM_c(l, m) / N,   so   R(l, m) = ‖W f(:, l, m)‖² / N²,

one ``C×K`` by ``K×N`` product per image (:func:`crm_linear`). Any other head is evaluated on the N
perturbed pooled vectors in one batched call (:func:`crm_general`). With ``score="softmax"`` S_c
is the class probability instead of the logit (the paper uses logits; off by default).

Maps are not normalised here; :mod:`xai_pipeline.job.codec` normalises by the maximum for storage and
display (the paper shows values above 20% of the maximum).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from xai_pipeline.policies import CRM_SCORES

Score = Literal["logit", "softmax"]
SCORES: tuple[str, ...] = CRM_SCORES


def _check_features(features: torch.Tensor) -> None:
    if features.ndim != 4:
        raise ValueError(f"features must be B×K×H×W, got shape {tuple(features.shape)}")


def crm_linear(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CRM for a GAP + linear head with weight ``W`` (C×K): ``R = ‖W f(:,l,m)‖² / N²``.

    Args:
        features: ``B×K×H×W`` feature maps.
        weight: ``C×K`` weight of the linear layer (its bias cancels).

    Returns:
        ``B×H×W`` relevance maps in the dtype of ``features``.
    """
    _check_features(features)
    n = features.shape[2] * features.shape[3]
    cam = torch.einsum("ck,bkhw->bchw", weight.to(features.dtype), features)
    return cam.square().sum(dim=1) / float(n * n)


def _scores(logits: torch.Tensor, score: Score) -> torch.Tensor:
    return logits.softmax(dim=-1) if score == "softmax" else logits


def crm_general(
    features: torch.Tensor, head: nn.Module, score: Score = "logit", *, base_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """CRM for any head acting on the pooled vector, in one batched head call.

    The ``N`` perturbed pooled vectors ``p − f(:,l,m)/N`` of every image are stacked into a
    ``(B·N)×K`` batch. Memory is ``B·N·K`` elements.

    Args:
        features: ``B×K×H×W`` feature maps.
        head: module mapping ``*×K`` pooled vectors to ``*×C`` logits.
        score: ``"logit"`` (the paper) or ``"softmax"``.
        base_logits: ``head(p)`` if already computed.

    Returns:
        ``B×H×W`` relevance maps.
    """
    _check_features(features)
    b, k, h, w = features.shape
    n = h * w
    pooled = features.mean(dim=(2, 3))
    if base_logits is None:
        base_logits = head(pooled)
    flat = features.flatten(2).transpose(1, 2)  # B×N×K
    perturbed = pooled.unsqueeze(1) - flat / n
    logits = head(perturbed.reshape(b * n, k)).reshape(b, n, -1)
    diff = _scores(base_logits, score).unsqueeze(1) - _scores(logits, score)
    return diff.square().sum(dim=-1).reshape(b, h, w)


def crm(
    features: torch.Tensor, head: nn.Module, score: Score = "logit", *, base_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """CRM of a batch: the closed form for a linear head on logits, the batched general path else."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if isinstance(head, nn.Linear) and score == "logit":
        return crm_linear(features, head.weight)
    return crm_general(features, head, score, base_logits=base_logits)


def cam(features: torch.Tensor, weight: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016) of one class per image: ``Σ_k W_ck f(k,l,m)``.

    Args:
        features: ``B×K×H×W``; weight: ``C×K``; class_index: ``B`` class indices.
    """
    _check_features(features)
    return torch.einsum("bk,bkhw->bhw", weight.to(features.dtype)[class_index], features)


def grad_cam(features: torch.Tensor, head: nn.Module, class_index: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at the feature map: ``ReLU(Σ_k α_k f(k,l,m))``,
    ``α_k = mean_{l,m} ∂S_c/∂f(k,l,m)``. Needs autograd; meant for on-demand comparison."""
    _check_features(features)
    with torch.enable_grad():
        feats = features.detach().requires_grad_(True)
        logits = head(feats.mean(dim=(2, 3)))
        selected = logits.gather(1, class_index.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(selected, feats)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((alpha * feats.detach()).sum(dim=1))
