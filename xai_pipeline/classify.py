"""The classification + CRM stage: a callable class that loads the model once per actor.

For each batch it moves the decoded pixels of the ``ok`` rows to the model's device, runs the
backbone once, and from the same feature map computes the logits (GAP + head) and the CRM maps
(:func:`xai_pipeline.crm.crm`), all batched; one host transfer returns the results.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xai_pipeline import crm as crm_math
from xai_pipeline import schema
from xai_pipeline.model import OTHER_LABEL, ModalityNet, load_model
from xai_pipeline.schema import Status

log = logging.getLogger(__name__)

# Test hook for fault-injection tests, not a production switch: when this variable names a file
# that does not exist yet, the first batch creates it and kills its actor process mid-batch.
KILL_ONCE_ENV = "XAI_PIPELINE_TEST_KILL_ACTOR_ONCE"


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


@torch.inference_mode()
def predict(model: ModalityNet, pixels: torch.Tensor, score: crm_math.Score = "logit", autocast: torch.dtype | None = None) -> Predictions:
    """Logits, softmax probabilities and CRM maps of a uint8 ``B×3×S×S`` batch, on its device.

    ``autocast`` (e.g. ``torch.bfloat16`` on a GPU) runs the backbone in lower precision; the
    head and CRM always run in float32 on the feature map.
    """
    with torch.autocast(pixels.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        feats = model.forward_features(model.normalize(pixels))
    feats = feats.float()
    logits = model.head(feats.mean(dim=(2, 3)))
    relevance = crm_math.crm(feats, model.head, score, base_logits=logits)
    return Predictions(logits, logits.softmax(dim=-1), relevance)


def labels_for(probabilities: np.ndarray, class_names: tuple[str, ...], other_threshold: float | None) -> list[str]:
    """Top class name per row, or ``"other"`` when its probability is below the threshold."""
    top = probabilities.argmax(axis=1)
    labels = [class_names[i] for i in top]
    if other_threshold is not None:
        conf = probabilities.max(axis=1)
        labels = [OTHER_LABEL if c < other_threshold else lab for lab, c in zip(labels, conf)]
    return labels


def _maybe_die_for_test() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        log.warning("test hook %s: killing this classifier actor mid-batch", KILL_ONCE_ENV)
        os._exit(1)


class FigureClassifier:
    """Ray Data callable class: ``decoded batch -> batch + modality, confidence, probabilities, crm_map``.

    Args:
        model_path: a ``.safetensors`` model file; ``None`` for the bundled default.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        crm_score: ``"logit"`` (paper) or ``"softmax"``.
        torch_threads: intra-op threads on the CPU.
        precision: ``"auto"`` (bfloat16 autocast on a GPU, float32 on the CPU), ``"fp32"`` or ``"bf16"``.
        compile_model: ``torch.compile`` the backbone (pays off on long GPU runs).
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "auto",
        crm_score: crm_math.Score = "logit",
        torch_threads: int = 2,
        precision: str = "auto",
        compile_model: bool = False,
    ) -> None:
        torch.set_num_threads(max(1, torch_threads))
        self.device = resolve_device(device)
        self.model = load_model(Path(model_path) if model_path else None, self.device).to(memory_format=torch.channels_last)
        if compile_model:
            self.model.features = torch.compile(self.model.features)  # type: ignore[assignment]
        self.autocast = torch.bfloat16 if precision == "bf16" or (precision == "auto" and self.device.type == "cuda") else None
        self.spec = self.model.spec
        self.crm_score = crm_score
        size = self.spec.input_size
        probe = torch.zeros((1, 3, size, size), dtype=torch.uint8, device=self.device)
        self.map_shape = tuple(predict(self.model, probe, crm_score, self.autocast).relevance.shape[1:])
        log.info("loaded model %s v%s on %s (autocast %s)", self.spec.name, self.spec.version, self.device, self.autocast)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[schema.STATUS])
        ok = np.asarray(batch[schema.STATUS]) == Status.OK.value
        num_classes = self.spec.num_classes
        probabilities = np.full((n, num_classes), np.nan, dtype=np.float32)
        confidence = np.full(n, np.nan, dtype=np.float32)
        modality = np.full(n, "", dtype=object)
        relevance = np.zeros((n, *self.map_shape), dtype=np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch[schema.PIXELS][ok]))
            if self.device.type == "cuda":
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            out = predict(self.model, pixels, self.crm_score, self.autocast)
            _maybe_die_for_test()
            # One device-to-host copy per batch: probabilities and maps side by side.
            host = torch.cat([out.probabilities, out.relevance.flatten(1)], dim=1).cpu().numpy()
            probs = host[:, :num_classes]
            relevance[ok] = host[:, num_classes:].reshape(-1, *self.map_shape)
            probabilities[ok] = probs
            confidence[ok] = probs.max(axis=1)
            modality[ok] = labels_for(probs, self.spec.class_names, self.spec.other_threshold)
        result = {k: v for k, v in batch.items() if k != schema.PIXELS}
        result.update(
            {
                schema.MODALITY: modality,
                schema.CONFIDENCE: confidence,
                schema.PROBABILITIES: probabilities,
                schema.CRM_MAP: relevance,
                schema.MODEL_NAME: np.full(n, self.spec.name, dtype=object),
                schema.MODEL_VERSION: np.full(n, self.spec.version, dtype=object),
            }
        )
        return result
