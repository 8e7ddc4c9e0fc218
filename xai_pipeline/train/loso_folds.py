"""A fine-tuned leave-source-out study's folds (:mod:`xai_pipeline.train.loso_fit`): the sources a
fold holds, the folder of its ``train`` run and that run's report. Shared by the study, its
scoring (:mod:`xai_pipeline.train.loso_score`), seed ensembles of studies and the benches."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def fold_sources(fold: str) -> list[str]:
    """The sources of a fold: ``--hold``'s comma-separated value."""
    return [s.strip() for s in fold.split(",") if s.strip()]


def fold_dir(out: Path, fold: str) -> Path:
    """``out/<first source>`` (``_and_<k>_more`` when the fold holds ``k`` more), every character
    outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    sources = fold_sources(fold)
    more = f"_and_{len(sources) - 1}_more" if len(sources) > 1 else ""
    return out / (re.sub(r"[^A-Za-z0-9._-]", "_", sources[0]) + more)


def fold_report(out: Path, fold: str) -> dict[str, Any]:
    """The training report of ``fold``'s run in study ``out``, checked to hold exactly ``fold``'s
    sources out (a folder reused from another study would score figures its model saw)."""
    report = json.loads((fold_dir(out, fold) / "training_metrics.json").read_text())
    if sorted(fold_sources(report["config"]["holdout_sources"])) != sorted(fold_sources(fold)):
        raise ValueError(f"{fold_dir(out, fold)} holds {report['config']['holdout_sources']!r} out, not {fold!r}")
    return report
