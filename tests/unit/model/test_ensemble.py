"""A seed ensemble as one model: averaged logits, and CRM exact against a per-member oracle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from xai_pipeline.model.crm import crm
from xai_pipeline.model.ensemble import MemberFeatures, ensemble_of, ensemble_problem
from xai_pipeline.model.net import ModalityNet, ModelSpec, load_model, read_spec, save_model
from xai_pipeline.train.faithfulness import randomised

SPEC = ModelSpec(name="t", architecture="tiny_cnn", class_names=("a", "b", "c"), input_size=64, version="2.0.0")


def _members(count: int) -> list[ModalityNet]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = ModalityNet(SPEC).double().eval()
        with torch.no_grad():
            model.head.bias.uniform_(-1, 1)  # a bias that differs by member
        models.append(model)
    return models


def _ensemble_crm_oracle(members: list[ModalityNet], x: torch.Tensor) -> torch.Tensor:
    """R(l,m) = Σ_c (S̄_c − S̄_c(l,m))², S̄ the mean of the members' logits, (l,m) zeroed in every
    channel of every member's map: one head call per cell, no closed form."""
    feats = [m.forward_features(x) for m in members]
    base = torch.stack([m.forward_head(f) for m, f in zip(members, feats)]).mean(0)
    _, _, h, w = feats[0].shape
    out = torch.zeros(x.shape[0], h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            zeroed = []
            for f in feats:
                g = f.clone()
                g[:, :, i, j] = 0
                zeroed.append(g)
            s = torch.stack([m.forward_head(g) for m, g in zip(members, zeroed)]).mean(0)
            out[:, i, j] = (base - s).square().sum(-1)
    return out


@pytest.mark.parametrize("count", [2, 3])
def test_ensemble_logits_are_the_members_mean_and_its_crm_is_exact(count: int) -> None:
    members = _members(count)
    ensemble = ensemble_of(members).double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        mean_logits = torch.stack([m(x) for m in members]).mean(0)
        assert torch.allclose(ensemble(x), mean_logits, atol=1e-10)
        feats = ensemble.forward_features(x)
        assert feats.shape[1] == count * members[0].forward_features(x).shape[1]
        oracle = _ensemble_crm_oracle(members, x)
        assert oracle.abs().max() > 0
        assert torch.allclose(crm(feats, ensemble.head), oracle, rtol=1e-8, atol=1e-12)
    assert isinstance(ensemble.features, MemberFeatures) and ensemble.spec.members == count
    assert ensemble.spec.other_threshold is None


def test_the_ensemble_names_its_members_by_weight_hash(tmp_path: Path) -> None:
    saved = []
    for k, member in enumerate(_members(2)):
        save_model(member.float(), tmp_path / f"m{k}.safetensors")
        saved.append(load_model(tmp_path / f"m{k}.safetensors"))
    hashes = [m.spec.weights_sha256 for m in saved]
    assert all(len(h) == 64 for h in hashes) and hashes[0] != hashes[1]
    assert ensemble_of(saved).spec.extra["member_sha256"] == ",".join(hashes)


def test_ensemble_file_round_trip_and_single_models_keep_their_description(tmp_path: Path) -> None:
    members = [m.float() for m in _members(2)]
    ensemble = ensemble_of(members, name="ens", version="9.9.9")
    save_model(ensemble, tmp_path / "ens.safetensors")
    loaded = load_model(tmp_path / "ens.safetensors")
    assert loaded.spec.members == 2 and loaded.spec.name == "ens" and loaded.spec.version == "9.9.9"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ensemble(x), atol=1e-6)
    save_model(members[0], tmp_path / "one.safetensors")
    assert "members" not in json.loads(read_spec(tmp_path / "one.safetensors").to_json())
    assert read_spec(tmp_path / "one.safetensors").members == 1


def test_members_that_cannot_vote_together_are_refused() -> None:
    one, two = _members(2)
    assert ensemble_problem([one.spec]) == "an ensemble needs at least two members, got 1"
    assert "class_names" in (ensemble_problem([one.spec, replace(two.spec, class_names=("a", "b", "d"))]) or "")
    assert "input_size" in (ensemble_problem([one.spec, replace(two.spec, input_size=96)]) or "")
    assert "'mlp' head" in (ensemble_problem([one.spec, replace(two.spec, head="mlp")]) or "")
    assert "itself an ensemble" in (ensemble_problem([one.spec, replace(two.spec, members=2)]) or "")
    with pytest.raises(ValueError, match="at least two"):
        ensemble_of([one])
    with pytest.raises(ValueError, match="members must be at least 1"):
        replace(SPEC, members=0)


def test_randomised_twin_of_an_ensemble_resets_every_members_last_layers() -> None:
    ensemble = ensemble_of(_members(2))
    twin = randomised(ensemble, seed=3)
    for before, after in zip(ensemble.features.members, twin.features.members):
        convs = [(a, b) for a, b in zip(before.modules(), after.modules()) if isinstance(a, torch.nn.Conv2d)]
        assert not torch.equal(convs[-1][0].weight, convs[-1][1].weight)  # the last conv of each member
        assert torch.equal(convs[0][0].weight, convs[0][1].weight)  # the first stays
