"""Modality classifier: a model description that travels with its weights.

A model file is one ``.safetensors`` file whose header metadata holds the :class:`ModelSpec` as
JSON: architecture, class names, input size, normalisation, version, the weights' SHA-256 and the
"other" threshold. Weights are read with ``safetensors`` only; pickle checkpoints are refused.

The network is split into ``features`` (the last conv map, entering global average pooling) and a
``head`` applied to the pooled vector, so CRM (:mod:`xai_pipeline.model.crm`) needs no hooks:

    logits = head(GAP(features(x))),   GAP(f) = (1/N) Σ_{l,m} f(:, l, m),  N = H·W
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from xai_pipeline.model.backbones import MemberFeatures, build_backbone
from xai_pipeline.errors import ModelFileError

SPEC_METADATA_KEY = "xai_pipeline.model_spec"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OTHER_LABEL = "other"
DEFAULT_MODEL_PATH = Path(__file__).parents[1] / "weights" / "modality-default.safetensors"



@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild, feed and interpret a classifier.

    ``head`` is ``"linear"`` (GAP + one linear layer, the paper's setting) or ``"mlp"`` (GAP +
    Linear-ReLU-Linear, to exercise CRM's general path). ``other_threshold``: a top softmax
    probability below it is reported as ``"other"``; ``None`` disables it. ``class_thresholds``:
    per-class thresholds that replace it for the figures whose top class is named
    (:mod:`xai_pipeline.train.thresholds`; empty: the one threshold for all). ``figure_types``: the
    outputs of the figure-type head (a linear layer on the pooled features,
    :mod:`xai_pipeline.train.figure_type`); empty for a model without one. ``members``: how many
    backbones of ``architecture`` the model runs, their feature maps stacked along the channels (a
    seed ensemble, :mod:`xai_pipeline.model.ensemble`); 1 for one network.
    """

    name: str
    architecture: str
    class_names: tuple[str, ...]
    version: str = "0"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head: str = "linear"
    head_hidden: int = 256
    other_threshold: float | None = None
    class_thresholds: dict[str, float] = field(default_factory=dict)
    figure_types: tuple[str, ...] = ()
    members: int = 1
    weights_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError("a classifier needs at least two class names")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names repeat: {self.class_names}")
        if OTHER_LABEL in self.class_names:
            raise ValueError(f"{OTHER_LABEL!r} is reserved for low-confidence predictions")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        unknown = sorted(set(self.class_thresholds) - set(self.class_names))
        if unknown:
            raise ValueError(f"class_thresholds name classes the model does not have: {unknown}")
        if any(not 0.0 <= t <= 1.0 for t in self.class_thresholds.values()):
            raise ValueError(f"class_thresholds must lie in [0, 1]: {self.class_thresholds}")

    @property
    def decision_thresholds(self) -> float | tuple[float, ...] | None:
        """What the labels compare the top probability with: one threshold per class (in
        ``class_names`` order; ``other_threshold`` for a class not in ``class_thresholds``, 0 when
        that is None too) when the model has per-class thresholds, else ``other_threshold``."""
        if not self.class_thresholds:
            return self.other_threshold
        default = self.other_threshold if self.other_threshold is not None else 0.0
        return tuple(float(self.class_thresholds.get(c, default)) for c in self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        data = asdict(self)
        if self.members == 1:  # one network: the description as before ensembles, so its file's bytes stay the same
            del data["members"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        data = json.loads(text)
        for key in ("class_names", "mean", "std", "figure_types"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class ModalityNet(nn.Module):
    """``features`` (B×K×H×W; K summed over the members of an ensemble) → global average pooling
    → ``head`` (B×C logits)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.features, channels = build_backbone(spec.architecture)
        if spec.members > 1:
            backbones = [self.features] + [build_backbone(spec.architecture)[0] for _ in range(spec.members - 1)]
            self.features, channels = MemberFeatures(backbones), channels * spec.members
        if spec.head == "linear":
            self.head: nn.Module = nn.Linear(channels, spec.num_classes)
        else:
            self.head = nn.Sequential(
                nn.Linear(channels, spec.head_hidden), nn.ReLU(), nn.Linear(spec.head_hidden, spec.num_classes)
            )
        self.type_head: nn.Linear | None = nn.Linear(channels, len(spec.figure_types)) if spec.figure_types else None
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``B×3×S×S`` (or floats in [0, 1]) → normalised float input."""
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _state_for_saving(model: ModalityNet, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor
    return state


def save_model(model: ModalityNet, path: str | Path, *, dtype: torch.dtype | None = None) -> ModelSpec:
    """Write weights and description to one safetensors file; returns the spec as saved.

    ``dtype=torch.float16`` halves the file; weights are cast back to float32 on load.
    """
    from safetensors.torch import save_file

    state = _state_for_saving(model, dtype)
    spec = replace(model.spec, weights_sha256=weights_sha256(state))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={SPEC_METADATA_KEY: spec.to_json()})
    model.spec = spec
    return spec


_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _check_not_pickle(path: Path) -> None:
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(_PICKLE_MAGIC) or path.suffix in (".pt", ".pth", ".ckpt", ".pkl"):
        raise ModelFileError(
            f"{path}: refusing a pickle-based checkpoint (it can run arbitrary code on load). "
            "Convert it once in a trusted environment to safetensors with "
            "xai_pipeline.model.net.save_model and pass the .safetensors file."
        )


def read_spec(path: str | Path) -> ModelSpec:
    """Read only the description from a model file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    _check_not_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        raise ModelFileError(f"{path}: not a safetensors file ({exc})") from exc
    if SPEC_METADATA_KEY not in metadata:
        raise ModelFileError(f"{path}: safetensors file has no {SPEC_METADATA_KEY!r} metadata")
    return ModelSpec.from_json(metadata[SPEC_METADATA_KEY])


def _current_names(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the backbone keys of EfficientNet-Lite0 files saved with the hand-written backbone
    (``features._conv_stem.weight``, …) to timm's; the hash was checked on the names as stored."""
    if spec.architecture != "efficientnet_lite0" or "features._conv_stem.weight" not in state:
        return state
    from xai_pipeline.model.backbones import convert_lite0_state

    prefix = "features."
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return rest | {prefix + k: v for k, v in convert_lite0_state(backbone, drop_fc=False).items()}


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> ModalityNet:
    """Load a model file (the bundled default when ``path`` is None) in eval mode.

    Raises :class:`ModelFileError` when the weights do not match the recorded hash.
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    spec = read_spec(path)
    state = load_file(str(path))
    if spec.weights_sha256 and weights_sha256(state) != spec.weights_sha256:
        raise ModelFileError(f"{path}: weights do not match weights_sha256 in the description")
    model = ModalityNet(spec)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(_current_names(spec, state))
    return model.to(device).eval()
