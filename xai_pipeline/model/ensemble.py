r"""A seed ensemble as one :class:`~xai_pipeline.model.net.ModalityNet`, with exact CRM.

``M`` models of one architecture, trained alike but for the seed of their initialisation,
sampling and augmentation, average their logits:

    S̄_c = (1/M) Σ_k S^k_c,    S^k = W^k p^k + b^k,    p^k = (1/N) Σ_{l,m} f^k(:, l, m).

Stacking the members' last feature maps along the channels, f = [f^1; …; f^M] ∈ R^{MK×H×W}
(same architecture and input size, so the same H×W), and their heads side by side,

    W̄ = (1/M) [W^1 … W^M] ∈ R^{C×MK},    b̄ = (1/M) Σ_k b^k,

gives S̄ = W̄ GAP(f) + b̄: a GAP + linear model whose ``features`` run every member
(:class:`xai_pipeline.model.backbones.MemberFeatures`). Zeroing spatial element (l, m) in every channel of f zeroes it in every
member, so the ensemble's Class-selective Relevance Map (Kim, Rajaraman & Antani, Diagnostics
2019;9(2):38)

    R(l, m) = Σ_c (S̄_c − S̄_c(l, m))² = ‖W̄ f(:, l, m)‖² / N²

is :func:`xai_pipeline.model.crm.crm_linear` unchanged, on the stacked map. Logits rather than
probabilities are averaged because that keeps the head linear and CRM in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from xai_pipeline.model.backbones import MemberFeatures
from xai_pipeline.model.net import ModalityNet, ModelSpec

__all__ = ["MemberFeatures", "ensemble_of", "ensemble_problem"]


_SHARED = ("architecture", "class_names", "input_size", "mean", "std")
"""What every member of an ensemble must share (they see the same input and vote on the same classes)."""


def ensemble_problem(specs: Sequence[ModelSpec]) -> str | None:
    """Why ``specs`` cannot form an ensemble, or None when they can."""
    if len(specs) < 2:
        return f"an ensemble needs at least two members, got {len(specs)}"
    for k, spec in enumerate(specs):
        if spec.members != 1:
            return f"member {k} ({spec.name} {spec.version}) is itself an ensemble of {spec.members}"
        if spec.head != "linear":
            return f"member {k} has a {spec.head!r} head; averaging logits stays linear only for linear heads"
        for name in _SHARED:
            if getattr(spec, name) != getattr(specs[0], name):
                return f"member {k}'s {name} {getattr(spec, name)!r} differs from member 0's {getattr(specs[0], name)!r}"
    return None


@torch.no_grad()
def ensemble_of(models: Sequence[ModalityNet], name: str | None = None, version: str | None = None) -> ModalityNet:
    r"""The logit-averaging ensemble of ``models`` as one model (see the module's docstring).

    The result is a float32 model on the CPU in eval mode, whatever the members' dtype and device.
    It has no threshold and no figure-type head: both are set on the ensemble's own
    outputs afterwards (``train``'s threshold rule, :mod:`xai_pipeline.train.figure_type`). The
    members' weight hashes are kept in ``extra["member_sha256"]``.

    Raises:
        ValueError: when the members cannot form an ensemble (:func:`ensemble_problem`).
    """
    problem = ensemble_problem([m.spec for m in models])
    if problem:
        raise ValueError(problem)
    first = models[0].spec
    spec = replace(first, name=name or first.name, version=version or first.version, members=len(models),
                   other_threshold=None, class_thresholds={}, figure_types=(), weights_sha256="",
                   extra=dict(first.extra) | {"member_sha256": ",".join(m.spec.weights_sha256 for m in models)})
    ensemble = ModalityNet(spec)
    for target, model in zip(ensemble.features.members, models):
        target.load_state_dict(model.features.state_dict())
    m = float(len(models))
    ensemble.head.weight.copy_(torch.cat([model.head.weight for model in models], dim=1) / m)
    ensemble.head.bias.copy_(torch.stack([model.head.bias for model in models]).mean(dim=0))
    return ensemble.eval()
