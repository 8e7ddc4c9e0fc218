"""The encode stage: rows per second, and its ROI boxes with run-based vs cell-by-cell labelling.

    python -m bench.encode [--smoke]

Maps are 7×7 (EfficientNet-Lite0 and ResNets at 224 px), shaped like CRM maps (a few peaks),
for figures of 384×300 px. ``encode_batch`` quantises each map, finds its ROI boxes and builds
the Arrow rows. The ROI rows compare :func:`xai_pipeline.roi.roi_boxes` with its connected
components found from runs (what the pipeline uses) against the cell-by-cell breadth-first search
it replaced (``tests/oracles.py``), one map at a time.
"""

from __future__ import annotations

import argparse
import sys
from unittest import mock

import numpy as np

from bench.common import print_table, timed, write_results
from tests.oracles import components_bfs
from xai_pipeline import roi, schema
from xai_pipeline.codec import encode_batch


def _maps(count: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:7, 0:7]
    maps = np.zeros((count, 7, 7), dtype=np.float32)
    for i in range(count):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, 6, 2)
            maps[i] += rng.uniform(0.2, 1.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / rng.uniform(0.5, 3.0))
    return maps


def _batch(maps: np.ndarray) -> dict[str, np.ndarray]:
    n = len(maps)
    return {schema.FIGURE_ID: np.array([f"{i:064x}" for i in range(n)], dtype=object),
            schema.SOURCE_URI: np.array([f"s3://b/{i}.jpg" for i in range(n)], dtype=object),
            schema.ETAG: np.full(n, '"e"', dtype=object), schema.SIZE: np.full(n, 1000), schema.WIDTH: np.full(n, 384, dtype=np.int32),
            schema.HEIGHT: np.full(n, 300, dtype=np.int32), schema.STATUS: np.full(n, "ok", dtype=object), schema.ERROR: np.full(n, "", dtype=object),
            schema.MODALITY: np.full(n, "ct", dtype=object), schema.CONFIDENCE: np.full(n, 0.9, dtype=np.float32),
            schema.PROBABILITIES: np.full((n, 7), 1 / 7, dtype=np.float32), schema.CRM_MAP: maps,
            schema.MODEL_NAME: np.full(n, "m", dtype=object), schema.MODEL_VERSION: np.full(n, "1", dtype=object)}


def _bfs_components(mask: np.ndarray) -> list[np.ndarray]:
    return [np.array(sorted(cells)) for cells in components_bfs(mask)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    count = 16 if args.smoke else 512
    maps = _maps(count, np.random.default_rng(0))
    batch = _batch(maps)
    repeats = 1 if args.smoke else 5

    def all_boxes() -> None:
        for m in maps:
            roi.roi_boxes(m, 384, 300)

    runs = timed(all_boxes, repeats)
    with mock.patch.object(roi, "_components", _bfs_components):
        cells = timed(all_boxes, repeats)
    found_runs = [roi.roi_boxes(m, 384, 300) for m in maps]
    with mock.patch.object(roi, "_components", _bfs_components):
        found_cells = [roi.roi_boxes(m, 384, 300) for m in maps]
    same = found_runs == found_cells
    encode = timed(lambda: encode_batch(batch, run_id="bench"), repeats)
    results = {"figures": count, "map": [7, 7], "figure": [384, 300], "roi_ms_runs": runs / count * 1e3, "roi_ms_cells": cells / count * 1e3,
               "roi_speedup": cells / runs, "same_boxes": same, "encode_rows_per_s": count / encode}
    print_table(["maps", "ROI ms (runs)", "ROI ms (cells)", "speed-up", "same boxes", "encode rows/s"],
                [[count, results["roi_ms_runs"], results["roi_ms_cells"], results["roi_speedup"], same, results["encode_rows_per_s"]]])
    write_results("encode", args.smoke, {"results": results})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
