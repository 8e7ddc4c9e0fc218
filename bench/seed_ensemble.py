r"""Seed ensembles (:mod:`xai_pipeline.model.ensemble`): what averaging the logits of models
trained at several seeds does on sources none of them saw, and what it costs on the CPU.

    python -m bench.seed_ensemble [--runs RUN,RUN[,...] --label NAME] [--smoke]

*Held-out sources* (with ``--runs``: ``train`` output folders of one recipe at different seeds,
e.g. ``build/model`` and the seed checks): every run's model scores the figures of the runs'
``--holdout-sources`` (sources no run trained on; checked to be the same for every run) once.
For every subset of the runs, the ensemble's probabilities are
:math:`\mathrm{softmax}(\tfrac1M \sum_k \log p^k)`, which equals the softmax of the mean logits
(each :math:`\log p^k` is the logits shifted by a constant per figure), so no ensemble model needs
building. Each subset is then scored as the shipped ``train`` step is: the "other" threshold is
the largest that keeps ``--min-accept`` of the held-out in-class figures
(:func:`xai_pipeline.train.fit.choose_threshold`), and the table gives the held-out figures labelled
``other`` that it rejects (the OCT B-scans of the fundus source), the in-class figures it keeps
right, and the argmax accuracy. The runs' validation groups are not used: runs at different
seeds split them differently.

*CPU cost*: figures per second of the whole model (backbone, GAP, head and CRM, as the job's
classifier runs it: :func:`xai_pipeline.model.inference.predict`) on a batch of 8 at 224 px on one
thread, median of repeats, and the size of its model file (float32), for 1, 2 and 3 members of
EfficientNet-Lite0. Writes ``bench/results/seed_ensemble[-<label>].json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import print_table, timed, write_results
from xai_pipeline.config import TrainConfig
from xai_pipeline.model.inference import predict
from xai_pipeline.model.net import OTHER_LABEL, ModalityNet, ModelSpec, load_model, save_model
from xai_pipeline.train.evaluate import predict_images
from xai_pipeline.train.fit import choose_threshold
from xai_pipeline.train.run import MODEL_FILE
from xai_pipeline.train.split import examples_and_split, training_data


def cpu_cost(members: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    """Figures per second (forward + CRM, batch 8, one thread) and file size per member count."""
    torch.set_num_threads(1)
    pixels = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8)
    rows = []
    for m in members:
        model = ModalityNet(ModelSpec(name="bench", architecture="efficientnet_lite0", class_names=tuple("abcdef"), members=m)).eval()
        seconds = timed(lambda: predict(model, pixels), repeats)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(model, Path(tmp) / "m.safetensors")
            size = (Path(tmp) / "m.safetensors").stat().st_size
        rows.append({"members": m, "figures_per_second": round(8 / seconds, 2), "file_mb": round(size / 1e6, 1)})
    base = rows[0]["figures_per_second"]
    for row in rows:
        row["slowdown"] = round(base / row["figures_per_second"], 2)
    return rows


def held_out_probabilities(runs: list[Path], limit: int | None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Each run's probabilities on the runs' held-out figures, whether each is in-class, and the class names."""
    configs = [json.loads((run / "training_metrics.json").read_text())["config"] for run in runs]
    cfgs = [TrainConfig.from_report(c) for c in configs]
    if len({cfg.holdout for cfg in cfgs}) != 1 or len({cfg.data for cfg in cfgs}) != 1:
        raise ValueError("--runs: the runs hold out other sources or read other data; their held-out figures differ")
    examples, class_names, (_, _, hold_idx) = examples_and_split(cfgs[0])
    hold_idx = hold_idx[:limit]
    data = training_data(examples, hold_idx, class_names, cfgs[0])
    images = data.images + data.outliers
    in_class = np.array([True] * len(data.images) + [False] * len(data.outliers))
    labels = np.array(list(data.labels) + [-1] * len(data.outliers))
    p = []
    for run in runs:
        model = load_model(run / MODEL_FILE)
        if model.spec.class_names != class_names:
            raise ValueError(f"{run}: classes {model.spec.class_names}, the data's {class_names}")
        p.append(predict_images(model, images)[0])
        print(f"{run}: {len(images)} held-out figures scored", file=sys.stderr)
    return p, np.stack([in_class, labels]), list(class_names)


def score_subsets(p: list[np.ndarray], truth: np.ndarray, class_names: list[str], min_accept: float, names: list[str]) -> list[dict[str, Any]]:
    """The shipped threshold rule and its results for every subset of the runs' models."""
    in_class, labels = truth[0].astype(bool), truth[1]
    rows = []
    for size in range(1, len(p) + 1):
        for subset in itertools.combinations(range(len(p)), size):
            log_p = np.mean([np.log(np.clip(p[k], 1e-12, 1.0)) for k in subset], axis=0)
            q = np.exp(log_p - log_p.max(axis=1, keepdims=True))
            q /= q.sum(axis=1, keepdims=True)
            top, arg = q.max(axis=1), q.argmax(axis=1)
            t = choose_threshold(top[in_class], min_accept)
            kept_right = (arg == labels) & (top >= t)
            recall = {c: float(kept_right[in_class & (labels == i)].mean()) for i, c in enumerate(class_names) if (in_class & (labels == i)).any()}
            rows.append({"runs": [names[k] for k in subset], "threshold": round(t, 4),
                         "other_rejected": int((top[~in_class] < t).sum()), "other_figures": int((~in_class).sum()),
                         "in_class_right": round(float(kept_right[in_class].mean()), 4),
                         "argmax_accuracy": round(float((arg == labels)[in_class].mean()), 4), "recall": recall})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="train output folders of one recipe at different seeds, comma-separated")
    parser.add_argument("--label", default="", help="names the results file")
    parser.add_argument("--min-accept", type=float, default=0.97)
    parser.add_argument("--smoke", action="store_true", help="two repeats and 40 held-out figures (checks the plumbing)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    if args.runs:  # two threads to score; the CPU cost below is measured on one (as the results file's machine says)
        runs = [Path(r.strip()) for r in args.runs.split(",") if r.strip()]
        torch.set_num_threads(2)
        p, truth, class_names = held_out_probabilities(runs, 40 if args.smoke else None)
        seeds = [str(json.loads((run / "training_metrics.json").read_text())["config"]["seed"]) for run in runs]
        rows = score_subsets(p, truth, class_names, args.min_accept, [f"seed {s}" for s in seeds])
        result |= {"runs": [str(r) for r in runs], "min_accept": args.min_accept, "held_out": rows}
        print_table(["runs", "threshold", f"{OTHER_LABEL} rejected", "in-class right", "argmax"],
                    [[" + ".join(r["runs"]), r["threshold"], f"{r['other_rejected']}/{r['other_figures']}", r["in_class_right"],
                      r["argmax_accuracy"]] for r in rows])
    result["cpu"] = cpu_cost((1, 2, 3), 2 if args.smoke else 10)
    print_table(["members", "figures/s", "slowdown", "file MB"], [[r["members"], r["figures_per_second"], r["slowdown"], r["file_mb"]] for r in result["cpu"]])
    print(write_results("seed_ensemble" + (f"-{args.label}" if args.label else ""), args.smoke, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
