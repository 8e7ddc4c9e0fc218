"""One forward pass of a model on a batch: logits, probabilities, CRM maps and figure-type
probabilities, on the batch's device (used by the job's classifier, evaluation and ``show``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xai_pipeline.model import crm as crm_math
from xai_pipeline.model.net import ModalityNet


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Predictions:
    logits: torch.Tensor  # B×C
    probabilities: torch.Tensor  # B×C
    relevance: torch.Tensor  # B×H×W
    types: torch.Tensor | None = None  # B×T figure-type probabilities (models with a figure-type head)


@torch.inference_mode()
def predict(model: ModalityNet, pixels: torch.Tensor, score: crm_math.Score = "logit", autocast: torch.dtype | None = None) -> Predictions:
    """Logits, softmax probabilities and CRM maps of a uint8 ``B×3×S×S`` batch, on its device.

    ``autocast`` (e.g. ``torch.bfloat16`` on a GPU) runs the backbone in lower precision; the
    head and CRM always run in float32 on the feature map.
    """
    with torch.autocast(pixels.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        feats = model.forward_features(model.normalize(pixels))
    feats = feats.float()
    pooled = feats.mean(dim=(2, 3))
    logits = model.head(pooled)
    relevance = crm_math.crm(feats, model.head, score, base_logits=logits)
    types = model.type_head(pooled).softmax(dim=-1) if model.type_head is not None else None
    return Predictions(logits, logits.softmax(dim=-1), relevance, types)
