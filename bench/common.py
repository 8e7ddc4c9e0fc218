"""Shared by the benchmarks: the machine's description, timing, and result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent
DEFAULT_DATASET = os.environ.get("XAI_DATASET_DIR", str(REPO.parent / "shared" / "datasets" / "modality-v1"))


def bench_parser(doc: str | None, dataset: bool = False) -> argparse.ArgumentParser:
    """The arguments every bench takes: ``--smoke`` (a few figures, for the test suite) and, with
    ``dataset``, ``--dataset`` (the shared modality-v1 folder)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few figures only (the test suite's run)")
    if dataset:
        parser.add_argument("--dataset", default=DEFAULT_DATASET, help="the modality-v1 folder")
    return parser


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def write_results(name: str, smoke: bool, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-smoke' if smoke else ''}.json"
    path.write_text(json.dumps({"benchmark": name, "smoke": smoke, "machine": machine(), **payload}, indent=2, default=str) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(_fmt(v).rjust(w) for v, w in zip(row, widths)))


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
