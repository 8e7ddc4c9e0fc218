"""The encode stage: rows per second, and its ROI boxes: scipy.ndimage.label vs a cell-by-cell search.

    python -m bench.encode [--smoke]

Maps are 7×7 (EfficientNet-Lite0 and ResNets at 224 px), shaped like CRM maps (a few peaks),
for figures of 384×300 px. ``encode_batch`` quantises each map, finds its ROI boxes and builds
the Arrow rows. The ROI rows compare :func:`xai_pipeline.model.roi.roi_boxes` (connected components
by ``scipy.ndimage.label``, what the pipeline uses) against the literal cell-by-cell breadth-first
search (``tests/oracles.py``), one map at a time. Before scipy, a hand-written run-based labelling
took 0.643 ms per map on this machine (512 maps; commit 5d1ef16's ``bench.encode``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.common import print_table, timed, write_results
from tests.oracles import roi_boxes_bfs
from xai_pipeline.model import roi
from xai_pipeline import schema
from xai_pipeline.job.codec import encode_batch


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

    def all_boxes_bfs() -> None:
        for m in maps:
            roi_boxes_bfs(m, 384, 300)

    runs = timed(all_boxes, repeats)
    cells = timed(all_boxes_bfs, repeats)
    same = [[b.as_dict() for b in roi.roi_boxes(m, 384, 300)] for m in maps] == [roi_boxes_bfs(m, 384, 300) for m in maps]
    encode = timed(lambda: encode_batch(batch, run_id="bench"), repeats)
    results = {"figures": count, "map": [7, 7], "figure": [384, 300], "roi_ms_scipy": runs / count * 1e3, "roi_ms_cells": cells / count * 1e3,
               "roi_speedup": cells / runs, "same_boxes": same, "encode_rows_per_s": count / encode}
    print_table(["maps", "ROI ms (scipy)", "ROI ms (cells)", "speed-up", "same boxes", "encode rows/s"],
                [[count, results["roi_ms_scipy"], results["roi_ms_cells"], results["roi_speedup"], same, results["encode_rows_per_s"]]])
    write_results("encode", args.smoke, {"results": results})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
