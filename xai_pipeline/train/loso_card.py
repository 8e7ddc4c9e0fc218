"""The model card's sections for the two leave-one-source-out studies, the ImageNet linear probe
(:mod:`xai_pipeline.train.loso`) and the fine-tuned folds (:mod:`xai_pipeline.train.loso_fit`),
and the fine-tuned study's console tables."""

from __future__ import annotations

from typing import Any

from xai_pipeline.flags import flag_name


def loso_section(reports: list[dict[str, Any]]) -> str:
    """The card's *Leave-one-source-out* section from :mod:`xai_pipeline.train.loso` reports (one
    per backbone): per-class F1 with each source scored by a probe that never saw it, against the
    same probe cross-validated with sources mixed."""
    labels = reports[0]["labels"]
    lines = ["", "## Leave-one-source-out", "",
             "Each source's figures scored by a classifier fitted without that source "
             "(`python -m xai_pipeline.train.loso`): a class-balanced logistic regression on the backbone's pooled "
             "**ImageNet** features, `other` as a 7th class, threshold set on the held-out predictions. The backbone "
             "is not fine-tuned, so these numbers bound what the sources can teach a linear layer; the fine-tuned "
             "folds below score the shipped recipe itself. In-source: the same probe, 5-fold "
             "cross-validation by group with sources mixed (how the validation numbers above are made).", "",
             "| class | sources | " + " | ".join(f"{r['backbone']} LOSO F1{_figures_note(r, reports)}" for r in reports)
             + f" | {reports[0]['backbone']} in-source F1 |",
             "|---" * (len(reports) + 3) + "|"]
    for label in labels:
        cells = [f"{r['loso']['loso_threshold']['per_class'][label]['f1']:.3f}" for r in reports]
        lines.append(f"| {label} | {len(reports[0]['sources_per_class'].get(label, []))} | " + " | ".join(cells)
                     + f" | {reports[0]['in_source']['per_class'][label]['f1']:.3f} |")
    for key, name in (("macro_f1", "macro-F1, six modalities"), ("other_medical_called_other", "medical images outside the six classes called `other`"),
                      ("other_figure_called_other", "other figures called `other`")):
        lines.append(f"| {name} | | " + " | ".join(f"{r['loso']['loso_threshold'][key]:.3f}" for r in reports)
                     + f" | {reports[0]['in_source'][key]:.3f} |")
    unseen = ", ".join(f"{k} ({v})" for k, v in reports[0].get("unseen_in_fold", {}).items())
    lines += ["", f"Classes with a single source cannot be right when it is held out: {unseen or 'none'}. "
              "A source that is a class's only example of a kind (fetal ultrasound, a stain, an organ) fails the same way.", ""]
    return "\n".join(lines)


def _figures_note(report: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    """`` (N figures)`` when the reports were not all made on the same number of figures (another
    data set: their columns are then not a like-for-like comparison), else nothing."""
    if len({r.get("n") for r in reports}) == 1:
        return ""
    return f" ({report['n']:,} figures)" if isinstance(report.get("n"), int) else " (figures not recorded)"


_DECISION_ROWS = (("macro_f1", "macro-F1, six modalities"), ("in_class_kept", "modality figures kept (not `other`)"),
                  ("other_medical_called_other", "medical images outside the six classes called `other`"),
                  ("other_figure_called_other", "other figures called `other`"))
"""The summary rows of the typed and raised tables: a pooled decision's key and its row name."""


AUGMENT_FLAGS: tuple[str, ...] = ("sector_probability", "mr_contrast_probability", "simulated_ultrasound_probability",
                                   "simulated_mr_probability", "simulated_endoscopy_probability")
"""``train``'s augmentations that are off by default: ``loso_fit`` takes them as its own flags, and a study records the ones that were on."""
AUGMENT_WHAT: dict[str, str] = {
    "sector_probability": "an ultrasound figure scan-converted into a curved probe's fan",
    "mr_contrast_probability": "an MRI figure's tissue contrast remapped by a random curve, on the body only",
    "simulated_ultrasound_probability": "a CT or MRI figure turned into a simulated B-mode frame (interface echoes and diffuse "
                                        "scatter, Rayleigh speckle, attenuation and shadowing, log compression, half the time a fan), "
                                        "labelled ultrasound",
    "simulated_mr_probability": "a CT figure turned into a simulated MR figure (fat bright and bone dark by a drawn curve, air black, "
                                "coil bias, Rician noise), labelled mri",
    "simulated_endoscopy_probability": "an outlier figure turned into a simulated endoscopy frame (warm tissue, a dark lumen, "
                                       "highlights, a round or octagonal field of view), still an outlier",
}
"""What each of :data:`AUGMENT_FLAGS` does to a training figure, as a model card says it."""


def augment_lines(cfg: dict[str, Any]) -> list[str]:
    """The card's *Method* lines for ``cfg``'s off-by-default augmentations that were on (none: [])."""
    return [f"- With probability {cfg[name]:g} (`{flag_name(name)}`): {AUGMENT_WHAT[name]}." for name in AUGMENT_FLAGS if cfg.get(name)]


def augment_flags(cfg: dict[str, Any]) -> str:
    """The study ``cfg``'s augmentations that were on, as ``train``'s flags (``, `--mr-contrast-probability 0.5```), or ''."""
    return "".join(f", `{flag_name(name)} {cfg[name]:g}`" for name in AUGMENT_FLAGS if cfg.get(name))


def _fold_name(fold: str) -> str:
    """A fold's first source, and ``(+k)`` when it holds ``k`` more."""
    sources = fold.split(",")
    return sources[0] + (f" (+{len(sources) - 1})" if len(sources) > 1 else "")


def loso_fit_section(report: dict[str, Any]) -> str:
    """The model card's *Fine-tuned leave-source-out* section for a finished ``loso-fit.json`` of
    :mod:`xai_pipeline.train.loso_fit` (one with ``pooled``): per held source, then pooled per class
    (every held figure scored by its fold's model)."""
    cfg, pooled = report["config"], report["pooled"]
    head = f"""
## Fine-tuned leave-one-source-out

The whole training recipe ({cfg['architecture']}, {cfg['epochs']} epochs, backbone fine-tuned, `--source-balance {cfg['source_balance']:g}`{augment_flags(cfg)}) run once per
fold of held-out sources (`python -m xai_pipeline.train.loso_fit`, `make loso-fit`; about 10 minutes a fold on 2 CPU cores;
`--ray` runs folds on Ray Train). A fold holds one source or several at once (stricter: it trains on less); its "other"
threshold is set on its own validation groups (the sources it trains on), then every figure of its held sources is scored.
""" + ("""Each fold was also given the figure-type head `make model` fits (`--type-heads`: none of the fold's held sources among its
figures), and the study scored again as the job labels figures (*With the figure-type head* below); the tables before it use
the modality threshold alone.
""" if "with_types" in pooled else """Folds have no figure-type head, so charts and diagrams are rejected by the threshold alone (the shipped model also has the head).
""")
    threshold_of = {source.strip(): fold["threshold"] for fold in report["folds"] for source in fold["source"].split(",")}
    rows = [f"| {source} | {', '.join(r['labels'])} | {r['n']} | {r['accuracy']:.3f} | {r['cross_fold_accuracy']:.3f} | "
            f"{r['closed_set_accuracy']:.3f} | {threshold_of.get(source, float('nan')):.4f} |" for source, r in pooled["per_source"].items()]
    kept, cross, argmax = pooled["with_threshold"], pooled["cross_fold"], pooled["argmax"]
    classes = [f"| {label} | {m['support']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {cross['per_class'][label]['f1']:.3f} | "
               f"{argmax['per_class'][label]['f1']:.3f} |" for label, m in kept["per_class"].items()]
    summary = [f"| {name} | {kept[key]:.3f} | {cross[key]:.3f} | {argmax[key]:.3f} |" for key, name in (
        ("macro_f1", "macro-F1, six modalities"), ("macro_f1_testable", "macro-F1, classes every fold trained on"),
        ("other_medical_called_other", "medical images outside the six classes called `other`"),
        ("other_figure_called_other", "other figures called `other`"))]
    labels = list(kept["per_class"])[:-1]
    kinds = ", ".join(f"{kind} {share:.2f} ({cross['other_medical_by_kind'][kind]:.2f})" for kind, share in kept["other_medical_by_kind"].items())
    untestable = sorted(set(kept["per_class"]) - set(kept["testable_classes"]) - {"other"})
    return head + f"""
{pooled['figures']} figures from {len(rows)} sources, each scored by the model of the fold that held it.
Accuracy: the label given (a modality, or `other` under the threshold) is the figure's label; with the fold's
own threshold, and with the *cross-fold* per-class thresholds: each fold's class `c` threshold set, by the shipped
per-class rule (keep {cross['min_accept']:g} of the right figures, at least {cross['min_figures']} of them, never above the fold's own), on the
figures of class `c` that *other* folds held, each scored by its own fold's model, which never saw it: thresholds
set on held-out sources, as issue 17 asks, and never on the fold's own.

| held-out source | labels | figures | accuracy | cross-fold accuracy | argmax accuracy | fold threshold |
|---|---|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + """

Pooled over the folds (precision counts every held figure given that class, `other` figures included;
by argmax no figure is `other`, so every `other` figure counts against the class it is given):

| class | figures | precision | recall | F1 | F1, cross-fold thresholds | F1 by argmax |
|---|---:|---:|---:|---:|---:|---:|
""" + "\n".join(classes) + """

| | fold's threshold | cross-fold thresholds | by argmax |
|---|---:|---:|---:|
""" + "\n".join(summary) + """

Cross-fold thresholds (a fold's own threshold where other folds hold too few right figures of the class):

""" + _fold_thresholds_table(pooled["cross_fold_thresholds"], labels) + """

With one threshold for every fold and class, chosen on these figures themselves (so an upper bound on what any
single threshold could do; `frontier` in the study's JSON):

""" + _frontier_table(pooled["frontier"]) + f"""

Medical images outside the six classes called `other`, by kind (cross-fold thresholds in brackets): {kinds or 'none held'}.
Classes some fold did not train on: {', '.join(untestable) or 'none'}.
Sources no fold held: {', '.join(pooled['unscored_sources']) or 'none'}.
""" + (_raised_section(pooled) if "cross_fold_raised" in pooled else "") + (
        _typed_section(pooled["with_types"]) if "with_types" in pooled else "")


def _raised_section(pooled: dict[str, Any]) -> str:
    """The study with the cross-fold thresholds as floors on each fold's own (``cross_fold_raised``)."""
    own, raised = pooled["with_threshold"], pooled["cross_fold_raised"]
    typed = pooled.get("with_types", {})
    columns = [("fold's threshold", own), ("raised cross-fold", raised)]
    if "cross_fold_raised" in typed:
        columns += [("fold's t. + type head", typed["with_threshold"]), ("raised + type head", typed["cross_fold_raised"])]
    rows = [f"| {name} | " + " | ".join(f"{r[key]:.3f}" for _, r in columns) + " |" for key, name in _DECISION_ROWS]
    labels = list(own["per_class"])[:-1]
    rows += [f"| {label} F1 | " + " | ".join(f"{r['per_class'][label]['f1']:.3f}" for _, r in columns) + " |" for label in labels]
    kinds = ", ".join(f"{kind} {share:.2f}" for kind, share in raised["other_medical_by_kind"].items())
    return """
*Raised* cross-fold thresholds (`cross_fold_raised`): the same quantile of the right figures other folds held, but the
fold's own threshold a floor, never a cap. A class whose new hospitals' figures stay sure of it refuses the less sure
figures of kinds the fold never saw that land on it; a class new hospitals are unsure of keeps the fold's own threshold.

| | """ + " | ".join(name for name, _ in columns) + " |\n|---" + "|---:" * len(columns) + "|\n" + "\n".join(rows) + """

""" + _fold_thresholds_table(pooled["cross_fold_raised_thresholds"], labels) + f"""

Outside the six classes called `other` with raised thresholds, by kind: {kinds or 'none held'}.
"""


def _fold_thresholds_table(thresholds: dict[str, dict[str, float]], labels: list[str]) -> str:
    """One row per fold: its per-class thresholds (``cross_fold_thresholds`` or ``cross_fold_raised_thresholds``)."""
    rows = [f"| {_fold_name(fold)} | " + " | ".join(f"{t[label]:.4f}" for label in labels) + " |" for fold, t in thresholds.items()]
    return "| fold (+ more sources) | " + " | ".join(labels) + " |\n|---" + "|---:" * len(labels) + "|\n" + "\n".join(rows)


def _frontier_table(frontier: list[dict[str, Any]]) -> str:
    """The one-threshold-for-every-fold table: macro-F1 and the shares called ``other`` per threshold."""
    head = "| threshold | " + " | ".join(f"{f['threshold']:g}" for f in frontier) + " |\n|---" + "|---:" * len(frontier) + "|\n"
    return head + "\n".join(f"| {name} | " + " | ".join(f"{f[key]:.3f}" for f in frontier) + " |" for key, name in (
        ("macro_f1", "macro-F1"), ("other_medical_called_other", "outside the six classes: `other`"),
        ("other_figure_called_other", "other figures: `other`")))


def _typed_section(typed: dict[str, Any]) -> str:
    """The study scored as the job labels figures: each fold's figure-type head makes every figure
    it does not type ``medical_image`` ``other``."""
    kept, cross, alone = typed["with_threshold"], typed["cross_fold"], typed["argmax"]
    rows = [f"| {name} | {kept[key]:.3f} | {cross[key]:.3f} | {alone[key]:.3f} |" for key, name in _DECISION_ROWS]
    f1 = [f"| {label} | {m['f1']:.3f} | {cross['per_class'][label]['f1']:.3f} | {alone['per_class'][label]['f1']:.3f} |"
          for label, m in kept["per_class"].items()]
    kinds = ", ".join(f"{kind} {share:.2f}" for kind, share in kept["other_medical_by_kind"].items())
    return """
### With the figure-type head

The same figures, each fold's model with its own figure-type head (a figure it does not type `medical_image` is `other`, as
in the job):

| | fold's threshold | cross-fold thresholds | head alone (argmax) |
|---|---:|---:|---:|
""" + "\n".join(rows) + """

| class | F1 | F1, cross-fold thresholds | F1, head alone |
|---|---:|---:|---:|
""" + "\n".join(f1) + """

One threshold for every fold, with the head:

""" + _frontier_table(typed["frontier"]) + f"""

Outside the six classes called `other` with the head, by kind (fold's threshold): {kinds or 'none held'}.
"""


def backbones_section(studies: list[dict[str, Any]], speed: dict[str, Any] | None = None) -> str:
    """The card's *Fine-tuned backbones* section: the whole fine-tuned study of one recipe on each
    backbone (``loso-fit.json``, or several studies pooled by ``bench.loso_merge``), side by side
    with each backbone's CPU throughput and file size (``bench.lite_variants``' results) where given.
    ``ValueError`` when two studies share a backbone or differ in anything else of their recipe."""
    recipe = [{k: v for k, v in study["config"].items() if k != "architecture"} for study in studies]
    names = [study["config"]["architecture"] for study in studies]
    if len(set(names)) < len(names):
        raise ValueError(f"two studies of one backbone: {', '.join(names)}")
    if any(r != recipe[0] for r in recipe[1:]):
        raise ValueError("the studies differ in more than the backbone: " + "; ".join(f"{n}: {r}" for n, r in zip(names, recipe)))
    runs = (speed or {}).get("results", {})
    unscored = sorted({s for study in studies for s in study["pooled"].get("unscored_sources", [])})
    cfg = studies[0]["config"]
    lines = ["", "## Fine-tuned backbones", "",
             f"One recipe's fine-tuned leave-one-source-out study (as in *Fine-tuned leave-one-source-out*; here `--source-balance "
             f"{cfg['source_balance']:g}`{augment_flags(cfg) or ', no simulated figures'}) trained on each "
             "backbone, every held source scored by a fold that never saw it"
             + (f" (held by no fold: {', '.join(unscored)})" if unscored else "") + ". Macro-F1 over the six modalities "
             "with the folds' own thresholds, by argmax and with the folds' figure-type heads. CPU throughput: the "
             "modality model's forward pass (no figure-type head, no CRM) on a batch of 8 at the backbone's input size, "
             "one thread; file: its six-class model file without the figure-type head (`python -m bench.lite_variants`). "
             "A study trained in parts was pooled by `python -m bench.loso_merge` (its `studies`).", "",
             "| backbone | figures | macro-F1, folds' thresholds | by argmax | with type heads | histology F1 | ultrasound F1 "
             "| outside the six classes `other` | other figures `other` | figures/s (CPU) | file MB |",
             "|---" * 11 + "|"]
    for name, study in zip(names, studies):
        pooled, run = study["pooled"], runs.get(name, {})
        name += " (pooled)" if "studies" in study else ""
        typed = pooled.get("with_types", {}).get("with_threshold", {}).get("macro_f1")
        lines.append(f"| {name} | {pooled['figures']:,} | {pooled['with_threshold']['macro_f1']:.3f} | {pooled['argmax']['macro_f1']:.3f} | "
                     + (f"{typed:.3f}" if typed is not None else "—")
                     + "".join(f" | {pooled['with_threshold']['per_class'][c]['f1']:.3f}" for c in ("histology", "ultrasound"))
                     + f" | {pooled['with_threshold']['other_medical_called_other']:.1%} | {pooled['with_threshold']['other_figure_called_other']:.1%} | "
                     + (f"{run['figures_per_s']:.1f} | {run['model_file_mb']:.1f} |" if run else "— | — |"))
    return "\n".join(lines) + "\n"


def table(folds: list[dict[str, Any]]) -> str:
    """One line per fold and class: recall with the threshold and by argmax (closed set)."""
    lines = [f"{'held-out source':<48}{'class':<12}{'n':>5}{'recall':>8}{'argmax acc':>11}{'t':>7}"]
    for fold in folds:
        for name, recall in fold.get("recall", {}).items():
            n = fold["held_out"].get(name, 0)
            lines.append(f"{fold['source'][:47]:<48}{name:<12}{n:>5}{recall:>8.3f}{fold['closed_set_accuracy']:>11.3f}{fold['threshold']:>7.3f}")
        if "other_rejected" in fold:
            lines.append(f"{fold['source'][:47]:<48}{'other':<12}{fold['held_out'].get('other', 0):>5}{fold['other_rejected']:>8.3f}")
    return "\n".join(lines)


def pooled_table(pooled: dict[str, Any]) -> str:
    """Per-class precision / recall / F1 of the pooled folds: with the folds' thresholds, with the
    cross-fold thresholds as caps and as floors on them (a study scored before the floors has no
    such column) and by argmax (and the same with the folds' figure-type heads, when scored so)."""
    names = (("with_threshold", "fold's threshold"), ("cross_fold", "cross-fold thresholds"), ("cross_fold_raised", "raised cross-fold"),
             ("argmax", "argmax"))
    runs = {name: pooled[key] for key, name in names if key in pooled}  # a study scored before raised thresholds has none
    if "with_types" in pooled:  # the same, each fold with its figure-type head
        runs |= {name: pooled["with_types"][key] for key, name in (
            ("with_threshold", "fold's t. + type head"), ("cross_fold", "cross-fold + type head"),
            ("cross_fold_raised", "raised + type head"), ("argmax", "type head alone")) if key in pooled["with_types"]}
    lines = [f"{'class':<28}" + "".join(f"{name:>28}" for name in runs)]
    for label in pooled["with_threshold"]["per_class"]:
        lines.append(f"{label:<28}" + "".join(f"{r['per_class'][label]['precision']:>14.3f}{r['per_class'][label]['recall']:>7.3f}"
                                              f"{r['per_class'][label]['f1']:>7.3f}" for r in runs.values()))
    for key in ("macro_f1", "macro_f1_testable", "other_medical_called_other", "other_figure_called_other"):
        lines.append(f"{key:<28}" + "".join(f"{r[key]:>28.3f}" for r in runs.values()))
    if pooled["unscored_sources"]:
        lines.append("not held by any fold: " + ", ".join(pooled["unscored_sources"]))
    return "\n".join(lines)
