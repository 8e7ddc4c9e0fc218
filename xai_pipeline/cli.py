"""``xai-pipeline``: argument parsing and human output only; the work happens in the package."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from xai_pipeline.config import (
    ConfigError,
    DemoConfig,
    EvaluateConfig,
    IndexConfig,
    ExportConfig,
    QueryConfig,
    ReindexConfig,
    ReportConfig,
    RunsConfig,
    ShowConfig,
    SubmitConfig,
    TableConfig,
    TrainConfig,
    add_arguments,
    from_namespace,
)
from xai_pipeline.errors import LeaseHeld, ModelFileError, SourceError

DESCRIPTION = """\
Label biomedical figures by imaging modality and explain each label with a
Class-selective Relevance Map (Kim, Rajaraman & Antani, Diagnostics 2019).

commands:
  index      classify figures from S3 or a folder into a Delta table
  reindex    process new and changed figures, mark deleted ones (one commit)
  demo       index the bundled sample figures with the bundled model
  train      train a modality classifier; writes model, metrics and model card
  evaluate   metrics, confusion matrix, calibration and class-mean CRM maps
  query      SQL or filters over the current snapshot of a table
  show       one figure with its CRM overlaid (and CAM, Grad-CAM)
  report     a self-contained HTML report of a table
  export     one document per figure for OpenSearch bulk or JSON lines
  table      optimize | vacuum | history of a table
  runs       list the runs recorded beside a table
  submit     run one of these commands as a Ray job on a cluster
"""

EXAMPLES = {
    "index": "example:\n  xai-pipeline index --input s3://figures/pmc/ --output s3://tables/figures "
    "--batch-size 64 --concurrency 4\n  xai-pipeline index --input ./figures --output ./table",
    "reindex": "example:\n  xai-pipeline reindex --input s3://figures/pmc/ --output s3://tables/figures\n"
    "  xai-pipeline reindex --input s3://figures/pmc/ --output s3://tables/figures --manifest s3://inventory/figures/pmc/2026-11-26T01-00Z/manifest.json",
    "demo": "example:\n  xai-pipeline demo --output demo-output/figures",
    "table": "example:\n  xai-pipeline table history --table s3://tables/figures\n  xai-pipeline table vacuum --table s3://tables/figures --retention-hours 168",
    "query": "examples:\n  xai-pipeline query --table s3://tables/figures --modality ct,mri --min-confidence 0.9 --limit 20\n"
    "  xai-pipeline query --table ./table --sql \"SELECT modality, COUNT(*) AS n FROM figures GROUP BY modality\" --format csv",
    "show": "example:\n  xai-pipeline show 3f2a... --table ./table --out fig.png --compare",
    "report": "example:\n  xai-pipeline report --table s3://tables/figures --out report.html",
    "export": "example:\n  xai-pipeline export --table s3://tables/figures --format opensearch-bulk --out figures.ndjson",
    "submit": "example:\n  xai-pipeline submit --address http://head:8265 -- index --input s3://figures/pmc/ --output s3://tables/figures",
    "train": "example:\n  xai-pipeline train --data ../shared/datasets/modality-v1/manifest.jsonl --out build/model",
    "evaluate": "example:\n  xai-pipeline evaluate --data ../shared/datasets/modality-v1/manifest.jsonl --out evaluation",
}


def _print_summary_json(summary_json: str) -> None:
    """The summary is the last line: stop Ray first, so no worker log lands after it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    print(summary_json, flush=True)


EXIT_MISSING_ROWS = 3  # the run finished, but some listed objects have no row (summary: missing)
EXIT_LEASE_HELD = 4  # another run holds the table's lease


def exit_code(missing: int) -> int:
    """0 when every listed object has its row; :data:`EXIT_MISSING_ROWS` when some have none."""
    return EXIT_MISSING_ROWS if missing else 0


def cmd_index(args: argparse.Namespace) -> int:
    from xai_pipeline.job.pipeline import run_index

    summary = run_index(from_namespace(IndexConfig, args))
    _print_summary_json(summary.to_json())
    return exit_code(summary.missing)


def cmd_reindex(args: argparse.Namespace) -> int:
    from xai_pipeline.job.pipeline import run_reindex

    summary = run_reindex(from_namespace(ReindexConfig, args))
    _print_summary_json(summary.to_json())
    return exit_code(summary.missing)


def _table_location(args: argparse.Namespace) -> tuple[object, dict[str, str] | None]:
    from xai_pipeline.store import sink
    from xai_pipeline.store.source import parse_location

    location = parse_location(args.table, "--table")
    options = sink.storage_options(location, _settings(args))  # type: ignore[arg-type]
    if not sink.table_exists(location, options):
        raise SourceError(f"--table {location.uri}: no Delta table there")
    return location, options


def cmd_table(args: argparse.Namespace) -> int:
    from xai_pipeline.store import sink

    cfg = from_namespace(TableConfig, args)
    location, options = _table_location(args)
    if cfg.action == "optimize":
        print(json.dumps(sink.optimize(location, options, cfg.target_size), default=str))
    elif cfg.action == "vacuum":
        files = sink.vacuum(location, options, cfg.retention_hours, cfg.dry_run)
        print(f"{'would delete' if cfg.dry_run else 'deleted'} {len(files)} files")
        for name in files:
            print(f"  {name}")
    else:
        for entry in sink.history(location, options):
            when = entry.get("timestamp")
            print(f"{entry.get('version'):>6}  {when}  {entry.get('operation'):<14} "
                  f"{json.dumps(entry.get('operationMetrics', {}), default=str)[:150]}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from xai_pipeline.read.runs import format_runs
    from xai_pipeline.store import records
    from xai_pipeline.store.source import make_filesystem

    cfg = from_namespace(RunsConfig, args)
    location, _ = _table_location(args)
    runs = records.list_runs(location, make_filesystem(location, _settings(args)))  # type: ignore[arg-type]
    if cfg.json:
        for run in runs:
            print(json.dumps(run))
        return 0
    for line in format_runs(runs):
        print(line)
    return 0


def _settings(args: argparse.Namespace) -> object:
    from xai_pipeline.store.source import S3Settings

    return S3Settings(args.endpoint_url, args.region)


def cmd_query(args: argparse.Namespace) -> int:
    from xai_pipeline.read.query import query, write_result

    cfg = from_namespace(QueryConfig, args)
    _table_location(args)
    result = query(cfg.table, cfg.sql, version=cfg.version, settings=_settings(args), **({} if cfg.sql else cfg.filters()))
    write_result(result, cfg.format, cfg.out)
    if cfg.out:
        print(f"{result.num_rows} rows → {cfg.out}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from xai_pipeline.read.show import show

    cfg = from_namespace(ShowConfig, args)
    shown = show(cfg.table, cfg.figure_id, cfg.out or f"{cfg.figure_id}.png", compare=cfg.compare, model=cfg.model,
                 threshold=cfg.threshold, settings=_settings(args))
    print(f"{shown.path}: {shown.modality} ({shown.confidence:.3f}); panels: {', '.join(shown.panels)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from xai_pipeline.read.report import build_report

    cfg = from_namespace(ReportConfig, args)
    _table_location(args)
    path = build_report(cfg.table, cfg.out, samples=cfg.samples, threshold=cfg.threshold, settings=_settings(args))
    print(f"report: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from xai_pipeline.read.export import export

    cfg = from_namespace(ExportConfig, args)
    _table_location(args)
    written = export(cfg.table, cfg.format, cfg.out, index_name=cfg.index_name, settings=_settings(args))
    print(f"{written} figures → {cfg.out} ({cfg.format})")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from xai_pipeline.submit import job_command, submit

    cfg = from_namespace(SubmitConfig, args)
    return submit(cfg, job_command(args.job, build_parser()))


def cmd_demo(args: argparse.Namespace) -> int:
    from xai_pipeline.job.pipeline import run_demo

    cfg = from_namespace(DemoConfig, args)
    summary, modalities = run_demo(cfg)
    _print_summary_json(summary.to_json())
    print("\nfigures per modality:")
    for name, count in sorted(modalities.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<14}{count:>4}")
    print(f"\ntable: {summary.output}  (Delta Lake, version {summary.table_version})")
    print("read it with:  python -c \"from deltalake import DeltaTable; "
          f"print(DeltaTable('{Path(cfg.output).resolve()}').to_pandas()[['source_uri','modality','confidence']])\"")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from xai_pipeline.train.run import run_training

    report = run_training(from_namespace(TrainConfig, args))
    brief = {k: report[k]["macro_f1"] for k in ("validation", "source_holdout") if k in report}
    print(json.dumps({"out": args.out, "macro_f1": brief, "other_threshold": report["model_spec"]["other_threshold"],
                      "seconds": report["seconds"]}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xai_pipeline.train.evaluate_run import run_evaluation

    metrics, paths = run_evaluation(from_namespace(EvaluateConfig, args))
    print(metrics.table())
    checks = json.loads(Path(paths["figures.json"]).read_text())
    panels, types = checks["panels"], checks["figure_types"]
    print(f"panels on {panels['compound_figures']} synthetic compound figures: precision {panels['precision_iou50']:.3f} "
          f"recall {panels['recall_iou50']:.3f} (IoU >= 0.5), exact count {panels['exact_count']:.3f}; "
          f"single figures kept whole {panels['single_figures_kept_whole']:.3f}")
    print(f"figure types: accuracy {types['accuracy']:.3f}; non-scan figures given a modality {types['non_scans_given_a_modality']:.3f}")
    faithfulness = json.loads(Path(paths["metrics.json"]).read_text()).get("faithfulness")
    if faithfulness:
        print(f"faithfulness on {faithfulness['figures']} figures (deletion lower, insertion higher, ROAD lower, randomisation lower are better):")
        for name in ("crm", "cam", "grad_cam", "random"):
            m = faithfulness[name]
            print(f"  {name:<9}deletion {m['deletion_auc']:.3f}  insertion {m['insertion_auc']:.3f}  ROAD {m.get('road_auc', float('nan')):.3f}"
                  f"  randomisation rho {m['randomisation_rank_correlation']:.3f}")
    print("\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


COMMANDS: dict[str, tuple[type, Callable[[argparse.Namespace], int]]] = {
    "index": (IndexConfig, cmd_index),
    "reindex": (ReindexConfig, cmd_reindex),
    "demo": (DemoConfig, cmd_demo),
    "train": (TrainConfig, cmd_train),
    "evaluate": (EvaluateConfig, cmd_evaluate),
    "query": (QueryConfig, cmd_query),
    "show": (ShowConfig, cmd_show),
    "report": (ReportConfig, cmd_report),
    "export": (ExportConfig, cmd_export),
    "table": (TableConfig, cmd_table),
    "runs": (RunsConfig, cmd_runs),
    "submit": (SubmitConfig, cmd_submit),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xai-pipeline", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level, Ray's and Ray Data's INFO lines included (they always go to Ray's log folder)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (config_cls, _) in COMMANDS.items():
        doc = (config_cls.__doc__ or "").strip().split(": ", 1)[-1]
        p = sub.add_parser(name, help=doc, description=doc, epilog=EXAMPLES.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p, config_cls)
        if name == "submit":
            p.add_argument("job", nargs=argparse.REMAINDER, help="-- COMMAND [FLAGS]: the xai-pipeline command to run as a job")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Quiet by default: warnings, the summary and a progress bar; --verbose adds INFO lines.
    logging.getLogger("xai_pipeline").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return COMMANDS[args.command][1](args)
    except (ConfigError, SourceError, ModelFileError) as exc:
        print(f"xai-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except LeaseHeld as exc:
        print(f"xai-pipeline {args.command}: {exc}", file=sys.stderr)
        return EXIT_LEASE_HELD


if __name__ == "__main__":
    sys.exit(main())
