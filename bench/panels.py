"""Cost of panels on the CPU: figures per second through decode → classify → encode with and
without panel splitting, and the bytes per row the new columns add.

    python -m bench.panels [--smoke]

The figures are a mix like a literature collection's: three quarters synthetic compound figures
(2–12 panels, :mod:`xai_pipeline.train.compound`) made of the shared data set's scans, the rest
single scans; PNG bytes. Each arm runs the stages as the pipeline's tasks and actor run them (no
Ray: one process, the classifier on one torch thread, the bundled model), batch of 16. Bytes per
row: compressed Parquet bytes of the columns ``figure_type``, ``panel_count``, ``modalities`` and
``panels`` in the rows written, per row, from the file metadata.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from bench.common import bench_parser, print_table, write_results
from xai_pipeline import schema
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.job.codec import encode_batch
from xai_pipeline.job.decode import decode_batch
from xai_pipeline.train.compound import compound_figure

PANEL_COLUMNS = [schema.FIGURE_TYPE, schema.PANEL_COUNT, schema.MODALITIES, schema.PANELS]


def _figures(count: int, dataset: Path, rng: np.random.Generator) -> list[bytes]:
    rows = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    picks = [rows[i] for i in rng.permutation(len(rows))[:60]]
    pool = [Image.open(dataset / r["file"]).convert("RGB") for r in picks]
    out = []
    for k in range(count):
        image = compound_figure(pool, rng).image if k % 4 else pool[k % len(pool)]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _batch(datas: list[bytes]) -> dict[str, np.ndarray]:
    n = len(datas)
    return {"uri": np.array([f"file:///f{i}.png" for i in range(n)], dtype=object), "size": np.array([float(len(d)) for d in datas]),
            "etag": np.array([None] * n, dtype=object), "bytes": np.array(datas, dtype=object),
            "read_status": np.array([""] * n, dtype=object), "read_error": np.array([""] * n, dtype=object)}


def _arm(datas: list[bytes], classifier: FigureClassifier, panels: bool) -> tuple[float, float, pa.Table]:
    decode_s = 0.0
    started = time.perf_counter()
    tables = []
    for start in range(0, len(datas), 16):
        t0 = time.perf_counter()
        decoded = decode_batch(_batch(datas[start:start + 16]), classifier.spec.input_size, panels=panels)
        decode_s += time.perf_counter() - t0
        tables.append(encode_batch(classifier(decoded), run_id="bench"))
    return len(datas) / (time.perf_counter() - started), len(datas) / decode_s, pa.concat_tables(tables)


def _column_bytes(table: pa.Table) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        pq.write_table(table, path, compression="zstd")
        meta = pq.ParquetFile(path).metadata
        sizes: dict[str, int] = {}
        for g in range(meta.num_row_groups):
            for c in range(meta.row_group(g).num_columns):
                chunk = meta.row_group(g).column(c)
                name = chunk.path_in_schema.split(".")[0]
                sizes[name] = sizes.get(name, 0) + chunk.total_compressed_size
    return {name: sizes.get(name, 0) / table.num_rows for name in PANEL_COLUMNS}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, dataset=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    datas = _figures(16 if args.smoke else 160, Path(args.dataset), np.random.default_rng(0))
    classifier = FigureClassifier(device="cpu", torch_threads=1)
    rows, results = [], {}
    for panels in (False, True):
        rate, decode_rate, table = _arm(datas, classifier, panels)
        counts = table.column(schema.PANEL_COUNT).to_pylist()
        per_row = _column_bytes(table)
        results["panels" if panels else "whole_figures"] = {"figures_per_second": rate, "decode_figures_per_second": decode_rate,
                                                            "mean_panels": float(np.mean(counts)), "bytes_per_row": per_row}
        rows.append(["on" if panels else "off", rate, decode_rate, float(np.mean(counts)), sum(per_row.values())])
    results["slowdown"] = results["whole_figures"]["figures_per_second"] / results["panels"]["figures_per_second"]
    print_table(["panels", "fig/s (decode+classify+encode)", "decode fig/s", "panels/figure", "new columns B/row"], rows)
    write_results("panels", args.smoke, {"figures": len(datas), "compound_share": 0.75, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
