"""Scale: the same job over 10k and 100k small figures from local files.

    python -m bench.scale [--smoke] [--model PATH]

Runs ``xai-pipeline index`` as its own process on each collection and samples the driver's
resident memory (/proc, every 0.2 s). Goals: peak driver memory of 100k / 10k ≤ 1.3, and
figures/s within 20%. The rate compared is the one at which each collection's figures go through
once the job runs: a third, small run (1k figures) measures the fixed cost (Python, Ray and actor
start, commit, shutdown), and the rate of an N-figure run is (N − 1k) / (t_N − t_1k), wall clock.
Raw end-to-end rates are reported too; the fixed cost weighs more on the 10k run. The figures are 48×48 PNGs and the model a small CNN at 64 px (trained
weights do not matter here), so the run measures the pipeline, not the classifier.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import REPO, print_table, write_results
from bench.services import ray_tmpdir


def make_figures(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
        variants.append(buf.getvalue())
    for i in range(count):
        sub = folder / f"PMC{i % 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:07d}.png").write_bytes(variants[i % 64])


def tiny_model(path: Path) -> Path:
    import torch

    from xai_pipeline.model.net import ModalityNet, ModelSpec, save_model

    torch.manual_seed(0)
    save_model(ModalityNet(ModelSpec(name="scale-tiny", architecture="tiny_cnn", class_names=("a", "b", "c"), input_size=64)), path)
    return path


def _rss(pid: int) -> int:
    """Resident memory of a process in bytes (Linux /proc), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(folder: Path, table: Path, model: Path, work: Path) -> dict[str, float]:
    summary_path = work / f"{folder.name}.json"
    cmd = [sys.executable, "-m", "xai_pipeline.cli", "index", "--input", str(folder), "--output", str(table), "--model", str(model),
           "--batch-size", "256", "--summary-json", str(summary_path)]
    with ray_tmpdir() as ray_tmp:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_TMPDIR": ray_tmp}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        started = time.perf_counter()
        while proc.poll() is None:
            peak = max(peak, _rss(proc.pid))
            time.sleep(0.2)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"index failed on {folder}")
    summary = json.loads(summary_path.read_text())
    return {"figures": summary["inputs"], "peak_driver_rss_mb": peak / 1e6, "figures_per_second": summary["figures_per_second"],
            "process_figures_per_second": summary["process_figures_per_second"], "job_seconds": summary["seconds"], "wall_seconds": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2k and 10k figures (base run: 500)")
    args = parser.parse_args(argv)
    base_size = 500 if args.smoke else 1_000
    sizes = (base_size, 2_000, 10_000) if args.smoke else (base_size, 10_000, 100_000)
    with tempfile.TemporaryDirectory(prefix="xai-scale-") as tmp:
        work = Path(tmp)
        model = tiny_model(work / "tiny.safetensors")
        results = []
        for n in sizes:
            folder = work / f"figs{n}"
            make_figures(folder, n)
            results.append(run(folder, work / f"table{n}", model, work))
    base, small, large = results
    for r in (small, large):
        r["figures_per_second_past_base"] = (r["figures"] - base["figures"]) / (r["wall_seconds"] - base["wall_seconds"])
    memory_ratio = large["peak_driver_rss_mb"] / small["peak_driver_rss_mb"]
    speed_ratio = large["figures_per_second_past_base"] / small["figures_per_second_past_base"]
    print_table(["figures", "peak driver MB", "fig/s end to end", "fig/s processing", "wall s", f"fig/s past the {base['figures']} run"],
                [[r["figures"], r["peak_driver_rss_mb"], r["figures_per_second"], r["process_figures_per_second"], r["wall_seconds"],
                  r.get("figures_per_second_past_base", "")] for r in results])
    print(f"peak memory ratio {memory_ratio:.2f} (goal <= 1.3); figures/s ratio {speed_ratio:.2f} (goal 0.8-1.2)")
    write_results("scale", args.smoke, {"results": results, "memory_ratio": memory_ratio, "speed_ratio": speed_ratio,
                                        "goal": "memory ratio <= 1.3, figures/s within 20%"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
