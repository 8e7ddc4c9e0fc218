"""The model card's *Per-class thresholds* section (:mod:`xai_pipeline.train.thresholds`' report as
Markdown). A report without study floors renders exactly as before floors existed, so a model
made by the older recipe (1.4.0) gets its card back byte for byte."""

from __future__ import annotations

from typing import Any

from xai_pipeline.model.net import ModelSpec
from xai_pipeline.train.model_card import replace_section

_CAPPED_RULE = """Version {version}. `python -m xai_pipeline.train.thresholds` (run by `make model`): class `c` keeps the top class when
its probability is at least `t_c = min(t, Q_{{1−a}})`, `t` = {pooled} the pooled
threshold above, `Q` the lower quantile of the top probability over the figures of class `c` the
argmax gets right, on train's held-out sources where they hold enough of them, else on the
held-out sources and the validation groups together (in-source for CT and MRI: optimistic for a
new hospital). A class's threshold is never above `t`. The *Metrics* above are at the pooled `t`."""

_RAISED_RULE = """Version {version}. `python -m xai_pipeline.train.thresholds --floors` (run by `make model`): class `c` keeps the
top class when its probability is at least `t_c = max(min(t, Q_{{1−a}}), F_c)`. `t` = {pooled} is the pooled
threshold above; `Q` the lower quantile of the top probability over the figures of class `c` the
argmax gets right, on train's held-out sources where they hold enough of them, else on the
held-out sources and the validation groups together. `F_c` is the class's floor from the
leave-source-out study `{study}` (its `study_floors`): the same quantile over every source's
right class-`c` figures, each scored by a fold model that never saw that source (most of them
sources this model trained on), so it says how sure a model is of a new hospital's figures. A
class whose new hospitals stay sure of it gets a high threshold, and figures of kinds outside the
taxonomy that land on it less sure are refused; where the study had fewer than {study_min_figures} right figures
of a class it sets no floor. The *Metrics* above are at the pooled `t`.

| class | study floor `F_c` | right figures in the study |
|---|---|---|
{floors}"""


def card_section(report: dict[str, Any], version: str) -> str:
    """The model card's *Per-class thresholds* section."""
    rows = "\n".join(f"| {c} | {v['threshold']} | {v['basis']} | {v['figures']} |" for c, v in report["class_thresholds"].items())
    groups = "\n".join(f"| {k} | {g['figures']} | {g['kept_pooled']} | {g['kept_per_class']} |" for k, g in report["groups"].items())
    checks = "\n".join(f"| {r['class']} | {r['source']} | {r['figures']} | {r['threshold_from_others']} | {r['kept_pooled']} | {r['kept']} |"
                       for r in report.get("source_check", []))
    study = report.get("study_floors")
    if study is None:
        rule = _CAPPED_RULE.format(version=version, pooled=report["pooled_threshold"])
    else:
        floors = "\n".join(f"| {c} | {v['threshold']} | {v['figures']} |" for c, v in study["floors"].items())
        rule = _RAISED_RULE.format(version=version, pooled=report["pooled_threshold"], study=study["study"],
                                   study_min_figures=study["min_figures"], floors=floors or "| (none) | | |")
    check_rule = ("the same rule (study floors included: they pool every source's figures, this one's too, so with them the check "
                  "is not wholly out of sample)") if study is not None else "the same rule"
    return f"""
## Per-class thresholds

{rule}

| class | threshold | set on | right figures |
|---|---|---|---|
{rows}

Train's held-out figures (the same ones the thresholds were set on, so this is not an independent
test): in-class figures given their class, and figures labelled `other` given a modality
(figure-type head included; lower is better), at the pooled threshold and with the per-class ones:

| figures | n | pooled `t` | per-class `t_c` |
|---|---|---|---|
{groups}

Out of sample: each held-out source of a class that has two or more, scored with the class's
threshold set by {check_rule} on that class's *other* held-out sources only:

| class | held-out source | figures | threshold from the others | kept, pooled `t` | kept |
|---|---|---|---|---|---|
{checks or '| (no class has two held-out sources) | | | | | |'}
"""


def card_with_thresholds(card: str, before: ModelSpec, after: ModelSpec, report: dict[str, Any]) -> str:
    """``card`` (of spec ``before``) retitled for ``after``, its threshold line pointing to the
    *Per-class thresholds* section, which is added (or replaced)."""
    card = card.replace(f"# Model card: {before.name} {before.version}\n", f"# Model card: {after.name} {after.version}\n", 1)
    card = card.replace(f"SHA-256 `{before.weights_sha256}`", f"SHA-256 `{after.weights_sha256}`", 1)
    line = f"reported when the top softmax probability is below **{before.other_threshold}**"
    if report.get("study_floors") is None:
        card = card.replace(line + ".", line + ", or below its top class's own threshold where that is lower (*Per-class thresholds*).", 1)
    else:
        card = card.replace(line + ".", line + "; in its place each class has its own threshold, lower or higher (*Per-class thresholds*).", 1)
    return replace_section(card, "## Per-class thresholds", card_section(report, after.version))
