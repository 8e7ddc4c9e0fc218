"""Evaluation: accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix
(scikit-learn), expected calibration error, and the class-mean CRM map of each modality.

Expected calibration error over B equal-width confidence bins:

    ECE = Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|

Class-mean CRM (the paper's class-specific ROI maps): each map normalised by its maximum,
averaged over the correctly classified figures of a class, displayed above 20% of its maximum.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from xai_pipeline.model.inference import predict
from xai_pipeline.model.labels import confident_rows
from xai_pipeline.job.decode import to_pixels
from xai_pipeline.model.net import OTHER_LABEL, ModalityNet
from xai_pipeline.read.render import confusion_png, crm_heatmap, tile_grid


@dataclass
class Metrics:
    class_names: list[str]
    predicted_names: list[str]  # columns of the confusion matrix (class names, then "other")
    n: int
    accuracy: float
    macro_f1: float
    closed_set_accuracy: float  # argmax, ignoring the "other" threshold
    closed_set_macro_f1: float
    other_rate: float  # share of figures reported as "other"
    ece: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for name, m in self.per_class.items():
            lines.append(f"{name:<14}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{int(m['support']):>9}")
        lines.append(f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}  ECE {self.ece:.4f}  other {self.other_rate:.3f}")
        lines.append(f"closed-set accuracy {self.closed_set_accuracy:.4f}  closed-set macro-F1 {self.closed_set_macro_f1:.4f}")
        header = " " * 14 + "".join(f"{c[:9]:>10}" for c in self.predicted_names)
        lines.append("confusion (rows true, columns predicted):")
        lines.append(header)
        for name, row in zip(self.class_names, self.confusion):
            lines.append(f"{name:<14}" + "".join(f"{v:>10}" for v in row))
        return "\n".join(lines)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = len(confidence)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.sum() / total * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _prf(y_true: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[dict[int, tuple[float, float, float, int]], float]:
    """Per-class precision, recall, F1 and support by scikit-learn (a prediction of "other", index
    ``n_classes``, counts against recall only); macro-F1 over the classes present in ``y_true``."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=list(range(n_classes)), zero_division=0.0
    )
    stats = {c: (float(precision[c]), float(recall[c]), float(f1[c]), int(support[c])) for c in range(n_classes)}
    present = support > 0
    return stats, float(f1[present].mean()) if present.any() else 0.0


def compute_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str], other_threshold: float | Sequence[float] | None = None
) -> Metrics:
    """Metrics of predictions ``probabilities`` (n×C) against class indices ``y_true``.

    With a threshold (one, or one per class: ``ModelSpec.decision_thresholds``), low-confidence
    predictions are "other": a miss for recall, an extra column in the confusion matrix. Macro-F1 averages over classes present in ``y_true``.
    """
    y_true = np.asarray(y_true, dtype=int)
    c = len(class_names)
    argmax = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    predicted = argmax.copy()
    predicted[~confident_rows(probabilities, other_threshold)] = c  # the "other" column
    from sklearn.metrics import confusion_matrix

    confusion = confusion_matrix(y_true, predicted, labels=list(range(c + 1)))[:c] if len(y_true) else np.zeros((c, c + 1), dtype=int)
    stats, macro = _prf(y_true, predicted, c) if len(y_true) else ({k: (0.0, 0.0, 0.0, 0) for k in range(c)}, 0.0)
    closed_macro = _prf(y_true, argmax, c)[1] if len(y_true) else 0.0
    n = len(y_true)
    return Metrics(
        class_names=list(class_names),
        predicted_names=list(class_names) + [OTHER_LABEL],
        n=n,
        accuracy=float((predicted == y_true).mean()) if n else 0.0,
        macro_f1=macro,
        closed_set_accuracy=float((argmax == y_true).mean()) if n else 0.0,
        closed_set_macro_f1=closed_macro,
        other_rate=float((predicted == c).mean()) if n else 0.0,
        ece=expected_calibration_error(confidence, argmax == y_true) if n else 0.0,
        per_class={
            class_names[k]: {"precision": p, "recall": r, "f1": f, "support": s} for k, (p, r, f, s) in stats.items()
        },
        confusion=confusion.tolist(),
    )


def predict_images(model: ModalityNet, images: list, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (n×C) and CRM maps (n×H×W) of PIL images, in batches."""
    size = model.spec.input_size
    device = next(model.parameters()).device
    probs, maps = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = torch.from_numpy(np.stack([to_pixels(im, size) for im in chunk])).to(device)
        out = predict(model, pixels)
        probs.append(out.probabilities.cpu().numpy())
        maps.append(out.relevance.cpu().numpy())
    return np.concatenate(probs), np.concatenate(maps)


def class_mean_maps(maps: np.ndarray, y_true: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[int, np.ndarray]:
    """Per class: the mean of max-normalised maps over correctly classified figures."""
    means = {}
    for c in range(n_classes):
        chosen = maps[(y_true == c) & (predicted == c)]
        if len(chosen):
            peaks = chosen.reshape(len(chosen), -1).max(axis=1).clip(min=1e-12)
            means[c] = (chosen / peaks[:, None, None]).mean(axis=0)
    return means


def write_reports(
    out_dir: str | Path, metrics: Metrics, maps: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray,
    threshold: float = 0.2, prefix: str = "",
) -> dict[str, str]:
    """Write ``metrics.json``, the confusion matrix PNG and the class-mean CRM PNG."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: str(out / f"{prefix}{k}") for k in ("metrics.json", "confusion.png", "class_mean_crm.png")}
    Path(paths["metrics.json"]).write_text(metrics.to_json() + "\n")
    confusion_png(np.asarray(metrics.confusion), metrics.class_names, metrics.predicted_names, paths["confusion.png"])
    means = class_mean_maps(maps, y_true, probabilities.argmax(axis=1), len(metrics.class_names))
    tiles = [(f"{metrics.class_names[c]} (n={int(((y_true == c) & (probabilities.argmax(1) == c)).sum())})",
              crm_heatmap(m, (224, 224), threshold)) for c, m in sorted(means.items())]
    if tiles:
        tile_grid(tiles).save(paths["class_mean_crm.png"])
    return paths


def evaluate_examples(model: ModalityNet, images: list, labels: list[str]) -> tuple[Metrics, np.ndarray, np.ndarray, np.ndarray]:
    """Metrics of a model on labelled images; also returns (y_true, probabilities, maps)."""
    names = list(model.spec.class_names)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of model {model.spec.name} ({names})")
    y_true = np.array([names.index(label) for label in labels])
    probabilities, maps = predict_images(model, images)
    metrics = compute_metrics(y_true, probabilities, names, model.spec.decision_thresholds)
    return metrics, y_true, probabilities, maps


@torch.inference_mode()
def pooled_features(model: ModalityNet, images: list, batch_size: int = 32) -> np.ndarray:
    """The backbone's pooled features (the heads' input) of PIL images."""
    size = model.spec.input_size
    out = []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.stack([to_pixels(im, size) for im in images[start:start + batch_size]]))
        out.append(model.forward_features(model.normalize(pixels)).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


@torch.inference_mode()
def head_probabilities(model: ModalityNet, images: list) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax of the modality head (n×C) and of the figure-type head (n×T, None without one) on
    the pooled features of PIL images: no CRM, for scoring many figures."""
    pooled = torch.from_numpy(pooled_features(model, images))
    types = model.type_head(pooled).softmax(-1).numpy() if model.type_head is not None else None
    return model.head(pooled).softmax(-1).numpy(), types


@torch.inference_mode()
def other_rejection(model: ModalityNet, images: list, sources: list[str]) -> dict:
    """Share of non-modality figures (labelled ``other``) given no modality, overall and per
    source: the modality threshold and, when the model has one, the figure-type head decide, as
    at indexing time (:func:`xai_pipeline.model.labels.image_labels`)."""
    from xai_pipeline.model.labels import image_labels

    spec = model.spec
    probabilities, types = head_probabilities(model, images)
    modalities, _ = image_labels(probabilities, types, spec.class_names, spec.figure_types, spec.decision_thresholds)
    rejected = [m == OTHER_LABEL for m in modalities]
    by_source: dict[str, list[bool]] = {}
    for source, r in zip(sources, rejected):
        by_source.setdefault(source or "(no source)", []).append(r)
    return {"figures": len(images), "rejected": float(np.mean(rejected)) if rejected else 0.0,
            "by_source": {s: {"figures": len(v), "rejected": float(np.mean(v))} for s, v in sorted(by_source.items())}}
