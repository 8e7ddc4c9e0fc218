"""Listing at scale: 10k and 100k keys (local files in 100 prefixes), paged by 1000.

    python -m bench.listing [--smoke]

Reports seconds, pages, peak Python allocations (tracemalloc) during the paged walk, and the
Arrow bytes of the finished listing. Writes ``bench/results/listing.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa

from bench.common import write_results
from xai_pipeline.job.listing import PAGE_SIZE, _list_local, list_objects
from xai_pipeline.store.source import parse_location



def make_tree(root: Path, keys: int, prefixes: int = 100) -> None:
    for i in range(keys):
        folder = root / f"PMC{i % prefixes:05d}"
        folder.mkdir(exist_ok=True)
        (folder / f"fig{i:07d}.jpg").write_bytes(b"")


def measure(keys: int, work: Path) -> dict[str, float]:
    root = work / f"k{keys}"
    root.mkdir()
    make_tree(root, keys)
    location = parse_location(str(root), "--input")
    tracemalloc.start()
    started = time.perf_counter()
    pages = sum(1 for _ in _list_local(location, PAGE_SIZE))
    walk_seconds = time.perf_counter() - started
    peak_python = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    started = time.perf_counter()
    before = pa.total_allocated_bytes()
    table = list_objects(location)
    return {
        "keys": keys,
        "pages": pages,
        "paged_walk_seconds": round(walk_seconds, 3),
        "peak_python_bytes_during_walk": peak_python,
        "list_objects_seconds": round(time.perf_counter() - started, 3),
        "listing_arrow_bytes": table.nbytes,
        "arrow_bytes_per_key": round(table.nbytes / keys, 1),
        "arrow_pool_growth_bytes": pa.total_allocated_bytes() - before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="1k and 10k keys")
    args = parser.parse_args(argv)
    sizes = (1_000, 10_000) if args.smoke else (10_000, 100_000)
    with tempfile.TemporaryDirectory(prefix="xai-listing-") as tmp:
        measure(100, Path(tmp))  # warm-up: first-call imports and caches are not the listing's
        results = [measure(n, Path(tmp)) for n in sizes]
    print(f"{'keys':>8}{'pages':>7}{'walk s':>9}{'peak py MB':>12}{'list s':>9}{'arrow MB':>10}{'B/key':>8}")
    for r in results:
        print(f"{r['keys']:>8}{r['pages']:>7}{r['paged_walk_seconds']:>9.2f}{r['peak_python_bytes_during_walk'] / 1e6:>12.2f}"
              f"{r['list_objects_seconds']:>9.2f}{r['listing_arrow_bytes'] / 1e6:>10.2f}{r['arrow_bytes_per_key']:>8.1f}")
    ratio = results[1]["peak_python_bytes_during_walk"] / results[0]["peak_python_bytes_during_walk"]
    print(f"peak Python memory ratio {results[1]['keys'] // results[0]['keys']}x keys: {ratio:.2f}")
    write_results("listing", args.smoke, {"results": results, "peak_python_ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
