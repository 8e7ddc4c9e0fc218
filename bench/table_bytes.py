"""Bytes per row of the table, in all and per column (compressed Parquet, from file metadata).

    python -m bench.table_bytes [--smoke] [--table URI]

Without ``--table`` it indexes figures of the shared data set with the bundled model into a
temporary table first. Goal: maps + labels (crm, crm_shape, crm_scale, roi_boxes, modality,
confidence, probabilities) ≤ 200 bytes a row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import DEFAULT_DATASET, print_table, write_results
from xai_pipeline import schema

MAPS_AND_LABELS = [schema.CRM, schema.CRM_SHAPE, schema.CRM_SCALE, schema.ROI_BOXES, schema.MODALITY, schema.CONFIDENCE, schema.PROBABILITIES]


def column_bytes(table_uri: str) -> tuple[int, int, dict[str, int]]:
    """(rows, total file bytes, compressed bytes per top-level column) of the current snapshot."""
    from deltalake import DeltaTable

    rows, total, per_column = 0, 0, defaultdict(int)
    for uri in DeltaTable(table_uri).file_uris():
        path = uri.removeprefix("file://")
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        total += Path(path).stat().st_size
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                per_column[chunk.path_in_schema.split(".")[0]] += chunk.total_compressed_size
    return rows, total, dict(per_column)


def build_table(dataset: Path, count: int, out: Path) -> None:
    from xai_pipeline.config import IndexConfig
    from xai_pipeline.job.pipeline import run_index

    figures = out.parent / "figures"
    figures.mkdir()
    files = sorted(dataset.glob("*/*.jpg"))
    for f in files[:: max(1, len(files) // count)][:count]:
        (figures / f.name).write_bytes(f.read_bytes())
    run_index(IndexConfig(input=str(figures), output=str(out), batch_size=32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="24 figures")
    parser.add_argument("--figures", type=int, default=600)
    parser.add_argument("--table", help="measure this local table instead of building one")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xai-bytes-") as tmp:
        table = args.table
        if not table:
            table = str(Path(tmp) / "table")
            build_table(Path(args.dataset), 24 if args.smoke else args.figures, Path(table))
        rows, total, per_column = column_bytes(table)
    ordered = sorted(per_column.items(), key=lambda kv: -kv[1])
    print_table(["column", "bytes/row"], [[name, size / rows] for name, size in ordered])
    maps_labels = sum(per_column.get(c, 0) for c in MAPS_AND_LABELS) / rows
    print(f"rows {rows}; file bytes/row {total / rows:.1f}; maps + labels {maps_labels:.1f} B/row (goal <= 200)")
    write_results("table_bytes", args.smoke, {"rows": rows, "file_bytes_per_row": total / rows, "maps_and_labels_bytes_per_row": maps_labels,
                                              "columns_bytes_per_row": {k: v / rows for k, v in ordered}, "goal": "maps + labels <= 200 B"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
