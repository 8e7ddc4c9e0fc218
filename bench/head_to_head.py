r"""Two trained models on the figures neither of them trained on: the fair comparison before one
replaces the other.

    python -m bench.head_to_head --runs build/model,build/model-v3 [--label NAME] [--smoke]

Each run is a ``train`` output folder (``training_metrics.json``) holding the finished model
``model-types.safetensors`` (the ``make model`` steps after ``train``: figure-type head and
per-class thresholds). A run's training figures are recomputed from its report's configuration
(``--data``, ``--holdout-sources``, the split seed; :func:`xai_pipeline.train.split.examples_and_split`).
Runs on different data name the same figure by different paths (``packaged-v1`` and
``packaged-v3`` are separate folders), so a figure is keyed by its source and its path below its
manifest's folder. The compared figures are every figure of either run's data that is in neither
run's training part: validation groups of both splits, both runs' held-out sources, and figures
only one run's data has (a source the other never read). Each run is also scored on every figure
of the sources its data does not have at all (``unread_sources``: e.g. 1.3.1 on the CT and MRI
volumes of ``packaged-v3``), which the other runs may have trained on; those are new sources for
it, comparable with a leave-source-out study's folds, not with the other runs.

Each model labels them as the job does (:func:`xai_pipeline.model.labels.image_labels`: its
per-class ``other`` thresholds and its figure-type head). The figure-type head is fitted on the
training *and validation* scans and on every ``other-v1`` figure (:mod:`xai_pipeline.train.figure_type`),
so "other figure called other" is in-sample for that head; the modality metrics and the
out-of-taxonomy medical images (both runs' held-out OCT) are not. Reported per model: F1 per
label, macro-F1 over the six modalities, in-class figures kept with their own class, out-of-
taxonomy medical images and other figures called ``other``, and accuracy per source. Writes
``bench/results/head_to_head[-<label>].json``.
"""

from __future__ import annotations

import json
import posixpath
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, print_table, write_results
from xai_pipeline.config import TrainConfig
from xai_pipeline.model.net import ModalityNet, load_model
from xai_pipeline.store.source import parse_location
from xai_pipeline.train.sources import LABELS, MODALITIES, OTHER, Role, SourcedExample, read_all_sources
from xai_pipeline.train.split import data_parts, examples_and_split

MODEL_FILE = "model-types.safetensors"


def figure_key(source: str, uri: str, manifest_dir_uri: str) -> tuple[str, str]:
    """A figure's name independent of where its data set was built: (source, path below its
    manifest's folder)."""
    prefix = manifest_dir_uri.rstrip("/") + "/"
    if not uri.startswith(prefix):  # a full URI would name one figure twice across data folders
        raise ValueError(f"{uri} is not below its manifest's folder {manifest_dir_uri}")
    return source, uri[len(prefix):]


def run_figures(run: Path) -> tuple[dict[tuple[str, str], SourcedExample], set[tuple[str, str]]]:
    """A run's figures by key, and the keys of its training part."""
    cfg = TrainConfig.from_report(json.loads((run / "training_metrics.json").read_text())["config"])
    examples, _, (train, _, _) = examples_and_split(cfg)
    figures: dict[tuple[str, str], SourcedExample] = {}
    key_of_uri: dict[str, tuple[str, str]] = {}
    for manifest in data_parts(cfg.data):
        location = parse_location(manifest, "--data")
        base = location.to_uri(posixpath.dirname(location.path))
        for e in read_all_sources([manifest]):
            key_of_uri[e.example.uri] = key = figure_key(e.source, e.example.uri, base)
            figures[key] = e
    if set(key_of_uri) != {e.uri for e in examples} or len(figures) != len(examples):
        raise ValueError(f"{run}: its --data read as sources differs from its training figures")
    return figures, {key_of_uri[examples[i].uri] for i in train}


def compared_figures(runs: list[Path]) -> tuple[list[SourcedExample], dict[Path, list[SourcedExample]]]:
    """Every figure of the runs' data in no run's training part, in key order; and per run, the
    figures of the sources its data does not have at all (a new hospital for that run, whatever the
    other runs trained on)."""
    figures: dict[tuple[str, str], SourcedExample] = {}
    trained: set[tuple[str, str]] = set()
    read: dict[Path, set[str]] = {}
    for run in runs:
        mine, train = run_figures(run)
        for k, e in mine.items():
            figures.setdefault(k, e)
        trained |= train
        read[run] = {source for source, _ in mine}
    unread = {run: [figures[k] for k in sorted(figures) if k[0] not in read[run]] for run in runs}
    return [figures[k] for k in sorted(set(figures) - trained)], unread


def scores(predicted: list[str], examples: list[SourcedExample]) -> dict[str, Any]:
    """What the labels ``predicted`` of ``examples`` say (F1 per label, macro over the modalities)."""
    from sklearn.metrics import precision_recall_fscore_support

    y = [e.label for e in examples]
    _, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=list(LABELS), zero_division=0.0)
    present = [k for k, name in enumerate(LABELS) if name in MODALITIES and support[k]]
    roles = np.array([e.role.value for e in examples])
    hit = np.array([p == t for p, t in zip(predicted, y)])
    other = np.array([p == OTHER for p in predicted])
    sources = np.array([e.source for e in examples])

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        return round(float(of[mask].mean()), 4) if mask.any() else None

    return {
        "macro_f1": round(float(f1[present].mean()), 4),
        "per_class": {name: {"f1": round(float(f1[k]), 4), "recall": round(float(recall[k]), 4), "support": int(support[k])}
                      for k, name in enumerate(LABELS) if support[k]},
        "in_class_right": share(roles == Role.IN_CLASS.value, hit),
        "other_medical_called_other": share(roles == Role.OTHER_MEDICAL.value, other),
        "other_figure_called_other": share(roles == Role.OTHER_FIGURE.value, other),
        "per_source": {s: {"n": int((sources == s).sum()), "right": share(sources == s, hit)} for s in sorted(set(sources))},
    }


def label_figures(model: ModalityNet, examples: list[SourcedExample]) -> list[str]:
    """The modality the job would give each figure (whole-figure labels, no panel split)."""
    from xai_pipeline.model.labels import image_labels
    from xai_pipeline.train.dataset import load_images
    from xai_pipeline.train.evaluate import head_probabilities

    modalities: list[str] = []
    for start in range(0, len(examples), 128):  # bounded memory: decoded images of one chunk at a time
        images = load_images([e.example for e in examples[start:start + 128]])
        probabilities, types = head_probabilities(model, images)
        spec = model.spec
        modalities += image_labels(probabilities, types, spec.class_names, spec.figure_types, spec.decision_thresholds)[0]
    return modalities


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", default="build/model,build/model-v3", help="comma-separated train output folders (two or more)")
    parser.add_argument("--label", default="", help="suffix of the result file")
    args = parser.parse_args(argv)
    runs = [Path(r.strip()) for r in args.runs.split(",") if r.strip()]
    missing = [str(r / name) for r in runs for name in ("training_metrics.json", MODEL_FILE) if not (r / name).is_file()]
    if len(runs) < 2 or missing:
        parser.error(f"--runs: two or more finished runs needed; missing {missing}" if missing else "--runs: give two or more runs")
    examples, unread = compared_figures(runs)
    if args.smoke:
        examples = examples[:: max(1, len(examples) // 40)]
        unread = {run: figures[:: max(1, len(figures) // 20)] for run, figures in unread.items()}
    results: dict[str, Any] = {"runs": [str(r) for r in runs], "figures": len(examples),
                               "by_label": {name: sum(e.label == name for e in examples) for name in LABELS},
                               "models": {}}
    for run in runs:
        spec = json.loads((run / "training_metrics.json").read_text())["config"]
        model = load_model(run / MODEL_FILE)
        results["models"][str(run)] = {"data": spec["data"], **scores(label_figures(model, examples), examples)}
        if unread[run]:  # sources only the other runs read: new to this one
            results["models"][str(run)]["unread_sources"] = scores(label_figures(model, unread[run]), unread[run])
    rows = [[run, m["macro_f1"], *(m["per_class"].get(c, {}).get("f1", "") for c in MODALITIES),
             m["in_class_right"], m["other_medical_called_other"], m["other_figure_called_other"]]
            for run, m in results["models"].items()]
    print_table(["run", "macro-F1", *MODALITIES, "in-class right", "OOT other", "other fig other"], rows)
    for run, m in results["models"].items():
        for source, r in m.get("unread_sources", {}).get("per_source", {}).items():
            print(f"{run} on {source}, a source its data does not have: {r['right']:.3f} right of {r['n']}")
    print(write_results(f"head_to_head{'-' + args.label if args.label else ''}", args.smoke, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
